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


def pytest_collection_finish(session):
    """A test module may start slow, mostly waiting work when the run starts (start_in_background),
    which its test then waits for: tests/test_fresh_machine.py builds and enters a fresh Debian root."""
    for module in {item.module for item in getattr(session, "items", []) if getattr(item, "module", None) is not None}:
        start = getattr(module, "start_in_background", None)
        if start is not None:
            start(session)


def pytest_sessionfinish(session):
    for module in {item.module for item in getattr(session, "items", []) if getattr(item, "module", None) is not None}:
        stop = getattr(module, "stop_background", None)
        if stop is not None:
            stop()


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    return Workspace(root, tmp_path / "cache")
