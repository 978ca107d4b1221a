"""conda_channel: a recipe's build script is arbitrary shell from the workspace. It runs with
py-rattler-build inside the sandbox, never in hb's process: it cannot read host files outside its
inputs, write outside the sandbox, or reach the network; and a failing script's own output shows."""

from __future__ import annotations

import os
import socket
import textwrap

import pytest
from support import require_tool

pytestmark = pytest.mark.slow

SECRET = "HB-CHANNEL-SECRET-93e1"


def _channel(workspace, script: list[str]):
    lines = "\n".join(f"    - {line}" for line in script)
    workspace.write("ch/recipes/evil/recipe.yaml", textwrap.dedent("""\
        package:
          name: evil
          version: "1.0.0"
        build:
          number: 0
          noarch: generic
          script:
        """) + lines + "\n")
    workspace.write("ch/BUILD.hermetic", 'conda_channel(name = "ch", recipes = ["recipes/evil/recipe.yaml"])\n')


def _files_containing(root, needle: bytes) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    if needle in f.read():
                        found.append(path)
    return found


def test_a_recipe_script_cannot_read_write_or_connect_outside(workspace, tmp_path):
    require_tool("bwrap")
    secret = tmp_path / "host-secret"
    secret.write_text(SECRET + "\n")
    pwned = tmp_path / "pwned"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    _channel(workspace, [
        "mkdir -p $PREFIX/share",
        f"cat {secret} > $PREFIX/share/stolen.txt 2>/dev/null || echo no-secret > $PREFIX/share/stolen.txt",
        f"touch {pwned} 2>/dev/null || true",
        (f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo connected > $PREFIX/share/net.txt "
         "|| echo offline > $PREFIX/share/net.txt"),
        "ls /root > $PREFIX/share/home.txt 2>&1 || true",
    ])
    proc = workspace.hb("build", "//ch:ch", check=False)
    try:
        connection, _ = listener.accept()
        connection.close()
        connected = True
    except OSError:
        connected = False
    listener.close()
    assert proc.returncode == 0, proc.stderr
    assert not connected, "the recipe script reached a socket on the host"
    assert not pwned.exists(), "the recipe script wrote outside the sandbox"
    assert not _files_containing(workspace.root, SECRET.encode()) and not _files_containing(workspace.cache, SECRET.encode())


def test_a_failing_recipe_shows_its_own_output(workspace):
    _channel(workspace, ["echo 'the-distinctive-failure-7731' >&2", "exit 3"])
    proc = workspace.hb("build", "//ch:ch", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "building ch/recipes/evil/recipe.yaml for" in proc.stderr, proc.stderr
    assert "the-distinctive-failure-7731" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_hb_lock_accepts_the_keep_sandbox_hint_it_prints(workspace):
    """A channel that fails while `hb lock` builds it prints a hint that works under `hb lock` too."""
    _channel(workspace, ["echo 'lock-time-failure-5120' >&2", "exit 4"])
    workspace.write("env/environment.yml", "channels: ['//ch:ch']\ndependencies: [evil]\n")
    workspace.write("env/BUILD.hermetic", 'conda_lock(name = "lock", environment = "environment.yml", '
                                          'platforms = ["linux-64"], virtual_packages = {"linux-64": ["__unix"]})\n')
    proc = workspace.hb("lock", "//env:lock", check=False)
    assert proc.returncode == 5 and "re-run with --keep-sandbox" in proc.stderr, proc.stderr
    kept = workspace.hb("lock", "--keep-sandbox", "//env:lock", check=False)
    assert kept.returncode == 5 and "the sandbox was kept at" in kept.stderr, kept.stderr
    assert "lock-time-failure-5120" in kept.stderr
