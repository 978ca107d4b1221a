"""The guarded child that evaluates BUILD files: results stream back; any way the child can fail
(time, memory, a crash, a Python error) becomes a GuardFailure in hb's process."""

import os
import sys
import time

import pytest

from hermetic_build.evalguard import GuardFailure, Limits, run_guarded

DEFAULT = Limits(256, 5)


def run(work, limits=DEFAULT):
    received = []
    run_guarded(work, limits, received.append)
    return received


def test_messages_arrive_in_order_and_output_is_captured(capfd):
    def work(channel):
        print("printed by the child")
        for i in range(3):
            channel.begin(f"unit{i}")
            channel.send(("n", i, "x" * 100_000))
    assert [m[1] for m in run(work)] == [0, 1, 2]
    out, err = capfd.readouterr()
    assert "printed by the child" not in out  # stdout of hb is for results (--json)
    assert "printed by the child" in err  # replayed on stderr after a clean run


def test_a_unit_that_outlives_its_budget_is_killed():
    def work(channel):
        channel.begin("slow/BUILD.hermetic")
        time.sleep(60)
    started = time.monotonic()
    with pytest.raises(GuardFailure) as exc:
        run(work, Limits(256, 1))
    assert exc.value.reason == "timeout" and exc.value.unit == "slow/BUILD.hermetic"
    assert time.monotonic() - started < 10


def test_time_between_units_is_not_budgeted():
    def work(channel):
        channel.begin("a")
        channel.begin(None)
        time.sleep(1.5)
        channel.send("done")
    assert run(work, Limits(256, 1)) == ["done"]


def test_a_crash_of_the_child_is_reported_not_inherited():
    def work(channel):
        channel.begin("crash/BUILD.hermetic")
        os.abort()
    with pytest.raises(GuardFailure) as exc:
        run(work)
    assert exc.value.reason == "crash" and exc.value.unit == "crash/BUILD.hermetic"
    assert "SIGABRT" in exc.value.detail


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux only")
def test_memory_beyond_the_budget_fails_in_the_child():
    def work(channel):
        channel.begin("big/BUILD.hermetic")
        hoard = bytearray(512 << 20)
        channel.send(len(hoard))
    with pytest.raises(GuardFailure) as exc:
        run(work, Limits(128, 10))
    assert exc.value.reason == "memory" and exc.value.unit == "big/BUILD.hermetic"


def test_a_python_error_in_the_child_is_a_crash_with_its_traceback():
    def work(channel):
        channel.begin("bug")
        raise KeyError("oops")
    with pytest.raises(GuardFailure) as exc:
        run(work)
    assert exc.value.reason == "crash" and "KeyError: 'oops'" in exc.value.detail
