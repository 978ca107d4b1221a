"""Hostile action kinds inside the confined worker_exec (rexec/confine.py): a kind's Python runs what a
client's params make it run, so these kinds try what such Python could do from inside the sandbox.
Each runs on a real BotWorker (test_adv_worker.make_worker), with and without the fork server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from buildgrid._protos.google.rpc import code_pb2

sys.path.insert(0, str(Path(__file__).parent))
from test_adv_worker import basic_root, lease, make_worker, shell_action  # noqa: E402

ESCAPE_KIND = '''
import os

from hermetic_build.api import register_action_kind


def run(execution):
    found = []
    # the host's sysctls: kernel.core_pattern runs a program as root outside every namespace. Opened
    # for writing and closed, never written.
    try:
        os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))
        found.append("SYSCTL-WRITABLE")
    except OSError as exc:
        found.append(f"sysctl refused: {exc.strerror}")
    # with the fork server, stdout is a file the worker reads back after the action: make it a link
    # to a file of the worker's host
    try:
        stdout = os.readlink("/proc/self/fd/1")
        if stdout.startswith("/") and not stdout.startswith("pipe:"):
            os.unlink(stdout)
            os.symlink(execution.params["secret"], stdout)
            found.append("stdout relinked")
    except OSError as exc:
        found.append(f"relink refused: {exc.strerror}")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.escape", "1", run)
'''


ROOT_KIND = '''
import os

from hermetic_build.api import register_action_kind


def run(execution):
    found = [f"uid {os.getuid()} inside"]  # the host's uid is the owner of the output, seen by the worker
    # a harmless sysctl written with its own value: what the host's uid 0 may do to kernel.core_pattern
    try:
        with open("/proc/sys/kernel/core_uses_pid", "rb") as f:
            value = f.read()
        fd = os.open("/proc/sys/kernel/core_uses_pid", os.O_WRONLY)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
        found.append("SYSCTL-WRITTEN")
    except OSError as exc:
        found.append(f"sysctl refused: {exc.strerror}")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.rootly", "1", run)
'''


STUCK_KIND = '''
import os

from hermetic_build.api import register_action_kind


def run(execution):
    os.execv("/usr/bin/sleep", ["sleep", execution.params["marker"]])  # this very process, never ending


register_action_kind("test.stuck", "1", run)
'''


SIGNAL_KIND = '''
import os
import signal

from hermetic_build.api import register_action_kind


def run(execution):
    pid, found = int(execution.params["victim"]), []
    # by its PID, as kill(1) does it
    try:
        os.kill(pid, 0)
        found.append("SIGNALLED by PID")
    except OSError as exc:
        found.append(f"kill refused: {exc.strerror}")
    # through /proc (the host's was bound in the sandbox): a /proc/PID directory is a pidfd to the kernel
    found.append(f"listed: {os.path.exists(f'/proc/{pid}')}")
    # the sandbox's /proc is that of its own PID namespace: the actions' nested bubblewrap finds its
    # child at /proc/PID by the PID it got (with the host's /proc, another process or none: it hung)
    found.append(f"own /proc: {os.readlink('/proc/self') == str(os.getpid())}")
    try:
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            signal.pidfd_send_signal(fd, 0)
            found.append("SIGNALLED by pidfd")
        finally:
            os.close(fd)
    except OSError as exc:
        found.append(f"pidfd refused: {exc.strerror}")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.signal", "1", run)
'''


# A kind whose first action leaves a process behind (double fork, a new session), which for two
# minutes marks every other action directory beside its own; its second action waits for that mark in
# its own input root. With the fork server, every input root lies in the one writable directory of
# the fork server's sandbox.
LINGER_KIND = """
import os
import time
from pathlib import Path

from hermetic_build.api import register_action_kind

