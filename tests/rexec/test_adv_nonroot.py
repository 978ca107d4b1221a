"""Hostile action kinds on a worker run by an unprivileged user, as `hb worker` is meant to run: there
confine.host_ids() is None and the sandbox runs as the worker's own uid (mapped to confine.INSIDE_ID),
the uid of the worker process itself. CI runs as root, so each test starts the real BotWorker (in a
fresh process, as test_adv_confine._run does) as NONROOT_ID, through opened.py where this Python lies
under a directory that user cannot enter (pyenv under root's 0700 home), with and without the fork
server; the same hostile kinds as test_adv_confine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from buildgrid._protos.google.rpc import code_pb2

sys.path.insert(0, str(Path(__file__).parent))
from test_adv_confine import (ESCAPE_KIND, INJECT_KIND, LINGER_KIND, SIGNAL_KIND, STUCK_KIND,  # noqa: E402
                              escape_lease, exit_during_lease, hopping_linger_leases, inject_lease, install_test_kind,
                              linger_leases, signal_lease, sleeps_left, stuck_lease)

# what the runner (run_worker) imports from this module
RUNS = (escape_lease, exit_during_lease, hopping_linger_leases, inject_lease, linger_leases, signal_lease, stuck_lease)

NONROOT_ID = 4271  # the worker's user: a uid of no account or process of this machine

def run_worker(tmp_path, monkeypatch, preload, kind, module, source, runs, *, uid=NONROOT_ID,
               from_home=None) -> dict:
    """`runs`(tmp_path, preload, kind) in a fresh process run as `uid` (None: this process's, root), which
    starts the real BotWorker; its answer. from_home: started in the user's home (which holds
    ~/.ssh/id_ed25519 and ~/.config/token), "module" as `python -m` (the working directory is then
    sys.path[0]), "script" as a script (as the `hb` script is run)."""
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
