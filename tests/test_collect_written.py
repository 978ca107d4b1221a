"""Outputs an action's own in-process code wrote and hashed (ActionExecution.note_written) are collected
with that digest, without being read again, only while they are the same unchanged file."""

from __future__ import annotations

import os

import pytest

from hermetic_build.action import Action, File, make_params_json
from hermetic_build.digest import digest_bytes
from hermetic_build.executor import Executor
from hermetic_build.label import Label
from hermetic_build.sandbox import ActionExecution, prepare_sandbox
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import walk_tree
from hermetic_build.workspace import Settings


@pytest.fixture
def action_run(tmp_path):
    """(store, execution, collect): a sandbox for an action with one directory output `out` and one
    file output `one`; collect() moves them into the store as the executor does."""
    store = LocalStore(tmp_path / "cache")
    owner = Label("p", "t")
    outputs = (File("hb-out/p/out", owner, True), File("hb-out/p/one", owner))
    action = Action(owner, "Test", "test.none", "1", (), outputs, make_params_json({}), "linux-64")
    sandbox, execroot = prepare_sandbox(store.tmp_dir)
    execution = ActionExecution(action, sandbox, execroot, {}, store, Settings(cache_dir=tmp_path / "cache"),
                                bytearray(), bytearray(), {}, {})
    (execroot / "hb-out/p/out/sub").mkdir(parents=True)
    executor = Executor(None, store, [action], None, jobs=1, reporter=None)

    def collect():
        return {o.path: o for o in executor._collect_outputs(action, execution, sandbox)}

    return store, execution, collect


def _no_hashing(*_args, **_kwargs):
    raise AssertionError("a noted output was hashed again")


def test_noted_outputs_are_collected_with_their_digest_without_reading_them(action_run, monkeypatch):
    store, execution, collect = action_run
    files = {"hb-out/p/out/sub/blob": b"layer bytes", "hb-out/p/one": b"one file"}
    for path, data in files.items():
        (execution.execroot / path).write_bytes(data)
        execution.note_written(execution.execroot / path, digest_bytes(data))
    monkeypatch.setattr("hermetic_build.store.local.blake3", _no_hashing)
    outputs = collect()
    assert outputs["hb-out/p/one"].digest == digest_bytes(b"one file")
    tree = dict(walk_tree(store, outputs["hb-out/p/out"].digest))
    assert tree["sub/blob"].digest == digest_bytes(b"layer bytes")
    assert store.get_blob(tree["sub/blob"].digest) == b"layer bytes"


def test_an_output_changed_after_it_was_noted_is_hashed(action_run):
    store, execution, collect = action_run
    blob = execution.execroot / "hb-out/p/out/sub/blob"
    blob.write_bytes(b"as written")
    execution.note_written(blob, digest_bytes(b"as written"))
    blob.write_bytes(b"changed afterwards")  # another size: a changed identity on any clock
    one = execution.execroot / "hb-out/p/one"
    one.write_bytes(b"one")
    execution.note_written(one, digest_bytes(b"one"))
    (execution.execroot / "other").write_bytes(b"two")
    os.replace(execution.execroot / "other", one)  # another inode in its place
    outputs = collect()
    tree = dict(walk_tree(store, outputs["hb-out/p/out"].digest))
    assert tree["sub/blob"].digest == digest_bytes(b"changed afterwards")
    assert outputs["hb-out/p/one"].digest == digest_bytes(b"two")


def test_a_digest_noted_for_another_size_is_not_recorded(action_run):
    _store, execution, _collect = action_run
    one = execution.execroot / "hb-out/p/one"
    one.write_bytes(b"four")
    execution.note_written(one, digest_bytes(b"five!"))
    assert execution.written == {}
