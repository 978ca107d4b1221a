"""io_bound action kinds (downloads) run on the executor's own download threads, more at once than
`jobs`; with -j 1 everything runs one action at a time."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from hermetic_build.action import Action, File, make_params_json, register_action_kind
from hermetic_build.executor import IO_JOBS, Executor
from hermetic_build.label import Label
from hermetic_build.store.local import LocalStore
from hermetic_build.workspace import Settings


class _Quiet:
    def start(self, total): pass
    def action_done(self, action, cached, duration): pass
    def finish(self): pass
    def warn(self, message): pass


class _Seen:
    """Threads and the most actions running at once, of the test kinds below."""

    def __init__(self, barrier_parties: int = 0):
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.threads: set[str] = set()
        self.barrier = threading.Barrier(barrier_parties, timeout=30) if barrier_parties else None

    def run(self, execution) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        try:
            if self.barrier is not None:
                self.barrier.wait()  # every action of the build must be running at once
            out = execution.execroot / execution.action.outputs[0].path
            out.write_text(execution.action.params["n"])
        finally:
            with self.lock:
                self.running -= 1


def _build(tmp_path, kind: str, count: int, jobs: int) -> None:
    owner = Label("p", "t")
    actions = [Action(owner, "Test", kind, "1", (), (File(f"hb-out/p/f{n}", owner),), make_params_json({"n": str(n)}),
                      "linux-64") for n in range(count)]
    store = LocalStore(tmp_path / "cache")
    workspace = SimpleNamespace(settings=Settings(cache_dir=tmp_path / "cache"))
    executor = Executor(workspace, store, actions, None, jobs=jobs, reporter=_Quiet())
    try:
        stats = executor.run(list(range(count)))
    finally:
        executor.close()
    assert stats.executed == count
    for n, record in stats.records.items():
        assert store.get_blob(record.result.outputs[0].digest) == str(n).encode()


@pytest.fixture
def kinds():
    io_seen, cpu_seen = _Seen(barrier_parties=IO_JOBS), _Seen()
    register_action_kind("test.io_download", "1", io_seen.run, io_bound=True)
    register_action_kind("test.io_compute", "1", cpu_seen.run)
    return io_seen, cpu_seen


def test_io_bound_actions_run_on_download_threads_more_at_once_than_jobs(tmp_path, kinds):
    io_seen, _ = kinds
    _build(tmp_path, "test.io_download", IO_JOBS, jobs=2)  # the barrier holds until IO_JOBS run at once
    assert io_seen.most == IO_JOBS
    assert all(name.startswith("hb-io") for name in io_seen.threads)


def test_other_actions_run_on_at_most_jobs_threads(tmp_path, kinds):
    _, cpu_seen = kinds
    _build(tmp_path, "test.io_compute", 12, jobs=2)
    assert 1 <= cpu_seen.most <= 2
    assert not any(name.startswith("hb-io") for name in cpu_seen.threads)


def test_one_job_runs_downloads_one_at_a_time(tmp_path):
    seen = _Seen()
    register_action_kind("test.io_serial", "1", seen.run, io_bound=True)
    _build(tmp_path, "test.io_serial", 6, jobs=1)
    assert seen.most == 1


class _Sandboxes:
    """The sandbox each action ran in; optionally leaves a stray file beside its output."""

    def __init__(self, stray: bool = False):
        self.used: list = []
        self.stray = stray

    def run(self, execution) -> None:
        self.used.append(execution.sandbox_dir)
        assert not any(p.is_file() for p in execution.sandbox_dir.rglob("*"))  # never an earlier action's file
        out = execution.execroot / execution.action.outputs[0].path
        out.write_text(execution.action.params["n"])
        if self.stray:
            (execution.sandbox_dir / "tmp" / "stray").write_text("left behind")


def test_downloads_reuse_emptied_sandboxes_and_all_are_removed_at_close(tmp_path):
    seen = _Sandboxes()
    register_action_kind("test.io_reuse", "1", seen.run, io_bound=True)
    _build(tmp_path, "test.io_reuse", 12, jobs=1)  # one at a time: each finds the previous one's sandbox
    assert len(seen.used) == 12 and len(set(seen.used)) == 1
    assert not seen.used[0].exists()  # removed when the executor closed
    assert not list((tmp_path / "cache" / "tmp").glob("sb-*"))


def test_a_sandbox_left_holding_a_file_is_not_reused(tmp_path):
    seen = _Sandboxes(stray=True)
    register_action_kind("test.io_stray", "1", seen.run, io_bound=True)
    _build(tmp_path, "test.io_stray", 4, jobs=1)
    assert len(set(seen.used)) == 4
    assert not any(p.exists() for p in seen.used)


def test_actions_that_are_not_downloads_get_a_new_sandbox_each(tmp_path):
    seen = _Sandboxes()
    register_action_kind("test.cpu_fresh", "1", seen.run)
    _build(tmp_path, "test.cpu_fresh", 4, jobs=1)
    assert len(set(seen.used)) == 4
