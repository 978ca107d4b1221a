"""`python -m hermetic_build.worker_exec .hb/action.json`: run one hb action in a REAPI input root.

This is the Command of every action hb sends to a remote executor, so any REAPI worker with hb
installed (hb's own `hb worker`, a Buildbarn or NativeLink runner image) can run any hb action kind.
The working directory is the action's input root: its declared inputs at their paths and the
action's description at .hb/action.json. It runs the action the way hb does locally: the inputs are
moved into a fresh sandbox under .hb/, the kind's implementation runs (its commands inside bubblewrap),
the declared outputs are collected through descriptors that never follow a link, and they are written
back at their paths in the input root, where the worker picks them up (the Command's output_paths).
The command's own stdout and stderr are the action's; its exit status is the action's command's
(1 for a failure that is not a command's, 2 for a description this worker refuses)."""

from __future__ import annotations

import contextlib
import importlib
import os
import stat
import sys
from pathlib import Path

from .action import get_action_kind
from .anchored import FILE_FLAGS, RefusedPath, open_directory
from .errors import ActionFailed, HbError
from .rexec.description import DESCRIPTION_PATH, MAX_DESCRIPTION_BYTES, BadDescription, decode
from .rexec.merkle import sha256_of_blob
from .rexec.outputs import CLAIMS_PATH, encode_claims
from .sandbox import ActionExecution, bwrap_path, isolation_note, prepare_sandbox
from .store.base import OutputEntry
from .store.local import LocalStore
from .tree import MissingBlob, materialize_tree, restore_special_bits, store_tree, walk_tree
from .workspace import Settings

REFUSED = 2


def _hb_directory(root: Path) -> int:
    """A descriptor of root/.hb, opened without following a link on the way."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_directory(root_fd, ".hb")
    finally:
        os.close(root_fd)


def _read_description(root: Path) -> bytes:
    """.hb/action.json, opened without following a link on the way."""
    fd = _hb_directory(root)
    try:
        f = os.open("action.json", FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(f, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BadDescription("the description is not a regular file")
        return fh.read(MAX_DESCRIPTION_BYTES + 1)


def check_input_root(root: Path, action) -> None:
    """The input root holds the description and the declared inputs, nothing else: every other entry
    must be a real directory on the way to an input or an output (a REAPI runner creates the parents
    of output paths). An undeclared entry (a link `x -> /elsewhere` under which an output is declared,
    a link at .hb/cache where this process keeps its store and sandbox) is refused before anything is
    created, listed through descriptors that never follow a link."""
    inputs = {f.path for f in action.inputs}
    ancestors = set()
    for path in inputs | {f.path for f in action.outputs} | {DESCRIPTION_PATH, CLAIMS_PATH}:
        parts = path.split("/")
        ancestors.update("/".join(parts[:i]) for i in range(1, len(parts)))
    stack = [(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "")]
    try:
        while stack:
            fd, prefix = stack[-1]
            stack.pop()
            try:
                for name in os.listdir(fd):
                    path = prefix + name
                    if path in inputs or path == DESCRIPTION_PATH:
                        continue  # their kinds are checked where they are read
                    if path in ancestors and stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        stack.append((os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                              dir_fd=fd), path + "/"))
                        continue
                    raise RefusedPath(f"the input root holds {path[:200]!r}, which is neither a declared input "
                                      "nor a directory on the way to one or to an output")
            finally:
                os.close(fd)
    finally:
        for fd, _prefix in stack:
            os.close(fd)


def load_rule_modules() -> None:
    """The worker's own rule modules (HB_RULE_MODULES, comma-separated; default: rules)."""
    for name in filter(None, os.environ.get("HB_RULE_MODULES", "rules").split(",")):
        importlib.import_module(name.strip())


