"""What a build would do, without doing it: `hb aquery` and `hb explain`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .action import Action, key_fields
from .executor import ActionRecord

_NEVER_BUILT = ["it has never been built in this workspace"]


@dataclass
class Step:
    action: Action
    key: str | None
    status: str  # "cached" | "would run"
    inputs: dict[str, str | None]
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        a = self.action
        return {
            "owner": str(a.owner), "mnemonic": a.mnemonic, "kind": f"{a.kind}@{a.version}",
            "platform": a.platform, "key": self.key, "status": self.status, "inputs": self.inputs,
            "outputs": [o.path for o in a.outputs], "params": a.params, "reasons": self.reasons,
        }


def plan(session, labels: list[str], current_package: str = "") -> list[Step]:
    analysis = session.analyze(labels, current_package)
    executor = session.executor(analysis)
    wanted = [f for label in analysis.requested for f in analysis.targets[label].files]
    previous = session.previous_records()
    steps = []
    rerun: dict[str, Action] = {}  # output path -> action that will produce it anew
    for i in executor.closure(wanted):
        action = executor.actions[i]
        unknown = [f for f in action.inputs if f.path in rerun]
        if unknown:
            inputs: dict[str, str | None] = {f.path: None for f in unknown}  # these first, then the known
            known = {}
            for f in action.inputs:
                if f.path not in rerun:
                    digest = known[f.path] = _digest_of(executor, f)
                    inputs[f.path] = f"{digest.hash}/{digest.size}"  # str(digest)
            step = Step(action, None, "would run", inputs)
            step.reasons = [f"input {f.path} will be rebuilt by {rerun[f.path].description}" for f in unknown]
            before = previous.get(action.id)
            step.reasons += (_diff(before, key_fields(action, known, {}), skip_inputs=True) if before is not None
                             else _NEVER_BUILT)
            steps.append(step)
            rerun.update({o.path: action for o in action.outputs})
            continue
        key, fields = executor.key_of(action)
        inputs = dict(fields["inputs"])
        result = executor.cached_result(action, key)
        if result is not None:
            executor.stats.records[i] = ActionRecord(key, fields, True, result)
            steps.append(Step(action, key, "cached", inputs))
            continue
        step = Step(action, key, "would run", inputs)
        before = previous.get(action.id)
        step.reasons = _diff(before, fields) or (
            [_missing_reason(session)] if before and before["key"] == key
            else ["no change recorded; its cache entry is missing"])
        steps.append(step)
        rerun.update({o.path: action for o in action.outputs})
    executor.file_cache.save()
    return steps


def _missing_reason(session) -> str:
    """Why an unchanged action's result is not found: evicted, or it lives in a remote cache that
    this command was not told about (a build with the same options would take it from there)."""
    last_remote = ((session.last_build() or {}).get("remote") or {}).get("url")
    if last_remote and session.remote is None:
        return (f"its result is not in the local cache; the last build used the remote cache {last_remote} "
                f"(run `hb explain --remote-cache {last_remote} ...` to check it there)")
    return "its result is no longer in the cache (evicted or found corrupt)"


def _digest_of(executor, f):
    if f.is_source:
        return executor.file_cache.digest(executor.workspace.source_real_path(f.path))
    return executor.output_entry(f).digest


def _diff(before: dict | None, fields: dict, skip_inputs: bool = False) -> list[str]:
    if before is None:
        return list(_NEVER_BUILT)
    old = before["fields"]
    reasons = []
    if not skip_inputs:
        old_inputs, new_inputs = old.get("inputs", {}), fields["inputs"]
        for path in sorted(set(old_inputs) | set(new_inputs)):
            if path not in old_inputs:
                reasons.append(f"input {path} was added")
            elif path not in new_inputs:
                reasons.append(f"input {path} was removed")
            elif old_inputs[path] != new_inputs[path]:
                reasons.append(f"input {path} changed ({old_inputs[path][:12]} -> {new_inputs[path][:12]})")
    if not skip_inputs and ("dep_keys" in old or "dep_keys" in fields):  # an action that names its upstream keys
        def by_action(keys):
            return {(d["owner"], d["mnemonic"], d["output"]): d["key"] for d in keys or [] if isinstance(d, dict)}

        old_keys, new_keys = by_action(old.get("dep_keys")), by_action(fields.get("dep_keys"))
        changed = [k for k in sorted(set(old_keys) | set(new_keys)) if old_keys.get(k) != new_keys.get(k)]
        if changed:
            reasons.append(f"the keys of {len(changed)} upstream actions changed (first: {changed[0][1]} "
                           f"{changed[0][0]})")
    old_params, new_params = old.get("params", {}), fields["params"]
    for name in sorted(set(old_params) | set(new_params)):
        if old_params.get(name) != new_params.get(name):
            reasons.append(f"parameter {name!r} changed: {_short(old_params.get(name))} -> {_short(new_params.get(name))}")
    for name in ("mnemonic", "kind", "platform", "outputs", "schema"):
        if old.get(name) != fields.get(name):
            reasons.append(f"{name} changed: {_short(old.get(name))} -> {_short(fields.get(name))}")
    for name in sorted(set(old.get("env", {})) | set(fields["env"])):
        if old.get("env", {}).get(name) != fields["env"].get(name):
            reasons.append(f"environment variable {name} changed")
    return reasons


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

