"""The state hb loads back as pickles (statefile.py) and the cache directory that holds it must be
this user's: a cache another user made or may write into is code run as you."""

import os
import pickle

import pytest

from hermetic_build.errors import UsageError
from hermetic_build.statefile import open_own_file
from hermetic_build.store.local import LocalStore


def test_only_a_regular_file_of_yours_writable_by_you_alone_is_opened(tmp_path, monkeypatch):
    mine = tmp_path / "state.pickle"
    mine.write_bytes(pickle.dumps({"a": 1}))
    os.chmod(mine, 0o600)
    with open_own_file(mine) as f:
        assert pickle.load(f) == {"a": 1}
    os.chmod(mine, 0o620)  # a group that may write it: others of the group could plant a pickle
    assert open_own_file(mine) is None
    os.chmod(mine, 0o600)
    (tmp_path / "link.pickle").symlink_to(mine)
    assert open_own_file(tmp_path / "link.pickle") is None
    assert open_own_file(tmp_path / "absent.pickle") is None
    (tmp_path / "dir.pickle").mkdir()
    assert open_own_file(tmp_path / "dir.pickle") is None
    monkeypatch.setattr(os, "getuid", lambda: os.stat(mine).st_uid + 4242)  # the file is another user's
    assert open_own_file(mine) is None


def test_a_planted_noop_record_of_another_user_is_never_loaded(tmp_path, monkeypatch):
    from hermetic_build import noop

    canary = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    (tmp_path / noop.RECORD_NAME).write_bytes(pickle.dumps(Payload()))
    os.chmod(tmp_path / noop.RECORD_NAME, 0o666)
    assert noop.load(tmp_path) is None and not canary.exists()


def test_a_cache_directory_of_another_user_or_writable_by_all_is_refused(tmp_path, monkeypatch):
    LocalStore(tmp_path / "c")  # made by this user: fine
    os.chmod(tmp_path / "c", 0o777)
    with pytest.raises(UsageError, match="is writable by every user"):
        LocalStore(tmp_path / "c", setting="HB_CACHE_DIR=x")
    os.chmod(tmp_path / "c", 0o755)
    LocalStore(tmp_path / "c")
    owner = os.stat(tmp_path / "c").st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 4242)
    with pytest.raises(UsageError, match=r"HB_CACHE_DIR=x belongs to another user \(uid \d+\)"):
        LocalStore(tmp_path / "c", setting="HB_CACHE_DIR=x")
