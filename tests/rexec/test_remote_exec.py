"""Remote execution end to end: a real BuildGrid (Execution + Bots services, sql scheduler on a
throwaway PostgreSQL) and two `hb worker` processes; `hb build --remote-executor grpc://...`."""

import json
import time

import pytest

pytest.importorskip("grpc")
pytest.importorskip("buildgrid._protos.google.devtools.remoteworkers.v1test2.bots_pb2")

from support import BuildGridExecution, copy_example, genrule_workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    base = tmp_path_factory.mktemp("rexec")
    server = BuildGridExecution(base / "bgd")
    workers = [server.worker(base / "workers", name) for name in ("w1", "w2")]
    yield server, workers, base
    for w in workers:
        w.stop()
    server.stop()


FANOUT = """\
genrule(name = "up", srcs = ["in.txt"], outs = ["up.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
[genrule(name = "f%d" % i, srcs = [":up"], outs = ["f%d.sh" % i],
         cmd = "sleep 0.5; (echo '#!/bin/sh'; echo 'echo %d'; cat $(SRCS)) > $(OUTS); chmod 755 $(OUTS)" % i)
 for i in range(6)]
genrule(name = "all", srcs = [":f%d" % i for i in range(6)], outs = ["all.txt"], cmd = "cat $(SRCS) > $(OUTS)")
"""


def test_genrules_run_on_both_workers_and_match_a_local_build(tmp_path, engine):
    server, workers, _base = engine
    before = [w.ran() for w in workers]
    remote = genrule_workspace(tmp_path / "remote" / "ws", tmp_path / "remote" / "cache", FANOUT)
    local = genrule_workspace(tmp_path / "local" / "ws", tmp_path / "local" / "cache", FANOUT)
    got = json.loads(remote.hb("build", "--json", "-j", "4", "--remote-executor", server.url, "//p:all").stdout)
    want = json.loads(local.hb("build", "--json", "//p:all").stdout)
    assert got["actions"] == want["actions"] == {"executed": 8, "cached": 0}
    assert got["targets"] == want["targets"]
    for i in range(6):
        rel = f"hb-out/p/f{i}/f{i}.sh"
        assert (remote.root / rel).read_bytes() == (local.root / rel).read_bytes()
        assert (remote.root / rel).stat().st_mode & 0o111  # the executable bit came back
    assert (remote.root / "hb-out/p/all/all.txt").read_bytes() == (local.root / "hb-out/p/all/all.txt").read_bytes()
    ran = [w.ran() - b for w, b in zip(workers, before)]
    assert sum(ran) == 8 and all(n > 0 for n in ran), ran  # both workers ran work
    # the result is in the local cache: nothing runs again
    again = json.loads(remote.hb("build", "--json", "--remote-executor", server.url, "//p:all").stdout)
    assert again["actions"] == {"executed": 0, "cached": 8}


def test_a_failing_action_reports_its_exit_code_and_stderr(tmp_path, engine):
    server, _workers, _base = engine
    ws = genrule_workspace(tmp_path / "ws", tmp_path / "cache",
                    'genrule(name = "bad", srcs = ["in.txt"], outs = ["o.txt"], '
                    'cmd = "echo remote-oops >&2; exit 3")\n')
    proc = ws.hb("build", "--remote-executor", server.url, "//p:bad", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "failed remotely" in proc.stderr and "exited with status 3" in proc.stderr
    assert "remote-oops" in proc.stderr


def test_local_only_kinds_and_an_unreachable_engine(tmp_path):
    from support import free_port

    ws = genrule_workspace(tmp_path / "ws", tmp_path / "cache",
                    'genrule(name = "g", srcs = ["in.txt"], outs = ["o.txt"], cmd = "cp $(SRCS) $(OUTS)")\n')
    proc = ws.hb("build", "--json", "--remote-timeout", "2", "--remote-executor",
                 f"grpc://127.0.0.1:{free_port()}/main", "//p:g")
    assert json.loads(proc.stdout)["actions"]["executed"] == 1
    assert proc.stderr.count("remote executor unavailable") == 1
    assert (ws.root / "hb-out/p/g/o.txt").read_text() == "hello remote\n"


def test_a_worker_killed_mid_action_is_replaced_and_the_build_succeeds(tmp_path, engine):
    server, workers, base = engine
    ws = genrule_workspace(tmp_path / "ws", tmp_path / "cache",
                    'genrule(name = "slow", srcs = ["in.txt"], outs = ["o.txt"], '
                    'cmd = "sleep 3; cp $(SRCS) $(OUTS)")\n')
    import subprocess
    import sys

    leased = [w.log_path.read_text().count("leased") for w in workers]
    build = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "--json", "--remote-executor",
                              server.url, "//p:slow"], cwd=ws.root, env=ws.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        for w, n in zip(workers, leased):
            if w.log_path.read_text().count("leased") > n:
                victim = w
                break
        time.sleep(0.1)
    assert victim is not None, "no worker leased the action"
    time.sleep(0.5)
    victim.kill()
    out, err = build.communicate(timeout=180)
    assert build.returncode == 0, err
    assert json.loads(out)["actions"]["executed"] == 1
    assert (ws.root / "hb-out/p/slow/o.txt").read_text() == "hello remote\n"
    survivor = next(w for w in workers if w is not victim)
    assert "ran shell" in survivor.log_path.read_text()
    # a fresh worker takes the victim's place for the tests after this one
    workers[workers.index(victim)] = server.worker(base / "workers", victim.name + "-again")


def test_example_stage_and_layers_run_remotely_with_identical_outputs(tmp_path, engine):
    """The example's conda stage and OCI layer actions run on the workers (fetches stay local);
    the environment tree and the image's manifest are byte-identical to a local build's."""
    server, workers, _base = engine
    logs_before = [w.log_path.read_text() for w in workers]
    local = copy_example(tmp_path / "local" / "examples", tmp_path / "local" / "cache")
    remote = copy_example(tmp_path / "remote" / "examples", tmp_path / "remote" / "cache")
    labels = ("//env:nlp", "//env:nlp-env", "//data:merged")
    want = local.build_json(*labels)
    got = json.loads(remote.hb("build", "--json", "-j", "4", "--remote-executor", server.url, *labels,
                               timeout=900).stdout)
    assert got["targets"] == want["targets"]  # every output by digest: the environment tree, the layout, the csv
    for rel in ("hb-out/env/nlp/index.json", "hb-out/data/merged/merged.csv"):
        assert (remote.root / rel).read_bytes() == (local.root / rel).read_bytes()
    new_logs = [w.log_path.read_text()[len(b):] for w, b in zip(workers, logs_before)]
    new_lines = "".join(new_logs)
    assert "ran conda.stage " in new_lines and "ran oci.layers " in new_lines, new_lines
    assert "ran shell " in new_lines  # the example's genrules
    assert all(" ran " in log for log in new_logs), new_logs  # both workers ran work
    assert "ran conda.fetch " not in new_lines and "ran wheel.fetch " not in new_lines  # local-only
