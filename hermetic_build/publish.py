"""`hb push` / `hb load`: hand a built target to the world (a registry, a daemon). Rules opt in with
`publish={"push": fn, "load": fn}`; the core builds the target first and passes its outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .label import Label


@dataclass(frozen=True)
class PublishRequest:
    label: Label
    rule: str
    attrs: dict
    outputs: tuple[Path, ...]  # the target's built outputs, absolute paths under hb-out/
    destination: str  # e.g. a registry reference for push; "" when the verb takes none
    options: dict
    reporter: object


def run_publish(session, verb: str, pattern: str, current_package: str, destination: str = "",
                options: dict | None = None) -> str:
    analysis = session.analyze([pattern], current_package)
    if len(analysis.requested) != 1:
        raise UsageError(f"hb {verb} takes exactly one target; {pattern} names {len(analysis.requested)}")
    label = analysis.requested[0]
    target = analysis.targets[label]
    rules = session.rules()
    hook = rules[target.rule].publish.get(verb)
    if hook is None:
        able = sorted(name for name, r in rules.items() if verb in r.publish)
        raise UsageError(f"{label} is a {target.rule}, which cannot be used with hb {verb}",
                         hint=f"hb {verb} takes targets of: {', '.join(able) or 'no loaded rule'}")
    summary = session.build([str(label)])
    outputs = tuple(session.workspace.root / out["path"] for out in summary.targets[str(label)])
    from .buildfile import PackageLoader

    loaded = PackageLoader(session.workspace, rules).load(label.package).targets[label.name]
    request = PublishRequest(label, target.rule, loaded.attrs, outputs, destination, dict(options or {}),
                             session.reporter)
    return hook(request)
