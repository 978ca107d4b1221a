"""An hb action as a file of a REAPI input root: what `python -m hermetic_build.worker_exec` runs.

The client writes the action's canonical description (the fields of its key, plus its description
and hints, the allow-listed environment values and SOURCE_DATE_EPOCH) into the input root at
DESCRIPTION_PATH; the worker reads it back with a strict schema, because whoever can submit work to
an engine controls it: every path must be a relative path of single components, every label a
label, every field of the expected type, and the action kind one the worker has registered. Rule
modules are never named by the description: a worker imports only its own (HB_RULE_MODULES)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..action import Action, File
from ..digest import canonical_json
from ..label import Label, LabelSyntaxError
from ..store.base import InvalidEntry, load_json

DESCRIPTION_PATH = ".hb/action.json"
DESCRIPTION_VERSION = 1
MAX_DESCRIPTION_BYTES = 16 << 20
MAX_PATH = 4096


class BadDescription(ValueError):
    """A description that does not follow the schema."""


@dataclass(frozen=True)
class RemoteAction:
    """What a worker needs to run one hb action."""

    action: Action
    env: dict  # allow-listed environment values, as on the client
    source_date_epoch: int


def check_path(path) -> str:
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\0" in path or "\\" in path:
        raise BadDescription(f"path {str(path)[:80]!r} is not a relative path")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadDescription(f"path {path[:80]!r} is not a relative path of single components")
    return path


def _file_json(f: File) -> dict:
    return {"path": f.path, "owner": None if f.owner is None else str(f.owner), "dir": f.is_directory}


def encode(action: Action, env: dict, source_date_epoch: int) -> bytes:
    body = {
        "v": DESCRIPTION_VERSION,
        "owner": str(action.owner), "mnemonic": action.mnemonic, "kind": action.kind, "version": action.version,
        "inputs": [_file_json(f) for f in action.inputs], "outputs": [_file_json(f) for f in action.outputs],
        "params": action.params_json, "platform": action.platform, "env_allowlist": list(action.env_allowlist),
        "description": action.description, "hints": action.hints_json,
        "env": {k: env[k] for k in sorted(env) if k in action.env_allowlist},
        "source_date_epoch": source_date_epoch,
    }
    return canonical_json(body)


def _str(obj, name: str, limit: int = 1 << 20) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        raise BadDescription(f"field {name!r} is not a string")
    return value


def _label(text) -> Label:
    try:
        return Label.parse(text)
    except (LabelSyntaxError, TypeError) as exc:
        raise BadDescription(f"{str(text)[:80]!r} is not a label: {exc}") from None


def _file(obj) -> File:
    if not isinstance(obj, dict) or obj.keys() != {"path", "owner", "dir"} or type(obj["dir"]) is not bool:
        raise BadDescription("an input or output is not {path, owner, dir}")
    owner = None if obj["owner"] is None else _label(obj["owner"])
    return File(check_path(obj["path"]), owner, obj["dir"])


_KEYS = {"v", "owner", "mnemonic", "kind", "version", "inputs", "outputs", "params", "platform", "env_allowlist",
         "description", "hints", "env", "source_date_epoch"}


def decode(data: bytes) -> RemoteAction:
    try:
        obj = load_json(data, limit=MAX_DESCRIPTION_BYTES)
    except InvalidEntry as exc:
        raise BadDescription(str(exc)) from None
    if not isinstance(obj, dict) or obj.keys() != _KEYS:
        raise BadDescription("not an hb action description")
    if type(obj["v"]) is not int or obj["v"] != DESCRIPTION_VERSION:
        raise BadDescription(f"description version {str(obj['v'])[:20]}, this worker reads {DESCRIPTION_VERSION}")
    for name in ("inputs", "outputs", "env_allowlist"):
        if not isinstance(obj[name], list):
            raise BadDescription(f"field {name!r} is not a list")
    inputs = tuple(_file(f) for f in obj["inputs"])
    outputs = tuple(_file(f) for f in obj["outputs"])
    if not outputs:
        raise BadDescription("an action without outputs")
    paths = [f.path for f in inputs + outputs]
    if len(set(paths)) != len(paths):
        raise BadDescription("a path is named twice among the inputs and outputs")
    # an output is neither an input, nor above or below one, nor above another output: its directory
    # is made for it, never an input's (a link inside an input directory led an output's parent out)
    named, produced = set(paths), {f.path for f in outputs}
    for path in paths:
        parts = path.split("/")
        for above in ("/".join(parts[:i]) for i in range(1, len(parts))):
            if above in named and (above in produced or path in produced):
                raise BadDescription(f"{path[:80]!r} lies under {above[:80]!r}, and one of them is an output")
    if any(f.path.split("/", 1)[0] == ".hb" for f in inputs + outputs):
        raise BadDescription("inputs and outputs may not lie under .hb/")
    allow = tuple(obj["env_allowlist"])
    if not all(isinstance(k, str) and k and "=" not in k and "\0" not in k for k in allow):
        raise BadDescription("env_allowlist holds a name that is not an environment variable name")
    env = obj["env"]
    if not isinstance(env, dict) or not all(k in allow and isinstance(v, str) and "\0" not in v
                                            for k, v in env.items()):
        raise BadDescription("env holds a variable that is not allow-listed, or a value that is not a string")
    epoch = obj["source_date_epoch"]
    if type(epoch) is not int or not 0 <= epoch < 1 << 40:
        raise BadDescription("source_date_epoch is not a non-negative integer")
    for name in ("params", "hints"):
        try:
            json.loads(_str(obj, name, MAX_DESCRIPTION_BYTES))
        except ValueError:
            raise BadDescription(f"field {name!r} is not JSON") from None
    action = Action(_label(obj["owner"]), _str(obj, "mnemonic", 200), _str(obj, "kind", 200), _str(obj, "version", 200),
                    inputs, outputs, _str(obj, "params", MAX_DESCRIPTION_BYTES), _str(obj, "platform", 200), allow,
                    _str(obj, "description", 4096), _str(obj, "hints", MAX_DESCRIPTION_BYTES))
    return RemoteAction(action, dict(env), epoch)
