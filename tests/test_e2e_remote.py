"""Remote cache end to end: two workspaces on one machine standing in for two machines."""

import json
import subprocess
import sys
import threading

import pytest

from support import NginxCache, Workspace, free_port

BUILD = """\
genrule(name = "one", srcs = ["in.txt"], outs = ["one.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
genrule(name = "two", srcs = [":one"], outs = ["two.txt"], cmd = "rev < $(SRCS) > $(OUTS)")
genrule(name = "tree", srcs = [":two"], outs = ["t.txt"], cmd = "cat $(SRCS) $(SRCS) > $(OUTS)")
"""


def _workspace(root, cache) -> Workspace:
    root.mkdir(parents=True)
    (root / "hermetic.toml").write_text("")
    ws = Workspace(root, cache)
    ws.write("p/BUILD.hermetic", BUILD)
    ws.write("p/in.txt", "hello remote\n")
    return ws


@pytest.fixture
def cache_server(tmp_path):
    server = NginxCache(tmp_path / "nginx")
    yield server
    server.stop()


def _build(ws, url, *extra, env=None, check=True):
    args = ["build", "--json", "--remote-cache", url, *extra, "//p:tree"]
    if env is None:
        return ws.hb(*args, check=check)
    e = ws.env()
    e.update(env)
    return subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=ws.root, env=e,
                          capture_output=True, text=True)


def test_second_machine_downloads_instead_of_building(tmp_path, cache_server):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    first = json.loads(_build(a, cache_server.url, "--remote-upload").stdout)
    assert first["actions"] == {"executed": 3, "cached": 0}
    b = _workspace(tmp_path / "b" / "elsewhere", tmp_path / "b" / "cache")
    second = json.loads(_build(b, cache_server.url).stdout)
    assert second["actions"] == {"executed": 0, "cached": 3}
    assert second["targets"] == first["targets"]
    assert (b.root / "hb-out/p/tree/t.txt").read_text() == (a.root / "hb-out/p/tree/t.txt").read_text()
    stats = json.loads(b.hb("cache", "stats", "--json").stdout)["last_build"]
    assert stats["remote"]["ac_hits"] == 3 and stats["remote"]["bytes_down"] > 0 and stats["local_hits"] == 0
    text = b.hb("cache", "stats").stdout
    assert "remote hits: 3" in text
    # read-only by default: b uploaded nothing
    assert stats["remote"]["blobs_up"] == 0


def test_altered_blob_is_rejected_and_rebuilt_locally(tmp_path, cache_server):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    first = json.loads(_build(a, cache_server.url, "--remote-upload").stdout)
    digest = first["targets"]["//p:tree"][0]["digest"].split("/")[0]
    (cache_server.root / "cas" / digest).write_bytes(b"tampered output!!!!!!!!!!!!!!!!!!!!!"[: int(first["targets"]["//p:tree"][0]["digest"].split("/")[1])])
    b = _workspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache")
    proc = _build(b, cache_server.url)
    second = json.loads(proc.stdout)
    assert second["actions"]["executed"] >= 1
    assert (b.root / "hb-out/p/tree/t.txt").read_text() == (a.root / "hb-out/p/tree/t.txt").read_text()
    assert "rejected 1 blobs whose content did not match" in proc.stderr


def test_unsigned_entries_are_ignored_with_a_key(tmp_path, cache_server):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    _build(a, cache_server.url, "--remote-upload")  # no HB_REMOTE_HMAC_KEY: unsigned entries
    b = _workspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache")
    proc = _build(b, cache_server.url, env={"HB_REMOTE_HMAC_KEY": "team-secret"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["actions"] == {"executed": 3, "cached": 0}
    assert "ignored 3 action-cache entries that were unsigned or badly signed" in proc.stderr
    # signed by a writer with the key: accepted by another reader with the key
    c = _workspace(tmp_path / "c" / "ws", tmp_path / "c" / "cache")
    _build(c, cache_server.url, "--remote-upload", env={"HB_REMOTE_HMAC_KEY": "team-secret"})
    d = _workspace(tmp_path / "d" / "ws", tmp_path / "d" / "cache")
    proc = _build(d, cache_server.url, env={"HB_REMOTE_HMAC_KEY": "team-secret"})
    assert json.loads(proc.stdout)["actions"] == {"executed": 0, "cached": 3}


def test_unreachable_remote_degrades_to_local_build(tmp_path):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    url = f"http://127.0.0.1:{free_port()}"
    proc = _build(a, url, "--remote-upload", "--remote-timeout", "2")
    assert json.loads(proc.stdout)["actions"]["executed"] == 3
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: remote cache")]
    assert len(warnings) == 1 and "building locally" in warnings[0]
    proc = _build(a, url, "--remote-required", "--remote-timeout", "2", check=False)
    # everything is in the local cache, but a required remote that fails is an error
    assert proc.returncode == 7 and "is unavailable" in proc.stderr


def test_server_stopped_mid_build(tmp_path):
    server = NginxCache(tmp_path / "nginx")
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    a.write("p/BUILD.hermetic", BUILD.replace('"tr a-z A-Z', '"sleep 1.5; tr a-z A-Z'))
    stopper = threading.Timer(0.8, server.stop)
    stopper.start()
    try:
        proc = _build(a, server.url, "--remote-upload", "--remote-timeout", "2")
    finally:
        stopper.join()
        server.stop()
    assert json.loads(proc.stdout)["actions"]["executed"] == 3
    assert (a.root / "hb-out/p/tree/t.txt").exists()
    assert proc.stderr.count("warning: remote cache") == 1


@pytest.mark.parametrize("mode, status", [("auth", "401"), ("ro", "403")])
def test_auth_failures_are_one_clear_line_when_required(tmp_path, mode, status):
    server = NginxCache(tmp_path / "nginx", mode=mode)
    try:
        a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
        proc = _build(a, server.url, "--remote-upload", "--remote-required", check=False,
                      env={"HB_REMOTE_USER": "hb", "HB_REMOTE_PASSWORD": "wrong"})
        assert proc.returncode == 7
        errors = [line for line in proc.stderr.splitlines() if line.startswith("remote cache error:")]
        assert len(errors) == 1 and status in errors[0] and "refused the credentials" in errors[0]
        proc = _build(a, server.url, "--remote-upload", env={"HB_REMOTE_USER": "hb", "HB_REMOTE_PASSWORD": "wrong"})
        assert proc.returncode == 0 and "warning: remote cache" in proc.stderr
    finally:
        server.stop()


