"""Fixtures shared by all tests (helpers live in support.py)."""

import pytest

from support import Workspace


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    return Workspace(root, tmp_path / "cache")
