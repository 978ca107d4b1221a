"""Hostile action kinds on a worker run by an unprivileged user, as `hb worker` is meant to run: there
confine.host_ids() is None and the sandbox runs as the worker's own uid (mapped to confine.INSIDE_ID),
the uid of the worker process itself. CI runs as root, so each test starts the real BotWorker (in a
fresh process, as test_adv_confine._run does) as NONROOT_ID, through opened.py where this Python lies
under a directory that user cannot enter (pyenv under root's 0700 home), with and without the fork
server; the same hostile kinds as test_adv_confine, and the keyrings and the worker's working directory,
which the root path did not show."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from buildgrid._protos.google.rpc import code_pb2

sys.path.insert(0, str(Path(__file__).parent))
from test_adv_confine import (ESCAPE_KIND, INJECT_KIND, LINGER_KIND, SIGNAL_KIND, STUCK_KIND,  # noqa: E402
                              escape_lease, exit_during_lease, hopping_linger_leases, inject_lease, install_test_kind,
                              linger_leases, probe_lease, signal_lease, sleeps_left, stuck_lease)

# what the runner (run_worker) imports from this module
RUNS = (escape_lease, exit_during_lease, hopping_linger_leases, inject_lease, linger_leases, signal_lease, stuck_lease)

NONROOT_ID = 4271  # the worker's user: a uid of no account or process of this machine
KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())

# Run as the worker's user before the worker: a session keyring of its own with a key (as a login's,
# pam_keyinit), and, where that user is not root, a key in its user keyring of the host (removed after).
KEYS = r'''
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keyctl, add_key = int(sys.argv[1]), int(sys.argv[1]) - 2
def check(result):
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result
def add(name, value, ring):
    return check(libc.syscall(ctypes.c_long(add_key), b"user", name, value, ctypes.c_size_t(len(value)),
                              ctypes.c_long(ring)))

check(libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(1), None))  # KEYCTL_JOIN_SESSION_KEYRING: a new one
add(b"hb-worker-session", b"WORKER-SESSION-SECRET", -3)  # KEY_SPEC_SESSION_KEYRING
def ctl(*args):
    return check(libc.syscall(ctypes.c_long(keyctl), *[ctypes.c_long(a) for a in args]))
user_key = None
if os.getuid() != 0:  # made in the session keyring (to set its timeout), then moved to the user keyring
    user_key = add(b"hb-worker-user", b"WORKER-USER-SECRET", -3)
    ctl(15, user_key, 600)  # KEYCTL_SET_TIMEOUT
    ctl(8, user_key, -4)  # KEYCTL_LINK into KEY_SPEC_USER_KEYRING
    ctl(9, user_key, -3)  # KEYCTL_UNLINK from the session keyring
try:
    code = subprocess.run(sys.argv[2:]).returncode
finally:
    if user_key is not None:
        ctl(9, user_key, -4)
sys.exit(code)
'''

KEYRING_KIND = r'''
import ctypes
import os

from hermetic_build.api import register_action_kind

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def keyctl(number, *args):
    result = libc.syscall(ctypes.c_long(number), *[a if isinstance(a, ctypes.Array) else ctypes.c_long(a)
                                                   for a in args])
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result


def payloads(number, ring, found):
    ids = ctypes.create_string_buffer(4096)
    size = keyctl(number, 11, ring, ids, 4096)  # KEYCTL_READ of a keyring: the ids of its keys
    for i in range(0, min(size, 4096), 4):
        key, data = int.from_bytes(ids.raw[i:i + 4], "little"), ctypes.create_string_buffer(4096)
        try:
            size = keyctl(number, 11, key, data, 4096)
            found.append(f"key {key}: {data.raw[:size].decode(errors='replace')}")
        except OSError as exc:
            found.append(f"key {key} refused: {exc.strerror}")


def run(execution):
    number, found = int(execution.params["keyctl"]), []
    # the session keyring inherited from the worker: this process possesses it and its keys
    try:
        payloads(number, keyctl(number, 0, -3, 0), found)  # KEYCTL_GET_KEYRING_ID of the session keyring
    except OSError as exc:
        found.append(f"session keyring refused: {exc.strerror}")
    # the user keyrings of the host that /proc/keys lists (the worker's user's, where it is not root):
    # linked into the session keyring, which this process possesses, their keys are possessed too
    with open("/proc/keys") as f:
        rings = [int(line.split()[0], 16) for line in f if " _uid." in line]
    found.append(f"user keyrings listed: {len(rings)}")
    for ring in rings:
        try:
            keyctl(number, 8, ring, -3)  # KEYCTL_LINK
            payloads(number, ring, found)
        except OSError as exc:
            found.append(f"user keyring refused: {exc.strerror}")
    # the same call through the i386 ABI (int 0x80), which a filter of the x86_64 numbers alone lets by
    if os.uname().machine == "x86_64":
        import mmap

        code = bytes.fromhex("53b820010000bb00000000b9fdffffff31d2cd805bc3")  # keyctl(GET_KEYRING_ID, @s, 0)
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        result = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
        found.append(f"i386 keyctl: {'refused' if result < 0 else 'KEYRING-REACHED'} ({result})")
    execution.path(execution.action.outputs[0]).write_text("\n".join(found) + "\n")


register_action_kind("test.keyring", "1", run)
'''

READ_KIND = r'''
from hermetic_build.api import register_action_kind


def run(execution):
    found = []
    for path in execution.params["paths"]:
        try:
            with open(path, "rb") as f:
                found.append(f"READ {path}: {f.read(200).decode(errors='replace')}")
        except OSError as exc:
            found.append(f"read {path} refused: {exc.strerror}")
    execution.path(execution.action.outputs[0]).write_text("\n".join(found) + "\n")


register_action_kind("test.read", "1", run)
'''


def _lease_of(tmp_path, preload: bool, kind: str, params: dict) -> dict:
    got = probe_lease(tmp_path, preload, kind, "Probe", params)
    return {**got, "stderr": got["stderr"][-2000:], "uid": os.getuid()}


def keyring_lease(tmp_path, preload: bool, kind: str = "test.keyring") -> dict:
    return _lease_of(tmp_path, preload, kind, {"keyctl": KEYCTL})


def read_lease(tmp_path, preload: bool, kind: str = "test.read") -> dict:
    home = tmp_path / "home"
    return _lease_of(tmp_path, preload, kind, {"paths": [str(home / ".ssh" / "id_ed25519"),
                                                         str(home / ".config" / "token")]})


def run_worker(tmp_path, monkeypatch, preload, kind, module, source, runs, *, uid=NONROOT_ID, from_home=None,
               keys=False) -> dict:
    """`runs`(tmp_path, preload, kind) in a fresh process run as `uid` (None: this process's, root), which
    starts the real BotWorker; its answer. from_home: started in the user's home (which holds
    ~/.ssh/id_ed25519 and ~/.config/token), "module" as `python -m` (the working directory is then
    sys.path[0]), "script" as a script (as the `hb` script is run). keys:
    with a session keyring and a user keyring key (KEYS)."""
    from hermetic_build.rexec import confine

    hb_root = str(Path(confine.__file__).resolve().parent.parent.parent)
    install_test_kind(tmp_path, monkeypatch, module, source, [hb_root])
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret.txt").write_text("HOST-SECRET\n")
    home = tmp_path / "home"
    for name, text in ((".ssh/id_ed25519", "WORKER-USER-SSH-KEY\n"), (".config/token", "WORKER-USER-TOKEN\n")):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
        (home / name).chmod(0o600)
    here = Path(__file__).parent
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "hb_runner.py").write_text(
        f"import sys, json; sys.path[:0] = {[str(here.parent), str(here)]!r}\n"
        f"from pathlib import Path\nfrom test_adv_nonroot import {runs}\n"
        f"if __name__ == '__main__':\n    print(json.dumps({runs}(Path({str(tmp_path)!r}), {preload!r}, {kind!r})))\n")
    env = {**os.environ, "HOME": str(home)}
    as_module = from_home == "module"
    argv = [sys.executable, *(["-m", "hb_runner"] if as_module else [str(tmp_path / "runner" / "hb_runner.py")])]
    if as_module:
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path / "runner")])
    if keys:
        if KEYCTL is None:
            pytest.fail(f"no keyring syscall numbers for {platform.machine()}")
        (tmp_path / "keys.py").write_text(KEYS)
        argv = [sys.executable, "-I", "-S", str(tmp_path / "keys.py"), str(KEYCTL), *argv]
    if uid is not None:
        ids = (uid, uid)
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(tmp_path)], check=True)
        switch = [confine._setpriv(), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        opening = confine.opening_arguments(confine.read_only_paths(), tmp_path, ids)
        if opening:  # this Python under root's 0700 home: opened for that user as a root worker does it
            switch = [sys.executable, "-I", "-S", str(Path(confine.__file__).with_name("opened.py")), *opening,
                      "--", *switch]
        argv = [*switch, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                          cwd=home if from_home else here.parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if isinstance(got, dict) and "uid" in got:
        assert got["uid"] == (os.getuid() if uid is None else uid), got
    return got


@pytest.mark.parametrize("uid", [NONROOT_ID, None], ids=["unprivileged", "root"])
@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_cannot_read_the_workers_keyrings(tmp_path, monkeypatch, preload, uid):
    """The kernel's keyrings are not namespaced: a confined kind possessed the session keyring of the
    worker it inherited (a login's; as root, root's) and read its key, and, as the worker's own uid on the
    host (an unprivileged worker), linked that user's host keyring (listed in /proc/keys) into it and read
    its key too (reproduced with this kind). Now keyctl, add_key and request_key fail with ENOSYS in
    worker_exec and all it starts (a seccomp filter), by the i386 ABI too."""
    got = run_worker(tmp_path, monkeypatch, preload, "test.keyring", "keyring_kind", KEYRING_KIND, "keyring_lease",
                     uid=uid, keys=True)
    assert got["confined"] and got["exit"] == 0, got
    assert "SECRET" not in got["found"] and "REACHED" not in got["found"], got
    assert "session keyring refused: Function not implemented" in got["found"], got
    if uid is not None:  # its user keyring of the host is listed (a name only), and cannot be linked
        assert "user keyrings listed: 1" in got["found"], got
        assert "user keyring refused: Function not implemented" in got["found"], got
    if platform.machine() == "x86_64":
        assert "i386 keyctl: refused (-38)" in got["found"], got


@pytest.mark.parametrize("started", ["module", "script"])
@pytest.mark.parametrize("preload", [False, True])
def test_a_worker_started_in_its_home_does_not_expose_it(tmp_path, monkeypatch, preload, started):
    """`python -m hermetic_build worker` (README: the same program as `hb`) puts its working directory
    first on sys.path, and the sandbox bound every entry of sys.path read-only: a worker started in its
    user's home had that home readable by every kind, as that user (reproduced: ~/.ssh/id_ed25519 read).
    Now neither that entry nor the directory holding hb or a rule module is bound, only what they are."""
    got = run_worker(tmp_path, monkeypatch, preload, "test.read", "read_kind", READ_KIND, "read_lease",
                     from_home=started)
    assert got["confined"] and got["exit"] == 0 and got["owner"] == NONROOT_ID, got
    assert "WORKER-USER" not in got["found"] and "READ" not in got["found"], got
    assert got["found"].count("refused: No such file or directory") == 2, got


# The hostile kinds of test_adv_confine, on the unprivileged worker

@pytest.mark.parametrize("preload", [False, True])
def test_unprivileged_a_kind_cannot_write_sysctls_nor_relink_its_log(tmp_path, monkeypatch, preload):
    got = run_worker(tmp_path, monkeypatch, preload, "test.escape", "escape_kind", ESCAPE_KIND, "escape_lease")
    assert got["exit"] == 0 and got["owner"] == NONROOT_ID, got
    assert "SYSCTL-WRITABLE" not in got["found"] and "sysctl refused" in got["found"], got
    assert "HOST-SECRET" not in got["stdout"] + got["stderr"], got
    if preload:
        assert "stdout relinked" in got["found"], got  # it could (its directory); the worker did not follow


@pytest.mark.parametrize("preload", [False, True])
def test_unprivileged_a_kind_cannot_signal_the_workers_processes(tmp_path, monkeypatch, preload):
    """The sandbox runs as the worker's own uid here: a process of that uid (as the worker is) is neither
    listed nor signalled."""
    got = run_worker(tmp_path, monkeypatch, preload, "test.signal", "signal_kind", SIGNAL_KIND, "signal_lease")
    assert got["victim_uid"] == NONROOT_ID and got["victim_alive"], got
    assert "SIGNALLED" not in got["found"], got
    assert "kill refused: No such process" in got["found"] and "pidfd refused" in got["found"], got
    assert "listed: False" in got["found"] and "own /proc: True" in got["found"], got


@pytest.mark.parametrize("preload", [False, True])
def test_unprivileged_a_confined_action_that_runs_too_long_is_ended(tmp_path, monkeypatch, preload):
    got = run_worker(tmp_path, monkeypatch, preload, "test.stuck", "stuck_kind", STUCK_KIND, "stuck_lease")
    assert got["code"] == code_pb2.DEADLINE_EXCEEDED and got["left"] == [], got
    assert got["next_code"] == code_pb2.OK and got["next_exit"] == 0, got


@pytest.mark.parametrize("preload,runs", [(False, "linger_leases"), (True, "linger_leases"),
                                          (True, "hopping_linger_leases")])
def test_unprivileged_no_process_of_an_action_outlives_it(tmp_path, monkeypatch, preload, runs):
    got = run_worker(tmp_path, monkeypatch, preload, "test.linger", "linger_kind", LINGER_KIND, runs)
    assert got["plant"]["out"] == "planted\n" and got["victim"]["out"] == "clean\n", got
    assert got["left_after_plant"] == [] and got["left_after_victim"] == [], got
    if preload:
        assert got["server_after_plant"] is None and got["server_after_victim"] is not None, got


@pytest.mark.parametrize("preload", [False, True])
def test_unprivileged_a_kind_cannot_inject_into_the_fork_server(tmp_path, monkeypatch, preload):
    got = run_worker(tmp_path, monkeypatch, preload, "test.inject", "inject_kind", INJECT_KIND, "inject_lease")
    assert got["exit"] == 0 and got["next_code"] == code_pb2.OK and got["next_exit"] == 0, got
    if preload:
        assert "parent is the fork server: True" in got["found"] and "dumpable: 0" in got["found"], got
        assert "MEMORY-WRITABLE" not in got["found"] and "PTRACE-ATTACHED" not in got["found"], got
        assert "parent: ptrace refused" in got["found"] and "init: ptrace refused" in got["found"], got
        assert got["servers"][0] is not None and len(set(got["servers"])) == 1, got


def test_unprivileged_a_worker_that_exits_during_an_action_ends_it(tmp_path, monkeypatch):
    got = run_worker(tmp_path, monkeypatch, True, "test.stuck", "stuck_kind", STUCK_KIND, "exit_during_lease")
    kills = [tuple(map(int, line.split())) for line in (tmp_path / "kills.txt").read_text().splitlines()]
    assert got["child_pids"] and not [k for k in kills if k[0] in got["child_pids"]], (kills, got)
    assert (got["server_pid"], 9) in kills, (kills, got)
    assert sleeps_left(got["marker"]) == [], "the action outlived the worker"
