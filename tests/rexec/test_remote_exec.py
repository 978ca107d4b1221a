"""Remote execution end to end: a real BuildGrid (Execution + Bots services, sql scheduler on a
throwaway PostgreSQL) and two `hb worker` processes; `hb build --remote-executor grpc://...`."""

import json
import os
import subprocess
import sys
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


# ----- outputs left on the engine (--remote-download=minimal) -------------------------------------------

CHAIN = """\
genrule(name = "a", srcs = ["in.txt"], outs = ["a.txt"], cmd = "yes hello | head -n 3000 | cat $(SRCS) - > $(OUTS)")
genrule(name = "b", srcs = [":a"], outs = ["b.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
genrule(name = "c", srcs = [":b"], outs = ["c.txt"], cmd = "sort -u $(SRCS) > $(OUTS); wc -c < $(SRCS) >> $(OUTS)")
local_copy(name = "d", srcs = [":b"], out = "d.txt")
"""

LOCAL_COPY_RULE = '''
import shutil

from hermetic_build.action import register_action_kind
from hermetic_build.api import DefaultInfo, attr, rule


def _copy(execution):
    action = execution.action
    shutil.copyfile(execution.execroot / action.inputs[0].path, execution.execroot / action.outputs[0].path)


register_action_kind("test.local_copy", "1", _copy, local_only=True)


def _impl(ctx):
    srcs = [f for files in ctx.files_by_label("srcs").values() for f in files]
    out = ctx.declare_file(ctx.attr.out)
    ctx.actions.declare(mnemonic="LocalCopy", kind="test.local_copy", inputs=srcs, outputs=[out])
    return [DefaultInfo(files=(out,))]


local_copy = rule("local_copy", _impl, attrs={"srcs": attr.label_list(allow_files=True),
                                              "out": attr.string(mandatory=True)})
'''


class _RulesWorkspace:
    """A genrule workspace whose hb also loads a local-only rule (test.local_copy) from the workspace."""

    def __init__(self, root, cache, build: str):
        from support import REPO

        self.ws = genrule_workspace(root, cache, build)
        self.ws.write("hbtestrules/local_copy_rules.py", LOCAL_COPY_RULE)
        self.ws.write("hermetic.toml", 'rule_modules = ["rules", "local_copy_rules"]\n')
        self.root, self.cache = self.ws.root, self.ws.cache
        self.pythonpath = os.pathsep.join([str(root / "hbtestrules"), str(REPO)])
        self.hb("trust")  # a rule module of its own: imported into hb only once trusted

    def hb(self, *args, check: bool = True):
        env = {**self.ws.env(), "PYTHONPATH": self.pythonpath}
        proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"hb {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def build(self, *args) -> dict:
        return json.loads(self.hb("build", "--json", *args).stdout)

    def has_local_blob(self, digest: str) -> bool:
        from hermetic_build.digest import Digest
        from hermetic_build.store.local import LocalStore

        hash_, _, size = digest.partition("/")
        return LocalStore(self.cache).has_blob(Digest(hash_, int(size)))


def test_intermediate_outputs_stay_on_the_engine_until_a_local_action_reads_them(tmp_path, engine):
    server, workers, _base = engine
    local = _RulesWorkspace(tmp_path / "local" / "ws", tmp_path / "local" / "cache", CHAIN)
    want = local.build("//p:a", "//p:b", "//p:c", "//p:d")["targets"]
    digest = {name: want[f"//p:{name}"][0]["digest"] for name in "abcd"}

    remote = _RulesWorkspace(tmp_path / "remote" / "ws", tmp_path / "remote" / "cache", CHAIN)
    before = sum(w.ran() for w in workers)
    got = remote.build("--remote-executor", server.url, "//p:c")
    assert got["actions"] == {"executed": 3, "cached": 0}
    assert sum(w.ran() for w in workers) - before == 3  # all three ran on the workers
    assert got["targets"]["//p:c"] == want["//p:c"]
    assert (remote.root / "hb-out/p/c/c.txt").read_bytes() == (local.root / "hb-out/p/c/c.txt").read_bytes()
    # the requested output was downloaded; the intermediate ones never were
    assert remote.has_local_blob(digest["c"])
    assert not remote.has_local_blob(digest["a"]) and not remote.has_local_blob(digest["b"])

    again = remote.build("--remote-executor", server.url, "//p:c")
    assert again["actions"]["executed"] == 0
    assert not remote.has_local_blob(digest["a"]) and not remote.has_local_blob(digest["b"])

    # a local-only action reads b: b (only) is downloaded, verified, and the copy matches a local build
    consumer = remote.build("--remote-executor", server.url, "//p:d")
    assert consumer["actions"] == {"executed": 1, "cached": 2}
    assert remote.has_local_blob(digest["b"]) and not remote.has_local_blob(digest["a"])
    assert (remote.root / "hb-out/p/d/d.txt").read_bytes() == (local.root / "hb-out/p/d/d.txt").read_bytes()

    # --remote-download=all brings every output back, as before
    full = _RulesWorkspace(tmp_path / "full" / "ws", tmp_path / "full" / "cache", CHAIN)
    full.build("--remote-executor", server.url, "--remote-download", "all", "//p:c")
    assert all(full.has_local_blob(digest[name]) for name in "abc")


def test_remote_cache_and_execution_on_one_server_with_signed_results(tmp_path, engine, monkeypatch):
    """Workspace A builds with --remote-cache and --remote-executor on the same BuildGrid, results signed
    with HB_REMOTE_HMAC_KEY; a fresh workspace B (empty local cache, same flags and key) runs nothing
    and gets identical outputs, without downloading the intermediate ones. A workspace with another key
    refuses A's results, and the engine's own (unsigned) action cache is not consulted either: the
    actions run again on the workers."""
    server, workers, _base = engine
    flags = ("--remote-cache", server.url, "--remote-upload", "--remote-executor", server.url)
    local = _RulesWorkspace(tmp_path / "local" / "ws", tmp_path / "local" / "cache", CHAIN)
    want = local.build("//p:a", "//p:c")["targets"]
    monkeypatch.setenv("HB_REMOTE_HMAC_KEY", "key-one")
    a = _RulesWorkspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache", CHAIN)
    built = a.build(*flags, "//p:c")
    assert built["actions"] == {"executed": 3, "cached": 0}
    b = _RulesWorkspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache", CHAIN)
    before = sum(w.ran() for w in workers)
    got = b.build(*flags, "//p:c")
    assert got["actions"] == {"executed": 0, "cached": 3}
    assert sum(w.ran() for w in workers) == before
    assert got["targets"] == built["targets"] == {"//p:c": want["//p:c"]}
    assert (b.root / "hb-out/p/c/c.txt").read_bytes() == (local.root / "hb-out/p/c/c.txt").read_bytes()
    assert not b.has_local_blob(want["//p:a"][0]["digest"])

    monkeypatch.setenv("HB_REMOTE_HMAC_KEY", "key-two")
    other = _RulesWorkspace(tmp_path / "o" / "ws", tmp_path / "o" / "cache", CHAIN)
    proc = other.hb("build", "--json", *flags, "//p:c")
    assert json.loads(proc.stdout)["actions"] == {"executed": 3, "cached": 0}
    assert sum(w.ran() for w in workers) == before + 3  # run again, not answered from the engine's cache
    assert (other.root / "hb-out/p/c/c.txt").read_bytes() == (local.root / "hb-out/p/c/c.txt").read_bytes()