LEFTOVER = '''
end=$(( $(date +%s) + 120 ))
while [ "$(date +%s)" -lt "$end" ]; do
  for d in "${1%/*}"/action-*; do
    if [ "$d" != "$1" ] && [ -d "$d" ]; then : > "$d/LEFTOVER-WAS-HERE"; fi
  done
  sleep 0.02
done
'''
# the same marks, by a process that starts the next one and exits, again and again: a new PID each
# time, which a scan of /proc can miss
HOPPING = '''
for d in "${1%/*}"/action-*; do
  if [ "$d" != "$1" ] && [ -d "$d" ]; then : > "$d/LEFTOVER-WAS-HERE"; fi
done
if [ "$(date +%s)" -lt "$3" ]; then sh -c "$2" "$0" "$1" "$2" "$3" & fi
'''


def run(execution):
    root, out = os.getcwd(), execution.path(execution.action.outputs[0])
    if execution.params["mode"] == "plant":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                if execution.params["hop"]:
                    os.execv("/bin/sh", ["sh", "-c", HOPPING, execution.params["marker"], root, HOPPING,
                                         str(int(time.time()) + 120)])
                os.execv("/bin/sh", ["sh", "-c", LEFTOVER, execution.params["marker"], root])
            os._exit(0)
        os.waitpid(pid, 0)
        out.write_text("planted\\n")
        return
    for _ in range(40):
        if (Path(root) / "LEFTOVER-WAS-HERE").exists():
            out.write_text("POISONED\\n")
            return
        time.sleep(0.1)
    out.write_text("clean\\n")


register_action_kind("test.linger", "1", run)
"""


# Tries to take over the process this worker_exec was forked from (the fork server, which forks every
# later action's worker_exec) and the sandbox's first process: opens its memory for writing and
# attaches to it with ptrace (PTRACE_SEIZE: it is not stopped; the attachment ends with this process).
RESIDUE_KIND = """
import os
import tempfile
from pathlib import Path

from hermetic_build.api import register_action_kind


def run(execution):
    root, found = Path(os.getcwd()), []
    marker = execution.params["marker"]
    if execution.params["mode"] == "plant":
        try:
            Path("/tmp", marker).write_text("residue")
            found.append("tmp planted")
        except OSError as exc:
            found.append(f"tmp refused: {exc.strerror}")
        try:
            (root.parent / marker).mkdir()
            (root.parent / marker / "inside").write_text("residue")
            os.chmod(root.parent / marker, 0)  # and made hard to remove
            found.append("beside planted")
        except OSError as exc:
            found.append(f"beside refused: {exc.strerror}")
        with tempfile.NamedTemporaryFile() as f:  # a kind's temporary file: in its own directory
            found.append(f"tempfile in root: {Path(f.name).parent == root}")
    else:
        found.append("tmp residue" if Path("/tmp", marker).exists() else "tmp clean")
        found.append("beside residue" if (root.parent / marker).exists() else "beside clean")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.residue", "1", run)
"""


LOUD_KIND = """
import os

from hermetic_build.api import register_action_kind


def run(execution):
    chunk = b"x" * (1 << 20)
    for _ in range(execution.params["mib"]):  # past what worker_exec keeps of a command's output
        os.write(1, chunk)
    execution.path(execution.action.outputs[0]).write_text("loud\\n")


register_action_kind("test.loud", "1", run)
"""


INJECT_KIND = """
import ctypes
import os

from hermetic_build.api import register_action_kind


