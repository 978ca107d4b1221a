"""worker_exec confined: on a worker, the Python of an action kind (not only its commands) runs in
bubblewrap, with the action's directory the only writable place of the host.

A kind's code runs with whatever its parameters name, and a client writes those: a kind that opened a
path of its params without `ActionExecution.declared_input` read or wrote the worker's own files
(three did, before). Confined, such a slip reaches the action's directory and nothing else: the host's
/usr, the Python installation, hb and the rule modules are visible read-only, /tmp is private, there
is no network, and the worker's own store and credentials are not there at all.

The actions' own commands still run in their bubblewrap sandbox, nested in this one. That nests only
under two conditions, measured with bubblewrap 0.8: the outer sandbox maps the user to a uid other
than 0 (as root, the inner bwrap failed with "setting up uid map: Operation not permitted"), and its
/proc is a whole procfs of the sandbox's PID namespace. bubblewrap's `--proc` covers /proc/sys and a
few others read-only only where they are writable, which they are only to the host's root (then the
kernel refused the inner sandbox its `/proc`, a mount over part of the only procfs); the sandbox never
starts as root (`root_refusal`), so its /proc is whole. Bound from the host instead, the inner bwrap
looked up /proc/PID of its child by the PID of the sandbox's namespace in the host's procfs (measured:
"open /proc/9/ns/ns failed", and its child hung waiting for it). A confined kind sees only the
sandbox's processes and can signal no other: the sandbox has a PID namespace of its own (OUTER);
before, a kind ran as a uid of the host (the worker's, or 65534 on a root worker) that may signal
every process of that uid, the worker itself and its other actions included. `hb worker` also makes
itself non-dumpable and starts the sandbox with an empty environment. Where the two sandboxes cannot
nest, the worker says so once and runs worker_exec as before (not as root: `root_refusal`).

A worker running as root does not start the sandbox as root: bubblewrap maps the uid inside to the
uid that started it, and the kernel lets the host's uid 0 write /proc/sys (a sysctl's file mode is
checked against the host uid, no capability needed) and signal any root process; through the host's
/proc, bound then, a kind wrote kernel.core_pattern, which runs a program as root outside every
namespace.
There the sandbox is started as CONFINED_ID (nobody) with `setpriv`, and the action's directory is
given to that user (`give_to_confined`).

That user must reach what the sandbox binds: an interpreter under root's 0700 home (pyenv) it cannot.
So, where a path it needs lies under a directory it cannot enter, the command first enters (still
as root) a mount namespace of its own (opened.py): the host's tree, with a 0755 tmpfs over each such
directory and the needed paths bound back at their own paths (`opening_arguments`); nothing of the
host changes mode or owner. There `setpriv` drops to CONFINED_ID and the sandbox starts as before.
(Not bubblewrap run as root: its monitor process, which drops every capability, stays the parent of
CONFINED_ID's processes and may not signal them, so the sandbox outlived a timeout's kill.) A root
worker whose sandbox still cannot run this Python and hb as CONFINED_ID refuses to start
(`root_refusal`): it never confines as uid 0."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..sandbox import FIXED_PATH, bwrap_path, confinement, host_system_arguments, proc_arguments

# the uid and gid a confined worker_exec has inside its sandbox: any but 0 (see the module's doc)
INSIDE_ID = "1000"
# the host uid and gid a worker running as root starts the sandbox with (module doc)
CONFINED_ID = 65534
# sandbox.CONFINEMENT with a whole /proc (module doc). A PID namespace of its own: the host's processes
# are neither listed nor signalled (kill, pidfd_send_signal and ptrace take PIDs of the caller's
# namespace). The sandbox's first process is the namespace's init: when the bubblewrap the worker
# started dies (--die-with-parent), the kernel ends every process of the namespace. So a PID a
# confined fork server reports names a process of the sandbox, never one of the host: the worker
# never signals it (worker.end_confined_forkserver).
OUTER = ("--unshare-user", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-pid", "--unshare-cgroup-try",
         "--clearenv", "--new-session", "--cap-drop", "ALL", "--die-with-parent")


def _module_dirs(names) -> list[str]:
    """The top-level packages `names` (found, not imported): each package's directory, or the module's
    file. Never the directory that holds them (the working directory, for a module found there)."""
    found = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            found.append(str(Path(location).resolve()))
        if spec is not None and spec.origin and not spec.submodule_search_locations:
            found.append(str(Path(spec.origin).resolve()))
    return found


def _startup_entry() -> str | None:
    """The entry Python put first on sys.path for the program it runs, resolved: the working directory
    under `-m` (`python -m hermetic_build worker` in one's home), the script's directory otherwise; None
    under -P or where it was '' (-c). No confined interpreter has it on its path (worker_exec runs with
    -P, the fork server with -c), and bound it exposed that directory: the home of a worker started
    there, its ~/.ssh, its credentials (reproduced: an action read its ~/.ssh/id_ed25519)."""
    if sys.flags.safe_path:
        return None
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:  # -m
        return os.path.realpath(os.getcwd())
    script = getattr(main, "__file__", None)
    return os.path.dirname(os.path.realpath(script)) if script else None


def read_only_paths(rule_modules=()) -> list[str]:
    """What worker_exec needs of the host, read-only: the interpreter's installation and its site
    directories, hb, the rule modules, this worker's PYTHONPATH and its __main__ script; the other
    entries of sys.path (.pth files'), not the one of the program's start (_startup_entry)."""
    import site

    startup = _startup_entry()
    roots = [sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(os.path.abspath(sys.executable)),
             *site.getsitepackages(), site.getusersitepackages(),
             *(p for p in sys.path if not (p and os.path.isabs(p) and os.path.realpath(p) == startup)),
             *_module_dirs(["hermetic_build", *rule_modules]),
             *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main:
        roots.append(os.path.abspath(main))
    exposed: list[str] = []
    for path in sorted({os.path.realpath(p) for p in roots if p and os.path.isabs(p) and os.path.exists(p)}):
        if path == "/" or any(path == e or path.startswith(e.rstrip("/") + "/") for e in exposed):
            continue
        exposed.append(path)
    return exposed


@dataclass(frozen=True)
class RootProbe:
    """What a worker running as root learnt by starting the sandbox as CONFINED_ID once: the ids to
    start it with, or why it cannot (then the worker refuses to start: module doc)."""

    ids: tuple[int, int] | None
    why: str | None


@functools.cache
def root_probe() -> RootProbe | None:
    """None where this process is not root; else whether uid CONFINED_ID, in the sandbox, can import hb
    with this Python (an import through every path the sandbox binds, opened or not)."""
    if os.geteuid() != 0:
        return None
    if _setpriv() is None:
        return RootProbe(None, "`setpriv` (util-linux) is missing")
    import tempfile

    ids = (CONFINED_ID, CONFINED_ID)
    with tempfile.TemporaryDirectory(prefix="hb-confine-probe-") as probe:
        _chown_tree(Path(probe), ids)
        env = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
        argv = _confinement_argv(Path(probe), env, (), ids)
        if not argv:
            return RootProbe(None, "bubblewrap is not usable here")
        try:
            proc = subprocess.run([*argv, sys.executable, "-P", "-c", "import hermetic_build.worker_exec"],
                                  capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return RootProbe(None, f"{type(exc).__name__}: {exc}")
    if proc.returncode != 0:
        said = (proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return RootProbe(None, f"uid {CONFINED_ID} cannot run {sys.executable} and hb in the sandbox ({said[:200]})")
    return RootProbe(ids, None)


def host_ids() -> tuple[int, int] | None:
    """The (uid, gid) the sandbox is started with where this process is root (never uid 0: module doc),
    None where it runs as the worker's own user (or, as root, where it cannot: root_refusal)."""
    probe = root_probe()
    return probe.ids if probe else None


def root_refusal() -> str | None:
    """Why a worker running as root must not run worker_exec (None where it may): it runs it only
    confined as CONFINED_ID, never as the host's uid 0, confined (the kernel lets uid 0 write /proc/sys
    from inside) or not."""
    if os.geteuid() != 0:
        return None
    why = root_probe().why or nesting_works()
    if why is None:
        return None
    return (f"hb worker will not run actions as root here: {why}; run it as an unprivileged user, or install "
            f"Python, its venv and hb where uid {CONFINED_ID} can read them")


def _setpriv() -> str | None:
    return shutil.which("setpriv") or ("/usr/bin/setpriv" if os.path.exists("/usr/bin/setpriv") else None)


def _chown_tree(path: Path, ids) -> None:
    os.chown(path, *ids, follow_symlinks=False)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), *ids, follow_symlinks=False)


