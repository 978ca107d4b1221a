"""Fixtures shared by all tests (helpers live in support.py)."""

import os

import pytest

from support import Workspace


@pytest.fixture(autouse=True, scope="session")
def private_config_home(tmp_path_factory):
    """`hb trust` records in $XDG_CONFIG_HOME: the tests' own, never the user's."""
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    yield
    if old is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = old


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    return Workspace(root, tmp_path / "cache")
