"""The analysis cache pickled by a forked child: the file is complete once hb waits for it, a
second write of the same file wins, and with other threads running it is written in place."""

import os
import pickle
import threading

from hermetic_build import background_write


def _write(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_the_file_holds_the_pickle_once_waited_for(tmp_path):
    path = tmp_path / "a.pickle"
    value = {"targets": list(range(100_000)), "name": "x"}
    background_write.write_pickle(path, value, _write)
    background_write.wait_for(path)
    assert pickle.loads(path.read_bytes()) == value
    background_write.wait_for(path)  # waiting again (nothing pending) returns at once


def test_a_later_write_of_the_same_file_wins(tmp_path):
    path = tmp_path / "a.pickle"
    for i in range(3):
        background_write.write_pickle(path, [i] * 50_000, _write)
    background_write.wait_for_all()
    assert pickle.loads(path.read_bytes()) == [2] * 50_000


def test_the_child_sees_the_value_as_it_was_when_asked(tmp_path):
    path = tmp_path / "a.pickle"
    value = [1, 2, 3]
    background_write.write_pickle(path, value, _write)
    value.append(4)  # the parent goes on; the child pickled (or pickles) its own copy
    background_write.wait_for(path)
    assert pickle.loads(path.read_bytes()) == [1, 2, 3]


def test_with_other_threads_running_it_writes_in_place(tmp_path, monkeypatch):
    def no_fork():
        raise AssertionError("forked with another thread running")
    monkeypatch.setattr(os, "fork", no_fork)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        path = tmp_path / "a.pickle"
        background_write.write_pickle(path, "value", _write)
        assert pickle.loads(path.read_bytes()) == "value"  # already there: no wait needed
    finally:
        stop.set()
        thread.join()