def run(execution):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    found = [f"dumpable: {libc.prctl(3, 0, 0, 0, 0)}"]  # PR_GET_DUMPABLE, of this worker_exec
    for name, pid in (("parent", os.getppid()), ("init", 1)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\\0")
            # the fork server: this Python, running multiprocessing.forkserver's main (bubblewrap's
            # argv names it too)
            server = os.path.basename(argv[0]).startswith(b"python") and b"forkserver" in argv[-2]
            found.append(f"{name} is the fork server: {server} (pid {pid})")
        except (OSError, IndexError) as exc:
            found.append(f"{name} cmdline: {exc}")
        try:
            os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
            found.append(f"{name}: MEMORY-WRITABLE")
        except OSError as exc:
            found.append(f"{name}: mem refused: {exc.strerror}")
        if libc.ptrace(0x4206, pid, None, None) == 0:  # PTRACE_SEIZE
            found.append(f"{name}: PTRACE-ATTACHED")
        else:
            found.append(f"{name}: ptrace refused: {os.strerror(ctypes.get_errno())}")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.inject", "1", run)
"""


def signal_lease(tmp_path, preload: bool, kind: str = "test.signal") -> dict:
    """Run the signal kind on a worker, against a process of the host running as the host uid the
    sandbox runs as (confine.CONFINED_ID on a root worker, else the worker's own uid); what it found,
    and whether that process is still there."""
    from hermetic_build.rexec import confine

    ids = confine.host_ids()
    switch = [] if ids is None else ["setpriv", f"--reuid={ids[0]}", f"--regid={ids[1]}", "--clear-groups"]
    victim = subprocess.Popen([*switch, "sleep", "600"])
    try:
        def build(root):
            (root / ".hb").mkdir()
            (root / ".hb" / "action.json").write_bytes(shell_action(
                "", inputs=(), kind=kind, version="1", mnemonic="Signal",
                params_json=json.dumps({"victim": str(victim.pid)})))

        worker = make_worker(tmp_path, preload=preload)
        status, result = worker._work(lease(worker, tmp_path, build))
        assert status.code == code_pb2.OK, status.message
        assert worker._confined
        out = next((f for f in result.output_files if f.path == "p/o.txt"), None)
        found = worker.cas.blobs[out.digest.hash].decode() if out else ""
        return {"found": found, "victim_alive": victim.poll() is None,
                "victim_uid": os.stat(f"/proc/{victim.pid}").st_uid}
    finally:
        victim.kill()
        victim.wait()


def sleeps_left(marker: str, wait: float = 10) -> list[str]:
    """The PIDs of the host's `sleep MARKER` processes (the stuck kind's) still there after up to
    `wait` seconds."""
    import time

    def left() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + wait
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    return left()


def stuck_lease(tmp_path, preload: bool, kind: str = "test.stuck") -> dict:
    """Run the stuck kind on a worker with a timeout; the lease's status, and the processes of the
    action (its `sleep MARKER`) still there a while after the worker gave up on it."""
    import uuid

    marker = f"3600.{uuid.uuid4().int % 10**12}"

    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind=kind, version="1", mnemonic="Stuck", params_json=json.dumps({"marker": marker})))

    worker = make_worker(tmp_path, preload=preload)
    status, _result = worker._work(lease(worker, tmp_path, build, timeout=3))
    assert worker._confined

    gone = sleeps_left(marker)
    # the same worker's next action (with the fork server: a new one, the timed-out one was ended)
    (tmp_path / "next").mkdir()
    marker = "0"
    status_next, result_next = worker._work(lease(worker, tmp_path / "next", build, timeout=60))
    return {"code": status.code, "message": status.message, "left": gone, "next_code": status_next.code,
            "next_exit": result_next.exit_code if result_next is not None else None}


def exit_during_lease(tmp_path, preload: bool, kind: str = "test.stuck") -> dict:
    """Start the stuck kind on a worker with the fork server, and return (this process then exits)
    while it runs: every os.kill of this process, from then to its very end, is appended to
    tmp_path/kills.txt."""
    import multiprocessing
    import threading
    import time
    from multiprocessing import forkserver

    marker = "3600.424242"
    kills = tmp_path / "kills.txt"
    real_kill = os.kill

    def recording_kill(pid, sig):
        with open(kills, "a") as f:
            f.write(f"{pid} {int(sig)}\n")
        return real_kill(pid, sig)

    os.kill = recording_kill

    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind=kind, version="1", mnemonic="Stuck", params_json=json.dumps({"marker": marker})))

    worker = make_worker(tmp_path, preload=preload)
    payload = lease(worker, tmp_path, build)  # no timeout
    threading.Thread(target=worker._work, args=(payload,), daemon=True).start()
    deadline = time.monotonic() + 120
    while not multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # worker_exec has exec'd the stuck `sleep`
    children = multiprocessing.active_children()
    return {"marker": marker, "child_pids": [c.pid for c in children],
            "server_pid": forkserver._forkserver._forkserver_pid}


def marked_processes(marker: str) -> list[str]:
    """The PIDs of the host's processes with `marker` among their arguments."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            pass
    return found


def linger_leases(tmp_path, preload: bool, kind: str = "test.linger", hop: bool = False) -> dict:
    """Two actions of the linger kind on one worker: the first leaves a process behind, the second
    looks for its mark; what each wrote, and the first one's processes left on the host after each
    (their arguments hold a marker)."""
    import uuid

    from multiprocessing import forkserver

    marker = f"hb-leftover-{uuid.uuid4().hex}"

    def after(mode: str, got: dict) -> None:
        got[f"left_after_{mode}"] = marked_processes(marker)
        got[f"server_after_{mode}"] = forkserver._forkserver._forkserver_pid

    return leases_in_turn(tmp_path, preload, kind, "Linger", ("plant", "victim"),
                          {"marker": marker, "hop": hop}, after)


def leases_in_turn(tmp_path, preload: bool, kind: str, mnemonic: str, modes, params: dict, after=None) -> dict:
    """One action of the kind `kind` per mode, in turn on one worker (params plus its mode): what each
    wrote to p/o.txt, its exit status and the end of its stderr, under the mode's name, and the
    worker's log; after(mode, got) is called after each."""
    worker = make_worker(tmp_path, preload=preload)
    got = {"log": []}
    worker.log = got["log"].append
    for mode in modes:
        def build(root, mode=mode):
            (root / ".hb").mkdir()
            (root / ".hb" / "action.json").write_bytes(shell_action(
                "", inputs=(), kind=kind, version="1", mnemonic=mnemonic,
                params_json=json.dumps({**params, "mode": mode})))

        (tmp_path / mode).mkdir()
        status, result = worker._work(lease(worker, tmp_path / mode, build, timeout=120))
        assert status.code == code_pb2.OK, status.message
        out = next((f for f in result.output_files if f.path == "p/o.txt"), None)
        got[mode] = {"exit": result.exit_code, "out": worker.cas.blobs[out.digest.hash].decode() if out else "",
                     "stderr": worker.cas.blobs.get(result.stderr_digest.hash, b"").decode(errors="replace")[-2000:]}
        if after is not None:
            after(mode, got)
    assert worker._confined
    return got


def hopping_linger_leases(tmp_path, preload: bool, kind: str = "test.linger") -> dict:
    return linger_leases(tmp_path, preload, kind, hop=True)


def residue_leases(tmp_path, preload: bool, kind: str = "test.residue") -> dict:
    """Two actions of the residue kind on one worker: the first leaves files in /tmp and beside its
    directory, the second looks for them; what each found, and the worker's log."""
    import uuid

    return leases_in_turn(tmp_path, preload, kind, "Residue", ("plant", "look"),
                          {"marker": f"hb-residue-{uuid.uuid4().hex}"})


def loud_lease(tmp_path, preload: bool, kind: str = "test.loud") -> dict:
    """The loud kind on a worker (256 MiB to stdout): how much of it the worker reported as the action's
    stdout, and how much the worker's own peak memory grew meanwhile."""
    import resource

    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind=kind, version="1", mnemonic="Loud", params_json=json.dumps({"mib": 256})))

    worker = make_worker(tmp_path, preload=preload)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, result = worker._work(lease(worker, tmp_path, build, timeout=120))
    assert status.code == code_pb2.OK, status.message
    assert worker._confined
    stdout = worker.cas.blobs.get(result.stdout_digest.hash, b"")
    return {"exit": result.exit_code, "stdout_bytes": len(stdout), "tail": stdout[-200:].decode(errors="replace"),
            "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}


def inject_lease(tmp_path, preload: bool, kind: str = "test.inject") -> dict:
    """The inject kind on a worker, then two honest actions on the same worker; what the first found,
    and the fork server's PID (that of its bubblewrap) after each action."""
    from multiprocessing import forkserver

    worker = make_worker(tmp_path, preload=preload)
    log = []
    worker.log = log.append

    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind=kind, version="1", mnemonic="Inject", params_json="{}"))

    status, result = worker._work(lease(worker, tmp_path, build, timeout=120))
    assert status.code == code_pb2.OK, status.message
    assert worker._confined
    out = next((f for f in result.output_files if f.path == "p/o.txt"), None)
    servers = [forkserver._forkserver._forkserver_pid]
    for name in ("next", "third"):
        (tmp_path / name).mkdir()
        status_next, result_next = worker._work(lease(worker, tmp_path / name, basic_root(), timeout=120))
        assert status_next.code == code_pb2.OK, status_next.message
        servers.append(forkserver._forkserver._forkserver_pid)
    return {"found": worker.cas.blobs[out.digest.hash].decode() if out else "", "exit": result.exit_code,
            "stderr": worker.cas.blobs.get(result.stderr_digest.hash, b"").decode(errors="replace")[-2000:],
            "next_code": status_next.code, "next_exit": result_next.exit_code if result_next else None,
            "servers": servers, "log": log}


