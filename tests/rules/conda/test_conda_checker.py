"""The archive check of fetches in sandboxed helper processes (rules/conda/checker.py): the same
verdicts and messages as archive.check_archive in-process, from a process that is not hb's."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hermetic_build.api import ActionExecution, ActionFailed
from rules.conda import checker
from rules.conda.archive import UnpackLimits, check_archive

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adversarial"))
from payloads_staging import Package, file  # noqa: E402


@dataclass
class _Store:
    tmp_dir: Path


@dataclass
class _Execution:
    store: _Store
    helper_command = staticmethod(ActionExecution.helper_command)


@pytest.fixture
def execution(tmp_path):
    tmp = tmp_path / "cache-tmp"
    tmp.mkdir()
    yield _Execution(_Store(tmp))
    pool = checker._pools.pop(os.path.realpath(tmp), None)
    if pool is not None:
        pool.close()


def _in_process_message(path: Path, filename: str) -> str:
    with pytest.raises(ActionFailed) as info:
        check_archive(path, filename, UnpackLimits())
    return info.value.message


def test_verdicts_and_messages_are_those_of_the_in_process_check(execution):
    good = Package(members=(file("share/a.txt"),), paths=({"_path": "share/a.txt"},)).write(execution.store.tmp_dir)
    checker.check_archive_sandboxed(execution, good, good.name, 1000)
    bad_dir = execution.store.tmp_dir / "bad"
    bad_dir.mkdir()
    bad = Package(members=(file("../escape.txt"),), paths=()).write(bad_dir)
    with pytest.raises(ActionFailed) as info:
        checker.check_archive_sandboxed(execution, bad, bad.name, 1000)
    assert info.value.message == _in_process_message(bad, bad.name)
    assert "refusing archive entry '../escape.txt'" in info.value.message
    # one helper served both, and it is another process
    (helper,) = checker._pools[os.path.realpath(execution.store.tmp_dir)].idle
    assert helper.proc.pid != os.getpid() and helper.proc.poll() is None


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def test_the_helper_runs_under_the_keyring_filter(execution):
    """The helper parses hostile archives: the process that does it (bubblewrap's child) runs under hb's
    seccomp keyring filter (sandbox.start_helper; tests/test_sandbox.py shows a helper's keyctl refused)."""
    from hermetic_build.sandbox import bwrap_path

    if bwrap_path() is None:
        pytest.fail("bubblewrap is not usable here: the helper runs unsandboxed")
    good = Package(members=(file("share/a.txt"),), paths=({"_path": "share/a.txt"},)).write(execution.store.tmp_dir)
    checker.check_archive_sandboxed(execution, good, good.name, 1000)
    (helper,) = checker._pools[os.path.realpath(execution.store.tmp_dir)].idle
    workers = [pid for pid in _descendants(helper.proc.pid)
               if b"check_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers, "the helper's process was not found"
    for pid in workers:
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nSeccomp:\t2\n" in status, status


def test_a_helper_that_died_is_replaced_and_one_that_dies_mid_check_is_an_action_failure(execution):
    good = Package(members=(file("share/a.txt"),), paths=({"_path": "share/a.txt"},)).write(execution.store.tmp_dir)
    checker.check_archive_sandboxed(execution, good, good.name, 1000)
    pool = checker._pools[os.path.realpath(execution.store.tmp_dir)]
    (first,) = pool.idle
    first.proc.kill()
    first.proc.wait()
    checker.check_archive_sandboxed(execution, good, good.name, 1000)  # a new helper answers
    (second,) = pool.idle
    assert second is not first and pool.count == 1
    second.proc.stdout.close()  # its answers are lost: as if it died in the middle of a check
    with pytest.raises(ActionFailed, match="ended without an answer"):
        checker.check_archive_sandboxed(execution, good, good.name, 1000)
    assert pool.count == 0 and not pool.idle


def test_a_file_outside_the_cache_tmp_directory_is_not_visible_to_the_helper(execution, tmp_path):
    from hermetic_build.sandbox import bwrap_path

    if bwrap_path() is None:
        pytest.skip("bubblewrap is not usable here: the helper runs unsandboxed")
    outside = tmp_path / "outside"
    outside.mkdir()
    package = Package(members=(file("share/a.txt"),), paths=({"_path": "share/a.txt"},)).write(outside)
    with pytest.raises(ActionFailed) as info:
        checker.check_archive_sandboxed(execution, package, package.name, 1000)
    assert "No such file" in info.value.message or "not a" in info.value.message, info.value.message


def test_helpers_started_early_serve_the_checks(execution):
    pool = checker._pool_of(execution)
    checker.start_checkers(execution)
    checker.start_checkers(execution)  # once per pool
    assert pool.count == checker.MAX_HELPERS
    good = Package(members=(file("share/a.txt"),), paths=({"_path": "share/a.txt"},)).write(execution.store.tmp_dir)
    checker.check_archive_sandboxed(execution, good, good.name, 1000)  # waits for a started helper, starts none
    assert pool.count == checker.MAX_HELPERS
    deadline = time.monotonic() + 30
    while len(pool.idle) < checker.MAX_HELPERS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pool.idle) == checker.MAX_HELPERS
    assert all(h.proc.poll() is None and h.proc.pid != os.getpid() for h in pool.idle)


def test_a_helper_that_cannot_start_early_makes_the_next_check_fail_with_why(execution):
    @dataclass
    class _Broken:
        store: _Store

        @staticmethod
        def helper_command(argv, read_only=()):
            return [sys.executable, "-c", "import sys; sys.exit('no sandbox here')"]

    broken = _Broken(execution.store)
    checker.start_checkers(broken)
    good = Package(members=(file("share/a.txt"),), paths=({"_path": "share/a.txt"},)).write(execution.store.tmp_dir)
    with pytest.raises(ActionFailed, match="could not start"):
        checker.check_archive_sandboxed(execution, good, good.name, 1000)
    pool = checker._pool_of(execution)
    deadline = time.monotonic() + 30
    while pool.count and time.monotonic() < deadline:  # the other start may still be failing
        time.sleep(0.05)
    assert pool.count == 0 and not pool.idle and "no sandbox here" in pool.broken


def test_a_wheel_is_checked_by_the_helper_too_with_its_hint(execution):
    """Wheels are outside bytes like conda archives: their zip directory is parsed in the sandboxed
    helper (kind "wheel"), not in hb's process; a refusal keeps its message and hint."""
    from test_conda_wheels import make_wheel

    good = make_wheel(execution.store.tmp_dir / "demo-1.0-py3-none-any.whl")
    checker.check_archive_sandboxed(execution, good, good.name, 1000, kind="wheel")
    big_dir = execution.store.tmp_dir / "big"
    big_dir.mkdir()
    big = make_wheel(big_dir / "demo-1.0-py3-none-any.whl", extra=[("demo/zeros", b"\0" * (80 << 20))])
    with pytest.raises(ActionFailed) as info:
        checker.check_archive_sandboxed(execution, big, big.name, 1000, kind="wheel")
    assert "expands to 83886" in info.value.message and "max_unpack_ratio" in info.value.hint
    (helper,) = checker._pools[os.path.realpath(execution.store.tmp_dir)].idle
    assert helper.proc.pid != os.getpid()


def test_an_answer_without_end_is_cut_off_and_its_helper_ended():
    """A helper parses hostile archives: one made to write an endless line must not fill hb's memory.
    (A real process standing in for a helper that was subverted: it answers the request with 64 MiB.)"""
    import resource

    script = ("import sys; print('{\"ready\": true}', flush=True); sys.stdin.readline(); "
              "[sys.stdout.write('x' * (1 << 20)) for _ in range(64)]; sys.stdout.flush()")
    helper = checker._Helper([sys.executable, "-c", script])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(checker._NoAnswer, match="it wrote an answer of more than 1,048,576 bytes"):
        helper.ask({"path": "x", "filename": "x", "max_ratio": 1, "kind": "conda"}, 60)
    helper.close()
    assert helper.proc.returncode is not None
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10  # KiB: not the 64 MiB line


@pytest.mark.parametrize("answer", ["", '{"ok": tr'])
def test_a_helper_that_does_not_answer_is_ended_at_its_deadline(answer):
    """A helper that never answers (or stops mid-line) held the fetch, and the build, for ever: it is
    ended once its deadline (CHECK_SECONDS plus the archive's size at CHECK_BYTES_PER_SECOND; 1 s here)
    has passed. (A real process standing in for a subverted or looping helper.)"""
    import time

    script = ("import sys, time; print('{\"ready\": true}', flush=True); sys.stdin.readline(); "
              f"sys.stdout.write({answer!r}); sys.stdout.flush(); time.sleep(600)")
    helper = checker._Helper([sys.executable, "-c", script])
    started = time.monotonic()
    with pytest.raises(checker._NoAnswer, match="it did not answer within 1 s"):
        helper.ask({"path": "x", "filename": "x", "max_ratio": 1, "kind": "conda"}, 1)
    assert time.monotonic() - started < 10
    helper.close()
    assert helper.proc.returncode is not None
