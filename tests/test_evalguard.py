"""The guarded child that evaluates BUILD files: results stream back; any way the child can fail
(time, memory, a crash, a Python error) becomes a GuardFailure in hb's process."""

import os
import sys
import time

import pytest

from hermetic_build.evalguard import GuardFailure, Limits, run_guarded, run_guarded_all

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


def test_several_children_all_deliver_and_replay_their_output(capfd):
    def work(name):
        def run_share(channel):
            print(f"printed by {name}")
            for i in range(3):
                channel.begin(f"{name}{i}")
                channel.send((name, i))
        return run_share
    received = []
    run_guarded_all([work("a"), work("b")], DEFAULT, received.append)
    assert sorted(received) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert [m for m in received if m[0] == "a"] == [("a", 0), ("a", 1), ("a", 2)]  # each child's in order
    err = capfd.readouterr().err
    assert "printed by a" in err and "printed by b" in err


def test_one_child_failing_stops_the_others_and_names_its_unit():
    def slow(channel):
        channel.begin(None)
        time.sleep(60)

    def crash(channel):
        channel.begin("crash/BUILD.hermetic")
        os.abort()
    started = time.monotonic()
    with pytest.raises(GuardFailure) as exc:
        run_guarded_all([slow, crash], DEFAULT, lambda message: None)
    assert exc.value.reason == "crash" and exc.value.unit == "crash/BUILD.hermetic"
    assert time.monotonic() - started < 10


def test_a_late_child_is_killed_while_another_keeps_sending():
    def chatty(channel):
        for i in range(400):
            channel.begin(f"fast{i}")
            channel.send(i)
            time.sleep(0.01)

    def stuck(channel):
        channel.begin("stuck/BUILD.hermetic")
        time.sleep(60)
    with pytest.raises(GuardFailure) as exc:
        run_guarded_all([chatty, stuck], Limits(256, 1), lambda message: None)
    assert exc.value.reason == "timeout" and exc.value.unit == "stuck/BUILD.hermetic"