def probe_lease(tmp_path, preload: bool, kind: str, mnemonic: str, params: dict) -> dict:
    """One action of the kind `kind` with `params` on a new worker: what it wrote to p/o.txt, its exit
    status, stdout and stderr as the worker reported them, the worker's log, and the host's owner of
    the output (as the worker collects it)."""
    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind=kind, version="1", mnemonic=mnemonic, params_json=json.dumps(params)))

    worker = make_worker(tmp_path, preload=preload)
    log = []
    worker.log = log.append
    owners, collect = [], worker._collect

    def _collect(root, outputs, result, upload):
        owners.append(os.stat(root / "p" / "o.txt", follow_symlinks=False).st_uid)
        return collect(root, outputs, result, upload)

    worker._collect = _collect
    status, result = worker._work(lease(worker, tmp_path, build))
    assert status.code == code_pb2.OK, status.message
    out = next((f for f in result.output_files if f.path == "p/o.txt"), None)
    return {"found": worker.cas.blobs[out.digest.hash].decode() if out else "", "owner": owners[0] if owners else None,
            "stdout": worker.cas.blobs.get(result.stdout_digest.hash, b"").decode(errors="replace"),
            "stderr": worker.cas.blobs.get(result.stderr_digest.hash, b"").decode(errors="replace"),
            "exit": result.exit_code, "log": log, "confined": worker._confined}


