"""Files, actions and action keys.

An action is the only unit that runs and the only unit that is cached. Its key is the BLAKE3 of a
canonical, versioned encoding of everything that can change its outputs: mnemonic, implementation
kind and version, parameters, input digests by path, output paths, platform and the values of an
explicit allow-list of environment variables. Descriptions are not part of the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from blake3 import blake3

from .digest import Digest, canonical_json
from .label import Label

KEY_SCHEMA = "hb-action-key/1"
OUTPUT_ROOT = "hb-out"
INTERNAL_ROOT = "hb-out/.internal"  # intermediates that are never shown under hb-out/<package>/
MANIFEST_NAME = ".hb-manifest.json"  # hb-out/.hb-manifest.json: what hb published last, and its stamps
# hb's own names at the root of hb-out/, which no output may take (its temporary names, anywhere in
# hb-out/, are leftovers.owner_pid's); why each is hb's, for the error
RESERVED_AT_OUTPUT_ROOT = {
    MANIFEST_NAME: "its record of the outputs it published",
    INTERNAL_ROOT.split("/", 1)[1]: "its intermediate outputs",
}


class File(NamedTuple):
    """A file or directory an action reads or writes, by its path in the execution root.

    Source files keep their workspace path (`pkg/a.txt`); generated ones live under
    `hb-out/<package>/<target>/...`, the same place they are shown in the workspace.
    """

    path: str
    owner: Label | None = None
    is_directory: bool = False

    @property
    def is_source(self) -> bool:
        return self.owner is None

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def short_path(self) -> str:
        """Path relative to the owner's output directory (generated) or the workspace (source)."""
        if self.owner is None:
            return self.path
        prefix = output_dir(self.owner) + "/"
        return self.path[len(prefix):] if self.path.startswith(prefix) else self.path


def output_dir(label: Label) -> str:
    return "/".join(p for p in (OUTPUT_ROOT, label.package, label.name) if p)


def reserved_output_problem(path: str, internal: bool = False) -> str | None:
    """Why the output `path` (hb-out/...) would collide with a file hb keeps in hb-out/, or None: its
    first part below hb-out/ is one of RESERVED_AT_OUTPUT_ROOT (a root-package target named
    `.hb-manifest.json`, a package `.internal`), or a part is named like one of hb's temporary files,
    which the sweep after a killed build deletes (.x.hb-tmp-<pid>-..., .hb-tmp-<pid>-..., sb-<pid>-...)."""
    from .leftovers import owner_pid

    parts = path.split("/")[1:]
    if not internal and parts and parts[0] in RESERVED_AT_OUTPUT_ROOT:
        return (f"would be {OUTPUT_ROOT}/{parts[0]}, a name hb keeps for {RESERVED_AT_OUTPUT_ROOT[parts[0]]}")
    for part in parts:
        if owner_pid(part) is not None:
            return f"has a part {part!r} named like one of hb's temporary files, which hb deletes"
    return None


@dataclass(frozen=True)
class Action:
    owner: Label
    mnemonic: str
    kind: str
    version: str
    inputs: tuple[File, ...]
    outputs: tuple[File, ...]
    params_json: str  # canonical JSON of the parameters
    platform: str
    env_allowlist: tuple[str, ...] = ()
    description: str = field(default="", compare=False)
    # Where to find things, not what they are (e.g. a download URL for content pinned by hash in
    # params): passed to the implementation, never part of the key.
    hints_json: str = field(default="{}", compare=False)
    # True: the action sees (and its key includes) the keys of every action its inputs come from,
    # transitively (e.g. a provenance statement that names the graph that produced an image).
    dep_keys: bool = False

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    @property
    def hints(self) -> dict:
        return json.loads(self.hints_json)

    @property
    def id(self) -> str:
        """Stable identity across builds, for `hb explain`: owner and first output."""
        first = self.outputs[0].path if self.outputs else ""
        return f"{self.owner} {self.mnemonic} {first}"


def make_params_json(params: dict) -> str:
    return canonical_json(params).decode()


def key_fields(action: Action, input_digests: dict[str, Digest], env: dict[str, str],
               dep_keys: list[dict] | None = None) -> dict:
    """The fields hashed into an action's key (also what `hb explain` compares). `dep_keys`, for an
    action declared with dep_keys=True: the keys of the actions upstream of it (never its own)."""
    fields = {
        "schema": KEY_SCHEMA,
        "mnemonic": action.mnemonic,
        "kind": f"{action.kind}@{action.version}",
        "params": json.loads(action.params_json),
        "inputs": {path: str(d) for path, d in sorted(input_digests.items())},
        "outputs": [f"{'dir' if o.is_directory else 'file'}:{o.path}" for o in action.outputs],
        "platform": action.platform,
        "env": {k: env.get(k, "") for k in sorted(action.env_allowlist)},
    }
    if action.dep_keys:
        fields["dep_keys"] = list(dep_keys or [])
    return fields


def action_key(fields: dict) -> str:
    return blake3(canonical_json(fields)).hexdigest()


@dataclass(frozen=True)
class ActionKind:
    """How actions of one kind run: a Python function given an ActionExecution."""

    name: str
    version: str
    run: Callable
    # False: directory inputs are not copied into the sandbox; the implementation reads them from
    # the store (ActionExecution.input_tree), e.g. to stream a tree into a tar layer.
    stage_inputs: bool = True
    # Optional: loads what the implementation needs (imports, schemas) ahead of time. The executor
    # calls it once, in a background thread, when a build that includes actions of this kind starts
    # running actions: slow imports then overlap other work instead of sitting on the critical path.
    warm: Callable | None = None
    # True: never sent to a remote executor (it needs the network, e.g. a fetch, or a local daemon,
    # or it only records facts in this machine's cache).
    local_only: bool = False
    # True: directory inputs are bound read-only from a view made once per tree (treeviews.py)
    # instead of being copied into every execution root; the implementation finds them with
    # ActionExecution.tree_path and mounts them with run_command(mounts=/root=). Needs bubblewrap
    # (without it they are copied as before).
    read_only_trees: bool = False
    # True: an action that mostly waits on a server (a download): the executor runs such actions on
    # their own threads, more of them than the cores (Executor.IO_JOBS), besides the `jobs` threads
    # of the work that computes. Whatever CPU work it does must be bounded by its own means (the
    # conda fetch's archive checks run in at most one sandboxed helper per core).
    io_bound: bool = False
    # True: file inputs held by the local CAS are hard-linked from the store into a directory bound
    # read-only into the sandbox, instead of being copied into every execution root (bubblewrap only;
    # copied otherwise).
    # Nothing re-hashes them on the way: the implementation must check each against a pin of its own
    # before trusting it (the conda stage checks every archive against the lock's sha256) and find
    # them with ActionExecution.input_path (on the host) and sandbox_path (for the command).
    read_only_files: bool = False


_KINDS: dict[str, ActionKind] = {}


def register_action_kind(name: str, version: str, run: Callable, *, stage_inputs: bool = True,
                         warm: Callable | None = None, local_only: bool = False,
                         read_only_trees: bool = False, io_bound: bool = False,
                         read_only_files: bool = False) -> ActionKind:
    kind = ActionKind(name, version, run, stage_inputs, warm, local_only, read_only_trees, io_bound, read_only_files)
    _KINDS[name] = kind
    return kind


def get_action_kind(name: str) -> ActionKind | None:
    return _KINDS.get(name)
