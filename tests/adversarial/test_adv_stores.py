"""Attacks through the caches (issue 8, items 4, 5, 6, 10, 12), run against the real `hb` command:
hostile tree blobs and malformed action-cache entries planted directly in the local cache and through
an unsigned HTTP cache (nginx); cache directories that are not hb's; leftovers of a build killed with
kill -9; a frozen remote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from payloads_stores import (
    CONTENT,
    MALFORMED_NAMES,
    SCHEMA_VALID,
    deep_chain,
    hostile_trees,
    malformed_results,
)
from support import NginxCache, Workspace

from hermetic_build.digest import digest_bytes

pytestmark = pytest.mark.slow

DIRRULE = '''
from hermetic_build.api import DefaultInfo, attr, rule


def _impl(ctx):
    out = ctx.declare_directory("d")
    ctx.actions.run_shell(cmd=ctx.attr.cmd.replace("$(OUT)", out.path), inputs=[], outputs=[out],
                          mnemonic="Dir", description=f"Dir {ctx.label}")
    return [DefaultInfo(files=(out,))]


dirgen = rule("dirgen", _impl, attrs={"cmd": attr.string(mandatory=True)})
'''

BUILD = """\
dirgen(name = "t", cmd = "mkdir -p $(OUT)/sub && echo top > $(OUT)/top.txt && echo hi > $(OUT)/sub/f.txt")
genrule(name = "g", srcs = ["in.txt"], outs = ["x.txt"], cmd = "sleep $(cat $(SRCS)); echo built > $(OUTS)")
"""


class Ws(Workspace):
    """A workspace with a rule module of its own (a directory output) on PYTHONPATH."""

    def env(self) -> dict:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.root), env.get("PYTHONPATH")) if p)
        return env

    def build(self, *args, check=True):
        proc = self.hb("build", "--json", *args, check=check, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def last_build(self) -> dict:
        return json.loads(self.hb("cache", "stats", "--json").stdout)["last_build"]


def _ws(root: Path, cache: Path) -> Ws:
    root.mkdir(parents=True)
    (root / "hermetic.toml").write_text('rule_modules = ["rules", "hbtest_dirrule"]\n')
    ws = Ws(root, cache)
    ws.write("hbtest_dirrule.py", DIRRULE)
    ws.write("p/BUILD.hermetic", BUILD)
    ws.write("p/in.txt", "0\n")
    ws.hb("trust")  # a rule module of its own: imported into hb only once trusted
    return ws


def _ac_entry(cache: Path, kind: str) -> tuple[str, dict]:
    """(key, result) of the one action-cache entry whose output is of this kind."""
    found = []
    for path in (cache / "ac").glob("*/*"):
        result = json.loads(path.read_bytes())
        if result["outputs"] and result["outputs"][0]["kind"] == kind and result["outputs"][0]["path"].startswith("hb-out/p/"):
            found.append((path.name, result))
    assert len(found) == 1, found
    return found[0]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.chmod(path, 0o644)
    path.write_bytes(data)


def _plant_local(cache: Path, blobs: list[bytes]) -> None:
    for blob in blobs:
        h = digest_bytes(blob).hash
        _write(cache / "cas" / h[:2] / h, blob)


def _plant_remote(server: NginxCache, blobs: list[bytes]) -> None:
    for blob in blobs:
        _write(server.root / "cas" / digest_bytes(blob).hash, blob)


def _snapshot(tmp_path: Path) -> set[str]:
    """Every path under tmp_path outside the caches, hb-out and nginx (what a tree could escape into)."""
    def kept(rel: Path) -> bool:
        return not rel.parts[0].startswith(("cache", "nginx")) and "hb-out" not in rel.parts

    return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if kept(p.relative_to(tmp_path))}


# ----- item 4: hostile trees ------------------------------------------------------------------------
TREES = [*sorted(hostile_trees("/v")), "deep-100000"]


def _tree_blobs(name: str, victim: Path) -> list[bytes]:
    if name.startswith("deep-") and name[5:].isdigit():
        return [CONTENT, *deep_chain(int(name.split("-")[1]))]
    return [CONTENT, *hostile_trees(str(victim))[name]]


@pytest.mark.parametrize("name", TREES)
def test_hostile_tree_in_the_local_cache_is_rebuilt_not_written(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.build("//p:t")
    key, result = _ac_entry(ws.cache, "dir")
    blobs = _tree_blobs(name, victim)
    _plant_local(ws.cache, blobs)
    result["outputs"][0]["digest"] = str(digest_bytes(blobs[-1]))
    _write(ws.cache / "ac" / key[:2] / key, json.dumps(result).encode())
    before = _snapshot(tmp_path)
    proc = ws.build("//p:t")
    assert json.loads(proc.stdout)["actions"] == {"executed": 1, "cached": 0}
    assert "could not be read" in proc.stderr
    assert list(victim.iterdir()) == [] and _snapshot(tmp_path) == before
    assert (ws.root / "hb-out/p/t/d/top.txt").read_text() == "top\n"
    assert sorted(p.name for p in (ws.root / "hb-out/p/t").iterdir()) == ["d"]
    assert ws.last_build()["corrupt_blobs"] >= 1
    bad = [digest_bytes(b).hash for b in blobs[1:]]
    assert not any((ws.cache / "cas" / h[:2] / h).exists() for h in bad if h in {digest_bytes(blobs[-1]).hash})


def test_setuid_bits_from_a_cache_are_not_applied(tmp_path):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.build("//p:t")
    key, result = _ac_entry(ws.cache, "dir")
    f = digest_bytes(CONTENT)
    root = json.dumps({"v": 1, "entries": [{"name": "su", "kind": "file", "digest": str(f), "mode": 0o6755}]},
                      separators=(",", ":")).encode()
    _plant_local(ws.cache, [CONTENT, root])
    result["outputs"][0]["digest"] = str(digest_bytes(root))
    _write(ws.cache / "ac" / key[:2] / key, json.dumps(result).encode())
    ws.build("//p:t")
    assert os.stat(ws.root / "hb-out/p/t/d/su").st_mode & 0o7777 == 0o755


# deep-5000: each level is one request to the remote (4096 before the depth limit stops it)
REMOTE_TREES = ["dotdot-name", "link-then-dir-through-it", "duplicate-names", "deep-5000", "infinity-mode"]


def _remote_result_names_tree(tmp_path: Path, server: NginxCache, digest) -> None:
    """Workspace a uploads //p:t's result to the remote, whose entry is then edited to name `digest`
    as the tree of its directory output."""
    a = _ws(tmp_path / "a", tmp_path / "cache-a")
    a.build("--remote-cache", server.url, "--remote-upload", "//p:t")
    key, _ = _ac_entry(a.cache, "dir")
    envelope = json.loads((server.root / "ac" / key).read_bytes())
    envelope["result"]["outputs"][0]["digest"] = str(digest)
    _write(server.root / "ac" / key, json.dumps(envelope).encode())


@pytest.mark.parametrize("name", REMOTE_TREES)
def test_hostile_tree_through_an_unsigned_remote_is_rebuilt_not_written(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    server = NginxCache(tmp_path / "nginx")
    try:
        blobs = _tree_blobs(name, victim)
        _plant_remote(server, blobs)
        _remote_result_names_tree(tmp_path, server, digest_bytes(blobs[-1]))
        b = _ws(tmp_path / "b", tmp_path / "cache-b")
        before = _snapshot(tmp_path)
        proc = b.build("--remote-cache", server.url, "//p:t")
    finally:
        server.stop()
    assert json.loads(proc.stdout)["actions"] == {"executed": 1, "cached": 0}
    assert list(victim.iterdir()) == [] and _snapshot(tmp_path) == before
    assert (b.root / "hb-out/p/t/d/top.txt").read_text() == "top\n"
    unsigned = [line for line in proc.stderr.splitlines() if "remote action results are not signed" in line]
    assert len(unsigned) == 1 and f"anyone who can write to {server.url} can change your outputs" in unsigned[0]
    assert "HB_REMOTE_HMAC_KEY" in unsigned[0]
    assert "(HB_REMOTE_HMAC_KEY is set)" not in proc.stderr


def test_a_directory_of_any_size_named_by_a_remote_result_is_refused_unread(tmp_path):
    """An action result may name a "directory" blob of any size: hb read it whole into memory before
    the tree's size limit refused it (1.5 GiB: 3.1 GB of hb's memory and 13 s, tenth session; a
    bigger one ends hb). Now the size its digest claims is checked first: nothing is downloaded, the
    action is rebuilt. The blob is real (nginx serves it), so the old code does read it."""
    from hermetic_build.digest import digest_file

    server = NginxCache(tmp_path / "nginx")
    try:
        big = tmp_path / "big.bin"
        with open(big, "wb") as f:
            f.truncate(384 << 20)  # sparse: no disk
        claimed = digest_file(big)
        os.rename(big, server.root / "cas" / claimed.hash)
        _remote_result_names_tree(tmp_path, server, claimed)
        b = _ws(tmp_path / "b", tmp_path / "cache-b")
        before = len(server.requests())
        proc = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "--json", "--remote-cache",
                                 server.url, "//p:t"], cwd=b.root, env=b.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate(timeout=300)
        requests = server.requests()[before:]
    finally:
        server.stop()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["actions"] == {"executed": 1, "cached": 0}
    assert not [r for r in requests if claimed.hash in r and '"GET ' in r], requests  # never read (a HEAD is)
    assert (b.root / "hb-out/p/t/d/top.txt").read_text() == "top\n"


# ----- item 6: malformed action-cache entries -------------------------------------------------------
@pytest.mark.parametrize("name", MALFORMED_NAMES)
def test_malformed_local_entry_is_removed_reported_and_rebuilt(tmp_path, name):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.build("//p:g")
    key, result = _ac_entry(ws.cache, "file")
    _write(ws.cache / "ac" / key[:2] / key, malformed_results(result)[name])
    proc = ws.build("//p:g")
    assert json.loads(proc.stdout)["actions"] == {"executed": 1, "cached": 0}
    warnings = [line for line in proc.stderr.splitlines() if "malformed action-cache entries" in line]
    assert len(warnings) == 1, proc.stderr
    assert ws.last_build()["rejected_entries"] == 1
    assert "removed: 1 malformed action-cache entries" in ws.hb("cache", "stats").stdout
    assert _ac_entry(ws.cache, "file")[1]["outputs"] == result["outputs"]  # rewritten by the rebuild
    assert json.loads(ws.build("//p:g").stdout)["actions"] == {"executed": 0, "cached": 1}


REMOTE_MALFORMED = ["empty-outputs", "infinity-exit-code", "deep-list", "huge-int", "not-a-dict", "unknown-kind",
                    "output-dotdot", "too-large"]


@pytest.mark.parametrize("name", REMOTE_MALFORMED)
def test_malformed_remote_entry_is_a_miss_and_reported(tmp_path, name):
    server = NginxCache(tmp_path / "nginx")
    try:
        a = _ws(tmp_path / "a", tmp_path / "cache-a")
        a.build("--remote-cache", server.url, "--remote-upload", "//p:g")
        key, result = _ac_entry(a.cache, "file")
        payload = malformed_results(result)[name]
        _write(server.root / "ac" / key, b'{"key":"' + key.encode() + b'","result":' + payload + b"}")
        b = _ws(tmp_path / "b", tmp_path / "cache-b")
        proc = b.build("--remote-cache", server.url, "//p:g")
        again = b.build("--remote-cache", server.url, "//p:g")
    finally:
        server.stop()
    assert json.loads(proc.stdout)["actions"] == {"executed": 1, "cached": 0}
    assert json.loads(again.stdout)["actions"] == {"executed": 0, "cached": 1}
    warnings = [line for line in proc.stderr.splitlines() if "malformed" in line]
    assert len(warnings) == 1, proc.stderr
    assert (b.root / "hb-out/p/g/x.txt").read_text() == "built\n"
    if name in SCHEMA_VALID:  # accepted by the schema, refused against the action: counted locally
        assert "cache: removed 1 malformed" in warnings[0]
    else:
        assert "remote cache: ignored 1 malformed" in warnings[0]


# ----- item 5: the cache directory -------------------------------------------------------------------
def _hb(ws: Ws, cache, *args, env_extra=None, argv_prefix=()):
    env = ws.env()
    env["HB_CACHE_DIR"] = str(cache)
    env.update(env_extra or {})
    proc = subprocess.run([*argv_prefix, sys.executable, "-m", "hermetic_build.cli", *args], cwd=ws.root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_a_directory_that_is_not_an_hb_cache_is_never_used_or_deleted(tmp_path):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    mine = tmp_path / "mine"
    (mine / "tmp").mkdir(parents=True)
    (mine / "thesis.tex").write_text("precious")
    (mine / "tmp" / "draft").write_text("precious")
    for args in (("build", "//p:g"), ("clean", "--expunge"), ("cache", "gc", "--max-size", "0")):
        proc = _hb(ws, mine, *args)
        assert proc.returncode == 2, proc.stderr
        assert f"HB_CACHE_DIR={mine} is not an hb cache (no hb-cache.json); point it at an empty or new directory" \
            in proc.stderr
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == ["thesis.tex", "tmp", "tmp/draft"]


def test_expunge_and_gc_delete_only_what_hb_made(tmp_path):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.build("//p:g")
    (ws.cache / "notes.txt").write_text("mine")
    (ws.cache / "tmp" / "keep-me").write_text("mine")
    assert _hb(ws, ws.cache, "cache", "gc", "--max-size", "0").returncode == 0
    assert (ws.cache / "tmp" / "keep-me").exists()
    proc = _hb(ws, ws.cache, "clean", "--expunge")
    assert proc.returncode == 0
    assert "that hb did not make: notes.txt" in proc.stderr
    assert sorted(p.name for p in ws.cache.iterdir()) == ["notes.txt"]


def test_a_cache_from_before_the_marker_is_adopted(tmp_path):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.build("//p:g")
    (ws.cache / "hb-cache.json").unlink()
    (ws.cache / "CACHEDIR.TAG").unlink()
    assert json.loads(ws.build("//p:g").stdout)["actions"] == {"executed": 0, "cached": 1}
    assert json.loads((ws.cache / "hb-cache.json").read_text()) == {"layout": 1}


@pytest.mark.parametrize("kind", ["proc", "file", "read-only-new", "read-only-existing", "workspace", "home"])
def test_unusable_cache_dir_is_one_clean_error(tmp_path, kind):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    cache, prefix, env = tmp_path / "c", (), {}
    if kind == "proc":
        cache = Path("/proc/x")
    elif kind == "file":
        cache.write_text("a file")
    elif kind.startswith("read-only"):
        ro = tmp_path / "ro"
        ro.mkdir()
        if kind == "read-only-existing":
            cache = ro
            ws.hb("build", "//p:g", check=True)  # a cache made elsewhere, then copied in read-only
            subprocess.run(["cp", "-a", f"{ws.cache}/.", str(ro)], check=True)
            mount = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}"
        else:
            cache = ro / "cache"
            mount = f"mount -t tmpfs -o ro tmpfs {ro}"
        prefix = ("unshare", "-rm", "sh", "-c", f'{mount} && exec "$@"', "sh")
    elif kind == "workspace":
        cache = ws.root
    elif kind == "home":
        cache = tmp_path / "home"
        cache.mkdir()
        env = {"HOME": str(cache)}
    proc = _hb(ws, cache, "build", "//p:g", env_extra=env, argv_prefix=prefix)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("usage error:")]
    assert len(lines) == 1 and f"HB_CACHE_DIR={cache}" in lines[0], proc.stderr


# ----- item 10: leftovers of a build killed with kill -9 -------------------------------------------
def test_leftovers_of_a_killed_build_are_removed_by_the_next_one(tmp_path):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.write("p/in.txt", "60\n")
    proc = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "//p:g"], cwd=ws.root,
                            env=ws.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((ws.cache / "tmp").glob(f"sb-{proc.pid}-*")):
        assert time.monotonic() < deadline and proc.poll() is None, "the build never started its action"
        time.sleep(0.05)
    time.sleep(0.5)  # the action is running (sleeping)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dead = proc.pid
    # a publish cut short leaves a partial file beside its output (as fetch_file names it)
    partial = ws.root / "hb-out/p/g" / f".x.txt.hb-tmp-{dead}-0a1b2c3d"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("par")
    old_style = ws.root / "hb-out/p/g" / f".x.txt.hb-tmp-{dead}"
    old_style.write_text("par")
    mine = ws.root / "hb-out/p/g" / ".x.txt.notes"
    mine.write_text("not hb's")
    assert list((ws.cache / "tmp").glob(f"sb-{dead}-*"))
    ws.write("p/in.txt", "0\n")
    ws.build("//p:g")
    assert not list((ws.cache / "tmp").glob(f"*-{dead}-*"))
    assert not list(ws.root.rglob(f"*hb-tmp-{dead}*"))
    assert mine.exists() and (ws.root / "hb-out/p/g/x.txt").read_text() == "built\n"


# ----- item 12: a frozen remote, and the hit counts --------------------------------------------------
def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=True).stdout
    return [int(p) for p in out.split()]


def test_a_frozen_remote_costs_one_timeout_then_the_build_goes_local(tmp_path):
    server = NginxCache(tmp_path / "nginx")
    pids = [server.proc.pid, *_children(server.proc.pid)]
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.write("p/BUILD.hermetic", BUILD + "".join(
        f'genrule(name = "g{i}", srcs = [":g"], outs = ["y{i}.txt"], cmd = "cat $(SRCS) > $(OUTS)")\n'
        for i in range(6)))
    local = _ws(tmp_path / "local", tmp_path / "cache-local")
    local.write("p/BUILD.hermetic", (ws.root / "p/BUILD.hermetic").read_text())
    started = time.monotonic()
    local.build("//p:all")
    baseline = time.monotonic() - started  # the same build with no remote
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = ws.build("--remote-cache", server.url, "--remote-upload", "--remote-timeout", "2", "//p:all")
        elapsed = time.monotonic() - started
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        server.stop()
    assert json.loads(proc.stdout)["actions"]["executed"] == 8
    assert [line for line in proc.stderr.splitlines() if line.startswith("warning: remote cache")] == [
        line for line in proc.stderr.splitlines() if "is unavailable" in line]
    assert proc.stderr.count("warning: remote cache") == 1
    print(f"frozen remote: {elapsed:.1f}s, no remote: {baseline:.1f}s")
    # one timeout (2 s), not one per retry or per request: well under two
    assert elapsed - baseline < 4, f"{elapsed:.1f}s with a 2s remote timeout ({baseline:.1f}s without a remote)"


def test_local_hits_are_never_negative(tmp_path):
    """A remote entry whose blobs are gone is fetched (a remote 'hit') but not used: the action runs."""
    server = NginxCache(tmp_path / "nginx")
    try:
        a = _ws(tmp_path / "a", tmp_path / "cache-a")
        a.build("--remote-cache", server.url, "--remote-upload", "//p:g")
        _, result = _ac_entry(a.cache, "file")
        (server.root / "cas" / result["outputs"][0]["digest"].split("/")[0]).unlink()
        b = _ws(tmp_path / "b", tmp_path / "cache-b")
        b.build("--remote-cache", server.url, "//p:g")
    finally:
        server.stop()
    last = b.last_build()
    assert last["executed"] == 1 and last["local_hits"] == 0 and last["remote_hits_used"] == 0
    assert "local hits: 0  remote hits: 0" in b.hb("cache", "stats").stdout