def escape_lease(tmp_path, preload: bool, kind: str = "test.escape") -> dict:
    """Run the kind `kind` (the escape kind) on a worker; what it found, the stdout the worker reported,
    and the host's owner of the output the kind wrote (as the worker collects it)."""
    got = probe_lease(tmp_path, preload, kind, "Escape", {"secret": str(tmp_path / "host" / "secret.txt")})
    assert got["confined"]
    return got


def open_to_confined(path: Path) -> None:
    """pytest's directories are 0700: a worker running as root starts the sandbox as another user
    (confine.CONFINED_ID), which must reach the rule modules bound read-only."""
    import tempfile

    top = Path(tempfile.gettempdir()).resolve()
    for p in [path, *path.parents]:
        if p == top or p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o755)


def install_test_kind(tmp_path: Path, monkeypatch, module: str, source: str, path: list[str]) -> None:
    """A rule module `module` (registering a test kind) for the worker: HB_RULE_MODULES names it, the
    worker's PYTHONPATH (what it binds for the confined worker_exec) finds it first, then `path`."""
    from hermetic_build.rexec import confine

    if confine.nesting_works() is not None:
        pytest.fail(f"bubblewrap does not nest here: {confine.nesting_works()}")
    open_to_confined(tmp_path)
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / f"{module}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(modules), *path])))
    monkeypatch.setenv("HB_RULE_MODULES", f"rules,{module}")


