"""Fixtures for the conda rules: the test channel (built once per session by hb's own
conda_channel rule from the recipes in examples/channel) and servers that serve it."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from support import REPO, FaultyServer, Nginx, Workspace

VPKGS = {
    "linux-64": ["__unix", "__linux=5.10", "__glibc=2.36"],
    "osx-arm64": ["__unix", "__osx=13.0"],
}


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


def env_workspace(ws: Workspace, channel_url: str, dependencies: list[str], *, platforms=("linux-64",),
                  virtual_packages=None, env_platform: str = "linux-64", extra_build: str = "") -> None:
    """A package //env with an environment.yml, a conda_lock and a conda_env."""
    deps = "\n".join(f"  - {d}" for d in dependencies)
    ws.write("env/environment.yml", f"name: t\nchannels:\n  - {channel_url}\ndependencies:\n{deps}\n")
    vp = virtual_packages if virtual_packages is not None else {p: VPKGS[p] for p in platforms}
    ws.write("env/BUILD.hermetic", textwrap.dedent(f"""\
        conda_lock(
            name = "lock",
            platforms = {list(platforms)!r},
            virtual_packages = {vp!r},
        )
        conda_env(name = "env", lock = ":lock", platform = {env_platform!r})
    """) + extra_build)


def run_in_prefix(tree: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run a program of a staged environment with the tree placed at /opt/env (bubblewrap)."""
    from support import require_tool

    return subprocess.run([require_tool("bwrap"), "--ro-bind", "/", "/", "--tmpfs", "/opt", "--ro-bind", str(tree),
                           "/opt/env", "--dev", "/dev", "--proc", "/proc", *argv],
                          capture_output=True, text=True, timeout=60)


