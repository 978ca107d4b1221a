"""Shared fixtures: temporary workspaces and a way to run the real `hb` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def require_tool(name: str) -> str:
    """A real tool the test needs. Missing tools fail the test (CI installs them), never skip it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get install)")
    return path


class Workspace:
    def __init__(self, root: Path, cache: Path):
        self.root = root
        self.cache = cache

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def env(self) -> dict:
        env = dict(os.environ)
        env["HB_CACHE_DIR"] = str(self.cache)
        env.pop("COLUMNS", None)
        return env

    def hb(self, *args, check: bool = True, cwd: Path | None = None, timeout: float = 300):
        proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=cwd or self.root,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"hb {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def build_json(self, *labels: str) -> dict:
        return json.loads(self.hb("build", "--json", *labels).stdout)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    return Workspace(root, tmp_path / "cache")