def _run(tmp_path, monkeypatch, preload, kind="test.escape", module="escape_kind", source=ESCAPE_KIND,
         runs="escape_lease") -> dict:
    """escape_lease (or `runs`) in a fresh process (the fork server is started once per process, with the rule
    modules of that moment), with this Python: as root here, one under root's 0700 home (pyenv), which
    the confined user cannot enter but through the worker's own mount namespace (confine.py)."""
    from hermetic_build.rexec import confine

    hb_root = str(Path(confine.__file__).resolve().parent.parent.parent)
    install_test_kind(tmp_path, monkeypatch, module, source, [hb_root])
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret.txt").write_text("HOST-SECRET\n")
    here = Path(__file__).parent
    script = (f"import sys, json; sys.path[:0] = {[str(here.parent), str(here)]!r}\n"
              f"from pathlib import Path\nfrom test_adv_confine import {runs}\n"
              f"if __name__ == '__main__':\n    print(json.dumps({runs}(Path({str(tmp_path)!r}), {preload!r}, "
              f"{kind!r})))\n")
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "run_escape.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "runner" / "run_escape.py")], capture_output=True,
                          text=True, timeout=300, cwd=here.parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_cannot_write_the_hosts_sysctls(tmp_path, monkeypatch, preload):
    """The host's /proc was bound into the sandbox (for the nested bubblewrap) and writable; a worker
    running as root mapped the kind's uid 1000 to the host's uid 0, and the kernel lets uid 0 write
    /proc/sys without any capability: kernel.core_pattern ('|/action/dir/x') would run a program as
    root on the host at the next crash. (Now the sandbox has a /proc of its own, never as root.)"""
    got = _run(tmp_path, monkeypatch, preload)
    assert "SYSCTL-WRITABLE" not in got["found"] and "sysctl refused" in got["found"], got


def test_a_kind_cannot_have_the_worker_read_a_file_through_its_log(tmp_path, monkeypatch):
    """With the fork server, worker_exec's stdout and stderr are files in the directory the confined
    kind can write; the worker read them back following links: a kind that replaced its stdout with a
    link to a host file had the worker upload that file as the action's stdout."""
    got = _run(tmp_path, monkeypatch, True)
    assert "stdout relinked" in got["found"], got  # it could (its directory is writable); the worker did not follow
    assert "HOST-SECRET" not in got["stdout"] + got["stderr"], got


@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_never_runs_as_the_hosts_root(tmp_path, monkeypatch, preload):
    """A worker running as root whose Python lies where uid 65534 cannot enter (pyenv under root's 0700
    home, as here) confined worker_exec as the host's uid 0 and only said so in its log: a kind wrote
    a sysctl (here one with its own value; kernel.core_pattern runs a program as root on the host).
    Now it runs as confine.CONFINED_ID, through a mount namespace of the worker that opens the way."""
    from hermetic_build.rexec import confine

    got = _run(tmp_path, monkeypatch, preload, "test.rootly", "rootly_kind", ROOT_KIND)
    expected = confine.CONFINED_ID if os.geteuid() == 0 else os.geteuid()
    assert got["owner"] == expected, got
    assert "SYSCTL-WRITTEN" not in got["found"] and "sysctl refused" in got["found"], got


@pytest.mark.parametrize("preload", [False, True])
def test_a_confined_action_that_runs_too_long_is_ended(tmp_path, monkeypatch, preload):
    """The worker ends an action past its timeout by the PID of what it started (worker_exec, or with the
    fork server the process forked for it): as root, that must still be the sandbox's own process,
    with nothing between (bubblewrap run as root to open the paths kept a monitor there, which could
    not signal uid 65534's processes: the action outlived its timeout)."""
    from buildgrid._protos.google.rpc import code_pb2 as codes

    got = _run(tmp_path, monkeypatch, preload, "test.stuck", "stuck_kind", STUCK_KIND, runs="stuck_lease")
    assert got["code"] == codes.DEADLINE_EXCEEDED, got
    assert got["left"] == [], got
    assert got["next_code"] == codes.OK and got["next_exit"] == 0, got  # the worker goes on