def give_to_confined(path: Path) -> None:
    """Make the tree `path`, just written by this worker, the confined user's (as it is the worker's
    own where no user is switched): every entry, links not followed. Nothing confined has run in it yet."""
    ids = host_ids()
    if ids is not None:
        _chown_tree(path, ids)


def confinement_argv(writable: Path, env: dict, rule_modules=(), empty_dirs=()) -> list[str]:
    """The command prefix (ending with `--`) that runs a program with `env` only, `writable` (an
    absolute path, at the same path inside) the one writable directory of the host, and an empty
    directory at each of `empty_dirs`; [] where bubblewrap is not usable. Where this process is root,
    started as host_ids() when it can be."""
    return _confinement_argv(writable, env, rule_modules, host_ids(), empty_dirs)


def _confinement_argv(writable: Path, env: dict, rule_modules, ids, empty_dirs=()) -> list[str]:
    bwrap = bwrap_path()
    if bwrap is None or (ids is None and os.geteuid() == 0):
        return []  # as root, never a sandbox of uid 0 (module doc)
    read_only = read_only_paths(rule_modules)
    switch = [] if ids is None else _switch(read_only, writable, ids)
    cmd = [*switch, shutil.which("env") or "/usr/bin/env", "-i", bwrap, *OUTER, "--uid", INSIDE_ID, "--gid", INSIDE_ID,
           *host_system_arguments(False)]
    # a whole /proc of the sandbox's PID namespace, where the actions' own bubblewrap can mount theirs
    # (module doc); /dev private; /tmp an empty read-only tmpfs: with the fork server one sandbox runs
    # action after action, and what one left in a writable /tmp stayed for the next ones (and in memory).
    # A kind's temporary files go to its action's directory (tempfile's last choice, the working
    # directory), removed with it; the actions' own bubblewrap mounts a /tmp of its own over this one.
    # Made read-only last: the writable directory may lie under /tmp, its mount point made in it first.
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    inside = str(writable).rstrip("/") + "/"
    for path in read_only:
        if path in ("/usr", "/proc", "/dev") or path.startswith(("/usr/", "/proc/", "/dev/", inside)):
            continue  # bound already, or writable
        cmd += ["--ro-bind", path, path]
    cmd += ["--bind", str(writable), str(writable)]
    for directory in empty_dirs:
        cmd += ["--dir", str(directory)]
    cmd += ["--remount-ro", "/tmp"]  # /tmp alone, not what is bound or made in it
    for key, value in {"PATH": FIXED_PATH, **env}.items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--"]


