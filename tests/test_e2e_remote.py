"""Remote cache end to end: two workspaces on one machine standing in for two machines."""

import json
import shutil
import subprocess
import sys
import threading

import pytest

from support import NginxCache, Registry, Workspace, free_port, genrule_workspace

BUILD = """\
genrule(name = "one", srcs = ["in.txt"], outs = ["one.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
genrule(name = "two", srcs = [":one"], outs = ["two.txt"], cmd = "rev < $(SRCS) > $(OUTS)")
genrule(name = "tree", srcs = [":two"], outs = ["t.txt"], cmd = "cat $(SRCS) $(SRCS) > $(OUTS)")
"""


def _workspace(root, cache) -> Workspace:
    return genrule_workspace(root, cache, BUILD)


class _Backend:
    """One remote cache under test: its URL and a way to alter a stored blob."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        if kind == "http":
            self.server = NginxCache(tmp_path / "nginx")
            self.url = self.server.url
        else:
            self.server = Registry(tmp_path / "registry")
            self.url = f"oci://{self.server.host}/hb/cache"

    def alter_blob(self, blake3_hex: str, size: int) -> None:
        forged = b"tampered output!".ljust(size, b"!")[:size]
        if self.kind == "http":
            (self.server.root / "cas" / blake3_hex).write_bytes(forged)
            return
        # find the registry blob whose manifest annotation names this BLAKE3 digest
        import json as _json

        for data in (self.server.storage / "docker/registry/v2/blobs/sha256").glob("*/*/data"):
            try:
                manifest = _json.loads(data.read_bytes())
            except ValueError:
                continue
            for layer in manifest.get("layers", []) if isinstance(manifest, dict) else []:
                if layer.get("annotations", {}).get("dev.hermetic-build.blake3") == blake3_hex:
                    self.server.blob_path(layer["digest"].split(":")[1]).write_bytes(forged)
                    return
        raise AssertionError(f"no registry blob for {blake3_hex}")

    def stop(self):
        self.server.stop()


@pytest.fixture(params=["http", "oci"])
def backend(request, tmp_path):
    b = _Backend(request.param, tmp_path)
    yield b
    b.stop()


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


def test_second_machine_downloads_instead_of_building(tmp_path, backend):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    first = json.loads(_build(a, backend.url, "--remote-upload").stdout)
    assert first["actions"] == {"executed": 3, "cached": 0}
    b = _workspace(tmp_path / "b" / "elsewhere", tmp_path / "b" / "cache")
    second = json.loads(_build(b, backend.url).stdout)
    assert second["actions"] == {"executed": 0, "cached": 3}
    assert second["targets"] == first["targets"]
    assert (b.root / "hb-out/p/tree/t.txt").read_text() == (a.root / "hb-out/p/tree/t.txt").read_text()
    stats = json.loads(b.hb("cache", "stats", "--json").stdout)["last_build"]
    assert stats["remote"]["ac_hits"] == 3 and stats["remote"]["bytes_down"] > 0 and stats["local_hits"] == 0
    text = b.hb("cache", "stats").stdout
    assert "remote hits: 3" in text
    # read-only by default: b uploaded nothing
    assert stats["remote"]["blobs_up"] == 0


def test_altered_blob_is_rejected_and_rebuilt_locally(tmp_path, backend):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    first = json.loads(_build(a, backend.url, "--remote-upload").stdout)
    digest, size = first["targets"]["//p:tree"][0]["digest"].split("/")
    backend.alter_blob(digest, int(size))
    b = _workspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache")
    proc = _build(b, backend.url)
    second = json.loads(proc.stdout)
    assert second["actions"]["executed"] >= 1
    assert (b.root / "hb-out/p/tree/t.txt").read_text() == (a.root / "hb-out/p/tree/t.txt").read_text()
    assert "rejected 1 blobs whose content did not match" in proc.stderr


def test_unsigned_entries_are_ignored_with_a_key(tmp_path, backend):
    cache_server = backend
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




def test_registry_garbage_collection_keeps_everything_in_use(tmp_path):
    """Every blob hb stores in a registry is reachable from an action-cache manifest, so the
    registry's own garbage collector deletes nothing a later build needs."""
    registry = Registry(tmp_path / "registry")
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    first = json.loads(_build(a, f"oci://{registry.host}/hb/cache", "--remote-upload").stdout)
    registry.stop()
    gc = subprocess.run(["docker-registry", "garbage-collect", str(tmp_path / "registry" / "config.yml")],
                        capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert "blob eligible for deletion" not in gc.stdout, gc.stdout
    registry = Registry.__new__(Registry)
    Registry.__init__(registry, tmp_path / "registry2")
    shutil.rmtree(registry.storage)
    shutil.copytree(tmp_path / "registry" / "storage", registry.storage)
    try:
        b = _workspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache")
        second = json.loads(_build(b, f"oci://{registry.host}/hb/cache").stdout)
        assert second["actions"] == {"executed": 0, "cached": 3}
        assert second["targets"] == first["targets"]
    finally:
        registry.stop()


def test_explain_consults_the_remote_the_build_used(tmp_path, cache_server):
    """After a build that took its results from a remote cache, `hb explain` with the same remote
    says nothing would run; without it, it says where the results are and how to check them."""
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    _build(a, cache_server.url, "--remote-upload")
    b = _workspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache")
    assert json.loads(_build(b, cache_server.url).stdout)["actions"] == {"executed": 0, "cached": 3}
    same = b.hb("explain", "--remote-cache", cache_server.url, "//p:tree")
    assert same.stdout.strip() == "everything is up to date: no action would run", same.stdout
    assert json.loads(_build(b, cache_server.url).stdout)["actions"]["executed"] == 0
    alone = b.hb("explain", "//p:tree").stdout
    assert f"`hb explain --remote-cache {cache_server.url} ...`" in alone, alone