@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_cannot_signal_the_hosts_processes(tmp_path, monkeypatch, preload):
    """A confined kind ran as a uid of the host (the worker's, or 65534 on a root worker), which may
    signal every process of that uid: the worker itself, its other actions, the user's other programs,
    `nobody`'s daemons. The sandbox has a PID namespace of its own now, and a /proc of that namespace:
    the host's process is not listed, and can be signalled neither by its PID nor through /proc.
    (With the host's /proc bound in a PID namespace, the actions' own nested bubblewrap looked up its
    child by its namespace PID in the host's /proc and hung: "open /proc/9/ns/ns failed".)"""
    got = _run(tmp_path, monkeypatch, preload, "test.signal", "signal_kind", SIGNAL_KIND, runs="signal_lease")
    from hermetic_build.rexec import confine

    ids = confine.host_ids()
    assert got["victim_uid"] == (ids[0] if ids else os.getuid()), got  # the sandbox's own host uid
    assert "SIGNALLED" not in got["found"], got
    assert "kill refused: No such process" in got["found"] and "pidfd refused" in got["found"], got
    assert "listed: False" in got["found"] and "own /proc: True" in got["found"], got
    assert got["victim_alive"], got


def test_a_worker_that_exits_while_a_confined_action_runs_never_signals_it_by_its_pid(tmp_path, monkeypatch):
    """multiprocessing's exit handler terminates a daemon process still running by the PID the fork
    server reported, which for a confined fork server is one of its sandbox's PID namespace: on the
    host it names another process (a root worker could end any). The worker ends the fork server's
    sandbox first, and the action with it."""
    got = _run(tmp_path, monkeypatch, True, "test.stuck", "stuck_kind", STUCK_KIND, runs="exit_during_lease")
    assert got["child_pids"] and got["server_pid"], got
    kills = [tuple(map(int, line.split())) for line in (tmp_path / "kills.txt").read_text().splitlines()] \
        if (tmp_path / "kills.txt").exists() else []
    assert not [k for k in kills if k[0] in got["child_pids"]], (kills, got)
    assert (got["server_pid"], 9) in kills, (kills, got)

    assert sleeps_left(got["marker"]) == [], "the action outlived the worker"


def test_a_root_worker_that_cannot_confine_as_another_user_refuses_to_start(tmp_path):
    """Where uid 65534 cannot run the worker's Python even through the opened mount namespace (a venv
    that is itself 0700), `hb worker` as root stops at once with one line saying why and what to do;
    before, it confined worker_exec as uid 0 and only logged it."""
    if os.geteuid() != 0:
        pytest.skip("a worker refuses this only as root")
    from hermetic_build.rexec import confine

    venv = tmp_path / "closed-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv.chmod(0o700)
    hb_root = str(Path(confine.__file__).resolve().parent.parent.parent)
    import site

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([hb_root, *site.getsitepackages()])}
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "hermetic_build", "worker", "--bots",
                           "grpc://127.0.0.1:9"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    assert "will not run actions as root" in lines[0] and "unprivileged user" in lines[0], lines
    assert f"uid {confine.CONFINED_ID} cannot run" in lines[0], lines


@pytest.mark.parametrize("preload,runs", [(False, "linger_leases"), (True, "linger_leases"),
                                          (True, "hopping_linger_leases")])
def test_no_process_of_an_action_outlives_it(tmp_path, monkeypatch, preload, runs):
    """With the fork server, one sandbox runs action after action, and every input root lies in its one
    writable directory: a process an action left behind (double fork, new session) lived on into the
    next action and wrote into its input root (reproduced: the next action's worker_exec found the mark
    there and refused its input root). Now the worker ends the fork server's sandbox after an action
    that left a process in it, one that keeps changing its PID too; the next action starts a new one."""
    got = _run(tmp_path, monkeypatch, preload, "test.linger", "linger_kind", LINGER_KIND, runs=runs)
    assert got["plant"]["exit"] == 0 and got["plant"]["out"] == "planted\n", got
    assert got["victim"]["exit"] == 0 and got["victim"]["out"] == "clean\n", got
    assert got["left_after_plant"] == [] and got["left_after_victim"] == [], got
    if preload:  # the sandbox that held the process was ended; the victim's left none: it stays
        assert got["server_after_plant"] is None and got["server_after_victim"] is not None, got