def _enterable(directory: Path, ids) -> bool:
    """Whether the user `ids` (no supplementary groups: setpriv --clear-groups) may search `directory`."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    bit = stat.S_IXUSR if st.st_uid == ids[0] else stat.S_IXGRP if st.st_gid == ids[1] else stat.S_IXOTH
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & bit)


def opening_arguments(read_only: list[str], writable: Path, ids) -> list[str]:
    """opened.py's arguments that let the user `ids` reach `read_only` and `writable` at their own
    paths: a 0755 tmpfs over the highest directory of each path that user cannot enter (root's 0700
    home), the path bound back in it. Nothing else of that directory is there. [] where every path is
    reachable as it is."""
    arguments: list[str] = []
    opened: set[Path] = set()
    for path in sorted({*read_only, os.path.realpath(writable)}):
        closed = next((a for a in reversed(Path(path).parents) if a != Path("/") and not _enterable(a, ids)), None)
        if closed is None:
            continue
        if closed not in opened:
            arguments += ["--tmpfs", str(closed)]
            opened.add(closed)
        arguments += ["--bind", path]
    return arguments


def _switch(read_only: list[str], writable: Path, ids) -> list[str]:
    """The command prefix, run as root, that runs the rest as `ids` (module doc): `setpriv`, in a mount
    namespace made by opened.py where a path needs opening. opened.py execs it (no process stays
    between the worker and the sandbox's bubblewrap, which ends with the worker: --die-with-parent)."""
    setpriv = [_setpriv(), f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups", "--"]
    opening = opening_arguments(read_only, writable, ids)
    if not opening:
        return setpriv
    return [sys.executable, "-I", "-S", str(Path(__file__).with_name("opened.py")), *opening, "--", *setpriv]


@functools.cache
def nesting_works() -> str | None:
    """None if a confined process can start the actions' own bubblewrap here, else what failed."""
    import tempfile

    if bwrap_path() is None:
        return "bubblewrap is not usable here"
    with tempfile.TemporaryDirectory(prefix="hb-confine-probe-") as probe:
        give_to_confined(Path(probe))
        inner = [bwrap_path(), *confinement(), *host_system_arguments(False), *proc_arguments(), "--dev", "/dev"]
        argv = [*confinement_argv(Path(probe), {}), *inner, "--", "true"]
        if not confinement_argv(Path(probe), {}):
            return "bubblewrap is not usable here"
        try:
            proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
        if proc.returncode != 0:
            return proc.stderr.decode(errors="replace").strip()[:300] or f"exit status {proc.returncode}"
    return None


def make_non_dumpable() -> None:
    """PR_SET_DUMPABLE 0 for this process: /proc/PID/environ, maps, fds and mem, and ptrace, become
    reachable only with CAP_SYS_PTRACE in the user namespace it was started in, which a confined kind
    never has (module doc). Its forks inherit it; an exec resets it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


def is_dumpable() -> bool:
    """PR_GET_DUMPABLE of this process (True where it cannot be read)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(3, 0, 0, 0, 0) != 0  # PR_GET_DUMPABLE
    except (OSError, AttributeError):
        return True


def confined_executable(writable: Path, env: dict, rule_modules=()) -> Path | None:
    """A script that runs this interpreter confined (confinement_argv), with its arguments:
    multiprocessing's fork server is started with it, so every worker_exec forked from it is confined
    too (`writable`: the directory of the actions' directories). It lies in a new directory outside
    `writable` (a confined process must not rewrite what starts the next fork server). None without
    bubblewrap."""
    # every process the fork server forks first enters this process's working directory (multiprocessing's
    # spawn.prepare) and exits 1, before the action, where it is not there: a worker started in its home
    # (not bound: _startup_entry) failed every action, with no stderr. An empty directory stands for it
    cwd = os.path.realpath(".")
    empty = [cwd] if cwd != "/" and not cwd.startswith(("/proc/", "/dev/")) and os.path.isdir(cwd) else []
    argv = confinement_argv(writable, env, rule_modules, empty)
    if not argv:
        return None
    # the fork server is the sandbox's first process, its PID namespace's init (--as-pid-1): else
    # bubblewrap's own init is, a process of the same uid and namespace that a worker_exec could
    # ptrace (it is dumpable) and that outlives every action. So every other process of the sandbox
    # descends from the fork server, and one an action leaves behind is reparented to it, where the
    # worker finds it (worker.forkserver_left_processes); signals sent from inside the namespace that
    # the fork server does not handle (SIGKILL, SIGSTOP) do not reach it.
    argv = [*argv[:-1], "--as-pid-1", "--"]
    import atexit
    import shlex
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="hb-confined-python-"))  # root's (or the worker's), 0700
    atexit.register(shutil.rmtree, directory, True)
    script = directory / "confined-python"
    script.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in [*argv, sys.executable]) + ' "$@"\n')
    os.chmod(script, 0o700)
    return script
