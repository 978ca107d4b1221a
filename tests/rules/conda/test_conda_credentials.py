"""A private channel's credentials (in the channel URL the user writes) never reach what hb records or
prints: the lock files `hb lock` writes, action parameters (keys, caches), the staged environment's
conda-meta (the image), `hb aquery --json`, error messages. The fetch takes them from RATTLER_AUTH_FILE
or the netrc, by host (rules/conda/connections.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import env_workspace, free_port, stop, wait_for_http, Workspace

SECRETS = ("s3cretPW", "tk-SECRET-123")


@pytest.fixture
def private_channel(channel_dir, tmp_path):
    port = free_port()
    log = tmp_path / "requests.log"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parents[2] / "servers" / "private_channel.py"),
                             "--root", str(channel_dir), "--port", str(port), "--log", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_http(f"http://127.0.0.1:{port}/", proc)
    yield f"127.0.0.1:{port}"
    stop(proc)


def _files_holding_secrets(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and "repodata" not in path.parts:  # rattler's own cache
                data = path.read_bytes()
                found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    return found


@pytest.mark.parametrize("kind", ["token", "basic"])
def test_channel_credentials_stay_out_of_locks_keys_and_the_environment(tmp_path, private_channel, kind):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    ws = Workspace(root, tmp_path / "cache")
    channel = (f"http://{private_channel}/t/tk-SECRET-123/" if kind == "token"
               else f"http://alice:s3cretPW@{private_channel}/")
    env_workspace(ws, channel, ["hb-hello"])
    ws.hb("lock", "//env:lock")
    lock = (root / "env" / "conda-lock.yml").read_text()
    assert f"url: http://{private_channel}/linux-64/hb-hello-" in lock
    assert not any(s in lock + (root / "env" / "conda-linux-64.lock").read_text() for s in SECRETS)

    # no credentials given: the server refuses, the message says where credentials come from
    denied = ws.hb("build", "//env:env", check=False)
    assert denied.returncode != 0
    assert "HTTP 401" in denied.stderr and "RATTLER_AUTH_FILE" in denied.stderr, denied.stderr

    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"127.0.0.1": {"CondaToken": "tk-SECRET-123"}} if kind == "token" else
                               {"127.0.0.1": {"BasicHTTP": {"username": "alice", "password": "s3cretPW"}}}))
    env = {**ws.env(), "RATTLER_AUTH_FILE": str(auth)}
    built = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "//env:env"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    aquery = ws.hb("aquery", "--json", "//env:env").stdout
    for text in (denied.stderr, built.stderr, built.stdout, aquery):
        assert not any(s in text for s in SECRETS), text
    # conda-meta records (what the image carries), hb-out's records, the cache's entries and blobs
    assert _files_holding_secrets(root / "hb-out", ws.cache) == []


def test_netrc_gives_basic_auth_to_its_host_only(tmp_path, monkeypatch):
    from rules.conda import connections

    netrc = tmp_path / "netrc"
    netrc.write_text("machine mirror.example login alice password s3cretPW\ndefault login bob password other\n")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("RATTLER_AUTH_FILE", raising=False)
    connections._netrc_hosts.cache_clear()
    connections._auth_file.cache_clear()
    try:
        from urllib.parse import urlsplit

        headers, prefix = connections.authenticate(urlsplit("https://mirror.example/c/x.conda"))
        assert headers["Authorization"].startswith("Basic ") and prefix == ""
        assert connections.authenticate(urlsplit("http://mirror.example/c/x.conda")) == ({}, "")  # never in clear
        assert connections.authenticate(urlsplit("https://evil.example/c/x.conda")) == ({}, "")  # no `default`
    finally:
        connections._netrc_hosts.cache_clear()