@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_cannot_inject_into_the_fork_server(tmp_path, monkeypatch, preload):
    """The fork server forks every later action's worker_exec, possibly for other users: code of one
    action that writes its memory runs in all later ones. It is worker_exec's parent, of its uid and
    namespace, and this kernel has no Yama: it was dumpable, so an action opened /proc/PARENT/mem
    for writing and attached to it with ptrace (reproduced). The fork server and every worker_exec
    it forks are non-dumpable now, before any action's code runs."""
    got = _run(tmp_path, monkeypatch, preload, "test.inject", "inject_kind", INJECT_KIND, runs="inject_lease")
    assert got["exit"] == 0, got
    assert got["next_code"] == code_pb2.OK and got["next_exit"] == 0, got  # the worker goes on
    if not preload:
        return  # a sandbox of its own, which ends with the action: its first process is bubblewrap's
    assert "parent is the fork server: True" in got["found"], got
    assert "dumpable: 0" in got["found"], got
    assert "MEMORY-WRITABLE" not in got["found"] and "PTRACE-ATTACHED" not in got["found"], got
    assert "parent: mem refused" in got["found"] and "parent: ptrace refused" in got["found"], got
    # the sandbox's first process is the fork server itself (before, bubblewrap's, as reachable)
    assert "init is the fork server: True (pid 1)" in got["found"], got
    # actions that leave no process keep the fork server (its speed): the same one ran all three
    assert got["servers"][0] is not None and len(set(got["servers"])) == 1, got


@pytest.mark.parametrize("preload", [False, True])
def test_nothing_an_action_leaves_in_tmp_or_beside_its_directory_reaches_the_next(tmp_path, monkeypatch, preload):
    """With the fork server, one sandbox runs action after action: a file an action wrote in its /tmp
    (a tmpfs, in memory) stayed there for every later action, and a directory it made beside its own
    input root stayed in the sandbox's one writable directory (reproduced: the next action found both).
    Now /tmp is read-only there (a kind's temporary files go to its own directory) and the worker
    removes whatever an action left beside its directory."""
    got = _run(tmp_path, monkeypatch, preload, "test.residue", "residue_kind", RESIDUE_KIND, runs="residue_leases")
    assert got["plant"]["exit"] == 0 and got["look"]["exit"] == 0, got
    assert "tmp refused: Read-only file system" in got["plant"]["out"], got
    assert "tempfile in root: True" in got["plant"]["out"], got
    assert got["look"]["out"] == "tmp clean\nbeside clean\n", got
    if "beside planted" in got["plant"]["out"]:
        assert any("removed what an action left beside its directory: hb-residue-" in line for line in got["log"]), got


@pytest.mark.parametrize("preload", [False, True])
def test_what_a_kind_writes_to_its_stdout_reaches_the_worker_within_a_bound(tmp_path, monkeypatch, preload):
    """The worker read worker_exec's stdout whole: captured until the action ended (without the fork
    server) or read back from its log file (with it). A kind's Python that wrote 256 MiB grew the
    worker's own memory by as much (reproduced); worker_exec keeps a command's output to about 8 MiB, so
    the worker now reads 16 MiB of each stream and says how much it left out."""
    from hermetic_build.rexec import worker

    MAX_LOG_BYTES = getattr(worker, "MAX_LOG_BYTES", 16 << 20)  # noqa: N806 - (so that it runs on the code before)
    got = _run(tmp_path, monkeypatch, preload, "test.loud", "loud_kind", LOUD_KIND, runs="loud_lease")
    assert got["exit"] == 0, got
    assert MAX_LOG_BYTES < got["stdout_bytes"] < MAX_LOG_BYTES + 200, got
    assert f"{(256 << 20) - MAX_LOG_BYTES:,} more bytes of stdout left out" in got["tail"], got
    assert got["grew_kib"] < 120 << 10, got
