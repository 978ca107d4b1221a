"""`hb lock` against a hostile conda channel on 127.0.0.1 (a real server, the real `hb`): what a
channel's repodata says is outside data. A record `hb build` would refuse, a package URL of a scheme
the channel may not name, or control characters in its fields are an error of `hb lock` naming the
channel, with nothing written; never a traceback, a lock `hb build` refuses, or an escape sequence on
the terminal. A server that never ends a repodata file ends in an error naming its URL, within
the request timeout and the file size bound ([conda] repodata_timeout_s, max_repodata_mb)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import VPKGS, FaultyServer, env_workspace, free_port, stop, wait_for_http


def _record(name: str, **fields) -> dict:
    record = {"name": name, "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "linux-64",
              "sha256": hashlib.sha256(name.encode()).hexdigest(), "md5": hashlib.md5(name.encode()).hexdigest(),
              "size": 10}
    record.update(fields)
    return {k: v for k, v in record.items() if v is not None}


def _channel(root, records: dict, base_url: str | None = None):
    for subdir, packages in (("linux-64", records), ("noarch", {})):
        info = {"subdir": subdir, **({"base_url": base_url} if base_url and packages else {})}
        (root / subdir).mkdir(parents=True)
        (root / subdir / "repodata.json").write_text(json.dumps(
            {"info": info, "repodata_version": 2, "packages": {}, "packages.conda": packages}))


@pytest.fixture
def hostile(tmp_path, workspace):
    servers = []

    def lock(records: dict, base_url: str | None = None):
        root = tmp_path / f"channel{len(servers)}"
        _channel(root, records, base_url)
        server = FaultyServer(root, tmp_path / "server")
        servers.append(server)
        env_workspace(workspace, server.url, ["evil"], virtual_packages={"linux-64": VPKGS["linux-64"]})
        return server, workspace.hb("lock", "//env:lock", check=False, timeout=120)

    yield lock
    for server in servers:
        server.stop()


@pytest.mark.parametrize("base_url, scheme", [("file:///etc/", "file"), ("ftp://127.0.0.1/pkgs/", "ftp")])
def test_an_http_channel_cannot_lock_a_local_file_or_another_protocol(hostile, workspace, base_url, scheme):
    """CEP 15's `info.base_url` names where a channel's packages are: an http channel's repodata
    made `hb lock` write `url: file:///etc/evil-1.0-0.conda` (`hb build` then opened the local file)
    or an ftp:// URL the lock reader refuses."""
    server, proc = hostile({"evil-1.0-0.conda": _record("evil")}, base_url)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"the channel '{server.url}/' lists a package for linux-64 that cannot be locked" in proc.stderr
    assert f"{scheme}:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (workspace.root / "env/conda-lock.yml").exists()


def test_a_channel_may_name_another_https_host_for_its_packages(hostile, workspace):
    _server, proc = hostile({"evil-1.0-0.conda": _record("evil")}, "https://cdn.example/pkgs/")
    assert proc.returncode == 0, proc.stderr
    assert "url: https://cdn.example/pkgs/evil-1.0-0.conda" in (workspace.root / "env/conda-lock.yml").read_text()


@pytest.mark.parametrize("fields, expected", [
    ({"build": "x\ny: 1"}, "the entry does not describe the package it pins"),  # written, then refused by hb build
    ({"sha256": None}, "no sha256 (md5 only)"),  # written md5-only, then refused by hb build
    ({"md5": None}, "has no md5"),  # conda-lock's model: a pydantic traceback
])
def test_a_record_hb_build_would_refuse_is_an_error_of_hb_lock(hostile, workspace, fields, expected):
    server, proc = hostile({"evil-1.0-0.conda": _record("evil", **fields)})
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert expected in proc.stderr and server.url in proc.stderr and "Traceback" not in proc.stderr
    assert not (workspace.root / "env/conda-lock.yml").exists()


def test_a_channels_control_characters_never_reach_the_terminal(hostile):
    """A build string with escape sequences (set the terminal's title, colour) was printed raw in
    the error (`hb build` printed it too, from the lock `hb lock` had written)."""
    _server, proc = hostile({"evil-1.0-0.conda": _record("evil", build="\x1b[31mRED\x1b]0;owned\x07")})
    assert proc.returncode == 4
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "\\x1b]0;owned\\x07" in proc.stderr


def _endless_channel(tmp_path, *flags: str):
    root = tmp_path / "channel"
    _channel(root, {"evil-1.0-0.conda": _record("evil")})
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "servers" / "hostile_channel.py"),
                             "--root", str(root), "--port", str(port), "--endless", "linux-64/repodata.json", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/noarch/repodata.json", proc)
    return url, proc


def _disk_use(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


@pytest.mark.parametrize("setting, flags, expected", [
    # as fast as loopback goes: 8 GB of the cache's disk in 55 s before, until the server stopped
    ("max_repodata_mb = 20", (), "File too large"),
    # a byte every 0.2 s: `hb lock` was still waiting when it was killed 200 s later
    ("repodata_timeout_s = 2", ("--drip", "0.2"), "timed out"),
])
def test_an_endless_repodata_file_ends_in_an_error_naming_its_url(tmp_path, workspace, setting, flags, expected):
    url, proc = _endless_channel(tmp_path, *flags)
    try:
        (workspace.root / "hermetic.toml").write_text(f"[conda]\n{setting}\n")
        env_workspace(workspace, url, ["evil"], virtual_packages={"linux-64": VPKGS["linux-64"]})
        started = time.monotonic()
        result = workspace.hb("lock", "//env:lock", check=False, timeout=150)
        assert result.returncode == 4, result.stdout + result.stderr
        assert time.monotonic() - started < 100
        assert f"failed to download {url}/linux-64/repodata.json" in result.stderr and expected in result.stderr
        assert setting.split(" ")[0] in result.stderr  # the hint names the setting to raise
        assert _disk_use(workspace.cache) < 30 << 20
    finally:
        stop(proc)
