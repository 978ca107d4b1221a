"""Fixtures for the conda rules: the test channel (built once per session by hb's own
conda_channel rule from the recipes in examples/channel) and servers that serve it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from support import REPO, FaultyServer, Nginx, Workspace


@pytest.fixture(scope="session")
def channel_dir(tmp_path_factory) -> Path:
    """The example channel, built with `hb build //channel:test-channel` in a scratch workspace."""
    base = tmp_path_factory.mktemp("channel-ws")
    root = base / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    shutil.copytree(REPO / "examples" / "channel", root / "channel")
    ws = Workspace(root, base / "cache")
    out = json.loads(ws.hb("build", "--json", "//channel:test-channel", timeout=600).stdout)
    path = root / out["targets"]["//channel:test-channel"][0]["path"]
    assert (path / "linux-64" / "repodata.json").is_file()
    return path


@pytest.fixture(scope="module")
def nginx_channel(channel_dir, tmp_path_factory):
    server = Nginx(channel_dir, tmp_path_factory.mktemp("nginx"))
    yield server
    server.stop()


@pytest.fixture
def faulty_server(tmp_path):
    servers = []

    def start(root: Path, *flags: str) -> FaultyServer:
        server = FaultyServer(root, tmp_path / "faulty", *flags)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