def _input_entry(store, execroot_fd: int, path: str, is_directory: bool) -> OutputEntry:
    parent, _, name = path.rpartition("/")
    dir_fd = open_directory(execroot_fd, parent) if parent else os.dup(execroot_fd)
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if is_directory:
            if not stat.S_ISDIR(st.st_mode):
                raise RefusedPath(f"input {path} is not a directory")
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                return OutputEntry(path, "dir", store_tree(store, sub))
            finally:
                os.close(sub)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedPath(f"input {path} is not a regular file")
        return OutputEntry(path, "file", store.put_at(dir_fd, name, fsync=False), bool(st.st_mode & stat.S_IXUSR))
    finally:
        os.close(dir_fd)


def _write_claims(root: Path, store, outputs) -> None:
    """CLAIMS_PATH: SHA-256 -> BLAKE3 of every output file (a tree's files too), so that the client
    can record the outputs under hb's keys without downloading them (rexec/outputs.py)."""
    pairs, memo = {}, {}
    for entry in outputs:
        digests = [entry.digest] if entry.kind == "file" else \
            [e.digest for _path, e in walk_tree(store, entry.digest) if e.kind == "file"]
        for d in digests:
            pairs[sha256_of_blob(store, d, memo)] = d.hash
    fd = _hb_directory(root)
    try:
        out = os.open(CLAIMS_PATH.rpartition("/")[2], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o644, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(out, "wb") as f:
        f.write(encode_claims(pairs))


def run(root: Path) -> int:
    from .executor import Executor

    try:
        remote = decode(_read_description(root))
    except (BadDescription, OSError, RefusedPath) as exc:
        print(f"hb worker_exec: refused {DESCRIPTION_PATH}: {exc}", file=sys.stderr)
        return REFUSED
    action = remote.action
    if get_action_kind(action.kind) is None:
        load_rule_modules()
    kind = get_action_kind(action.kind)
    if kind is None or kind.version != action.version:
        have = f"version {kind.version}" if kind else "none"
        print(f"hb worker_exec: {action.owner}: this worker has no action kind {action.kind}@{action.version} "
              f"(it has {have}): install the same hb and rules as the client", file=sys.stderr)
        return REFUSED
    if kind.local_only:  # fetches: the network, or files of the machine they run on; never sent by a client
        print(f"hb worker_exec: {action.owner}: {action.kind} actions run only on the machine that builds "
              "(they reach the network or its files): a worker does not run them", file=sys.stderr)
        return REFUSED
    try:
        check_input_root(root, action)
    except (OSError, RefusedPath) as exc:
        print(f"hb worker_exec: {action.owner}: {exc}", file=sys.stderr)
        return REFUSED
    store = LocalStore(root / ".hb" / "cache")
    sandbox, execroot = prepare_sandbox(store.tmp_dir)
    for name in sorted(os.listdir(root)):
        if name != ".hb":
            os.rename(root / name, execroot / name)  # the link itself, if it is one: never followed
    settings = Settings(cache_dir=root / ".hb" / "cache", source_date_epoch=remote.source_date_epoch)
    execroot_fd = os.open(execroot, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        entries = {f.path: _input_entry(store, execroot_fd, f.path, f.is_directory)
                   for f in action.inputs if not f.is_source}
        for f in action.inputs:
            if f.is_source:
                _input_entry(store, execroot_fd, f.path, False)  # present, a regular file, not a link
    except (RefusedPath, FileNotFoundError, NotADirectoryError) as exc:
        print(f"hb worker_exec: {action.owner}: input missing or not what was declared: {exc}", file=sys.stderr)
        return REFUSED
    finally:
        os.close(execroot_fd)
    execution = ActionExecution(action, sandbox, execroot, remote.env, store, settings, bytearray(), bytearray(),
                                entries, {})
    for out in action.outputs:
        (execroot / out.path).parent.mkdir(parents=True, exist_ok=True)
    executor = Executor(None, store, [action], None, jobs=1, reporter=None, keep_sandbox=False)
    try:
        try:
            kind.run(execution)
        except ActionFailed as exc:
            raise executor._failure(action, exc.message, execution, sandbox) from None
        outputs = executor._collect_outputs(action, execution, sandbox)
    except (HbError, MissingBlob) as exc:
        sys.stdout.buffer.write(bytes(execution.stdout))
        sys.stderr.buffer.write(bytes(execution.stderr))
        print(f"hb worker_exec: {exc}", file=sys.stderr)
        return getattr(execution, "last_exit_code", 0) or 1
    for entry in outputs:  # back at their paths in the input root, for the worker to upload
        dest = root / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            materialize_tree(store, entry.digest, dest)
            # the action's own output, about to be read back by the worker: keep setgid and sticky
            # bits (a base image's /tmp is 1777), so the tree the client rebuilds has this digest
            restore_special_bits(store, entry.digest, dest)
        elif not store.fetch_file(entry.digest, dest, mode=0o755 if entry.executable else 0o644):
            raise MissingBlob(entry.digest)
    _write_claims(root, store, outputs)
    sys.stdout.buffer.write(bytes(execution.stdout))
    sys.stderr.buffer.write(bytes(execution.stderr))
    if bwrap_path() is None:  # said on every action that ran unsandboxed on this worker
        print(f"hb worker_exec: {isolation_note()}", file=sys.stderr)
    return 0


def die_with_worker() -> None:
    """Started by `hb worker` (HB_WORKER_PID): SIGKILL when it dies, and stop now if it is gone already."""
    pid = os.environ.pop("HB_WORKER_PID", "")
    if not pid.isdigit():
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(pid):
        os._exit(1)


def run_forked(root: str, env: dict, stdout_path: str, stderr_path: str) -> None:
    """worker_exec in a process forked from `hb worker`'s pre-imported fork server (rexec/worker.py):
    the same as `python3 -m hermetic_build.worker_exec .hb/action.json` in `root` with `env`, its
    stdout and stderr written to the two files, without a fresh interpreter's imports. It dies with
    the fork server, which ends when the worker does."""
    code = 1
    try:
        import ctypes
        import signal

        from .rexec.confine import is_dumpable, make_non_dumpable
        from .seccomp import syscall_filter, syscall_filter_active

        # non-dumpable, as the fork server (rexec/forkserver_start.py) it inherits that from: a dumpable
        # fork server (whose memory an action could write: every later action is forked from it) runs
        # no action; nor one without the seccomp filter (seccomp.install_syscall_filter)
        dumpable = is_dumpable()
        make_non_dumpable()
        unfiltered = syscall_filter() is not None and not syscall_filter_active()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, stdout_path), (2, stderr_path)):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.dup2(out, fd)
            os.close(out)
        if dumpable or unfiltered:
            print(f"hb worker_exec: the fork server is {'dumpable' if dumpable else 'without its seccomp filter'}: "
                  "it runs no action", file=sys.stderr)
            return
        os.environ.clear()
        os.environ.update(env)
        os.chdir(root)
        import tempfile

        tempfile.tempdir = None  # chosen again for this action (the fork server's choice is not kept)
        code = run(Path(root))
    except BaseException:  # noqa: BLE001 - reported as the action's stderr, like an interpreter would
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    die_with_worker()
    from .seccomp import install_syscall_filter

    # no keyring call (nor io_uring, bpf...) for this process and all it starts, before any action's code:
    # the keyrings are not namespaced (seccomp.py); None: this machine's syscall numbers are not known
    if install_syscall_filter() is False:
        print("hb worker_exec: the kernel refused the seccomp filter: no action runs",
              file=sys.stderr)
        return REFUSED
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], [DESCRIPTION_PATH]):
        print(f"usage: python -m hermetic_build.worker_exec {DESCRIPTION_PATH}", file=sys.stderr)
        return REFUSED
    return run(Path.cwd())


if __name__ == "__main__":
    sys.exit(main())
