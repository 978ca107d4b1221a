"""benchmarks/harness.py: the numbers a benchmark row reports are the command's own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from harness import Bench, Cmd, CommandFailed, run_once  # noqa: E402

PY = sys.executable


def test_peak_rss_is_the_commands_not_the_benchmarks():
    ballast = bytearray(300 << 20)  # this process is big; the command it starts is not
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    small = run_once(Cmd((PY, "-S", "-c", "pass")))
    big = run_once(Cmd((PY, "-S", "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])")))
    assert small.max_rss_kib < 100 << 10
    assert 200 << 10 <= big.max_rss_kib < 300 << 10
    assert len(ballast) == 300 << 20


def test_rss_of_a_grandchild_counts_and_output_is_captured():
    run = run_once(Cmd.shell(f"{PY} -S -c \"b = bytearray(150 << 20); b[::4096] = b'x' * len(b[::4096]); "
                             f"print('out')\" | cat"))
    assert run.stdout == "out\n"
    assert run.max_rss_kib >= 150 << 10


def test_wall_time_and_failures():
    run = run_once(Cmd(("sleep", "0.3")))
    assert 0.3 <= run.seconds < 2
    with pytest.raises(CommandFailed, match="exited 3"):
        run_once(Cmd.shell("echo oops >&2; exit 3"))
    with pytest.raises(CommandFailed, match="ran past 0.5 s"):
        run_once(Cmd(("sleep", "30")), timeout=0.5)


def test_bench_rows_ratio_and_table(tmp_path):
    bench = Bench("demo")
    seen = []
    tool = bench.measure("tool", lambda i: Cmd(("sh", "-c", f"echo {i}"), cwd=tmp_path), runs=3,
                         before=seen.append)
    base = bench.measure("a | b", Cmd.shell("true | true"), runs=3, baseline="two trues in a pipe")
    assert seen == [0, 1, 2] and [r.stdout for r in tool.runs] == ["0\n", "1\n", "2\n"]
    assert tool.min <= tool.median and len(base.runs) == 3
    value = bench.ratio(tool, base)
    assert value == pytest.approx(tool.median / base.median)
    table = bench.markdown()
    assert "| a \\| b (baseline) | 3 |" in table
    assert "- baseline `a | b`: two trues in a pipe" in table


def test_retired_moves_aside_without_freeing_inodes_and_deletes_at_close(tmp_path):
    from harness import Retired

    cache = tmp_path / "cache"
    (cache / "cas").mkdir(parents=True)
    (cache / "cas" / "blob").write_bytes(b"x")
    inode = (cache / "cas" / "blob").stat().st_ino
    retired = Retired(tmp_path)
    retired.retire(cache, tmp_path / "never-made")  # a path that is not there is no error
    assert not cache.exists()
    moved = list((tmp_path / ".retired").iterdir())
    assert [p.name for p in moved] == ["1-cache"]
    assert (moved[0] / "cas" / "blob").stat().st_ino == inode  # renamed, not copied or deleted
    cache.mkdir()  # the next run gets an empty place; a second retire of the same name does not collide
    retired.retire(cache)
    assert sorted(p.name for p in (tmp_path / ".retired").iterdir()) == ["1-cache", "2-cache"]
    retired.close()
    assert not (tmp_path / ".retired").exists()
