"""uv as a process, and the early start of the runs the last lock of a target made: a run is handed
over only for byte-identical inputs; the others are killed; what is recorded reads back."""

from __future__ import annotations

import dataclasses

from rules.conda.uv_run import Speculation, UvInputs, UvRun

EMPTY = UvInputs("linux-64", "", "", "", "3.11.2", "x86_64-manylinux_2_36", ())  # resolves offline: nothing


def test_a_uv_run_gives_uv_pylock_and_errors(tmp_path):
    result = UvRun(EMPTY, tmp_path / "uv-cache").result()
    assert result.returncode == 0 and "packages = []" in result.pylock
    bad = UvRun(dataclasses.replace(EMPTY, requirements="not a requirement ===\n"), tmp_path / "uv-cache").result()
    assert bad.returncode != 0 and bad.pylock == "" and "not a requirement" in bad.stderr


def test_recorded_runs_start_early_and_are_used_only_for_identical_inputs(tmp_path):
    state, cache = tmp_path / "state", tmp_path / "uv-cache"
    first = Speculation(state, "//env:lock", cache)
    assert first.take(EMPTY) is None  # nothing recorded yet
    other = dataclasses.replace(EMPTY, platform="osx-arm64", uv_platform="aarch64-apple-darwin",
                                uv_env=(("MACOSX_DEPLOYMENT_TARGET", "13.0"),))
    first.record([EMPTY, other])
    first.close()

    second = Speculation(state, "//env:lock", cache)  # both start now
    assert second.take(dataclasses.replace(EMPTY, python_version="3.11.3")) is None  # another python: not used
    run = second.take(EMPTY)
    assert run is not None and run.inputs == EMPTY and "packages = []" in run.result().pylock
    assert second.take(EMPTY) is None  # handed over once
    leftover = second._runs[0]
    second.close()  # the unused one is killed and waited for
    assert leftover._proc.returncode is not None and second._runs == []
    assert Speculation(state, "//env:other", cache).take(EMPTY) is None  # records are per target


def test_an_unreadable_record_starts_nothing(tmp_path):
    state = tmp_path / "state"
    spec = Speculation(state, "//env:lock", tmp_path / "c")
    spec.record([EMPTY])
    spec._path.write_text('{"schema": 1, "runs": [{"platform": "linux-64"}]}')
    assert Speculation(state, "//env:lock", tmp_path / "c")._runs == []
    spec._path.write_text("not json")
    assert Speculation(state, "//env:lock", tmp_path / "c")._runs == []


def test_a_pylock_past_its_bound_is_not_read(tmp_path, monkeypatch):
    """uv writes what the indexes answer (within 4 GiB): hb read and parsed all of it. Past
    MAX_PYLOCK_BYTES (lowered here to the few bytes of an empty resolution) it is not read, and the
    lock fails saying so."""
    import pytest

    from hermetic_build.api import AnalysisError
    from rules.conda import uv_run
    from rules.conda.pypi import WheelTarget, resolved_wheels

    monkeypatch.setattr(uv_run, "MAX_PYLOCK_BYTES", 10)
    result = UvRun(EMPTY, tmp_path / "uv-cache").result()
    assert result.returncode == 0 and result.oversized == 10 and result.pylock == ""
    target = WheelTarget("linux-64", "3.11.2", "x86_64-manylinux_2_36", (), ("manylinux_2_36_x86_64",))
    with pytest.raises(AnalysisError, match="the pip requirements for linux-64 is larger than 10 bytes"):
        resolved_wheels(result, [], target, {})
