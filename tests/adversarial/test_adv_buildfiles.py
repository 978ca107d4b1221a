"""Hostile BUILD files (issue 8, item 7): memory and time bombs, runaway recursion and nesting end
in a clean `build file error` naming the file (and the line where one is known) and the setting to
raise, within a bound, and hb itself survives (exit 3, never killed by a signal)."""

import time

import pytest

BUDGET = "starlark_memory_mb = 256\nstarlark_timeout_s = {timeout}\n"


def build(workspace, source: str, timeout: int = 2):
    (workspace.root / "hermetic.toml").write_text(BUDGET.format(timeout=timeout))
    workspace.write("p/BUILD.hermetic", source)
    started = time.monotonic()
    proc = workspace.hb("build", "//p:all", check=False, timeout=120)
    return proc, time.monotonic() - started


def assert_clean_error(proc, *expected, where="p/BUILD.hermetic"):
    assert proc.returncode == 3, (proc.returncode, proc.stderr)  # a build file error, hb was not killed
    assert proc.stderr.startswith(f"build file error: {where}"), proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    for noise in ("Traceback", "panicked", "stack backtrace", "PanicException:"):
        assert noise not in proc.stderr.replace("(PanicException: out of memory)", ""), proc.stderr
    assert len(proc.stderr.splitlines()) <= 8, proc.stderr


@pytest.mark.parametrize("source", [
    "x = [0] * 2000000000\n",  # one allocation of 16 GB: a pyo3 panic after 30 s before
    'x = "ab" * 1000000000\n',
    "x = []\nfor i in range(100000000):\n    x.append([i] * 10)\n",  # grows until the budget
    "x = {}\nfor i in range(100000000):\n    x[str(i)] = i\n",
], ids=["list-16GB", "string-2GB", "growing-list", "growing-dict"])
def test_memory_bombs_stop_at_the_memory_budget(workspace, source):
    proc, seconds = build(workspace, source, timeout=25)  # the memory budget, not the time one, stops them
    assert_clean_error(proc, "starlark_memory_mb = 256", "hint: raise starlark_memory_mb in hermetic.toml")
    assert seconds < 30


def test_endless_nested_loop_stops_at_the_time_budget_with_its_line(workspace):
    proc, seconds = build(workspace, "x = 0\nfor i in range(1000000000):\n    for j in range(1000000000):\n"
                                     "        x += 1\n")
    assert_clean_error(proc, "p/BUILD.hermetic:3: evaluation took longer than starlark_timeout_s = 2 s",
                       "hint: raise starlark_timeout_s")
    assert seconds < 20


def test_time_budget_is_per_file_inside_loaded_macros(workspace):
    workspace.write("p/slow.bzl", "def spin():\n    for i in range(1000000000):\n        pass\n")
    proc, seconds = build(workspace, 'load(":slow.bzl", "spin")\nspin()\n')
    assert_clean_error(proc, "p/slow.bzl:2: evaluation took longer than starlark_timeout_s = 2 s",
                       "called from p/BUILD.hermetic:2", where="p/slow.bzl:2")
    assert seconds < 20


def test_recursion_prints_a_few_lines_not_the_stack(workspace):
    proc, _ = build(workspace, "def f():\n    f()\n\nf()\n")
    assert_clean_error(proc, "p/BUILD.hermetic:2: Starlark call stack overflow", "calls deep")
    assert proc.stderr.count("in f") == 0


@pytest.mark.parametrize("source", [
    "x = " + "[" * 100000 + "]" * 100000 + "\n",
    "x = 1" + " + 1" * 200000 + "\n",
], ids=["nested-lists", "long-sum"])
def test_deeply_nested_expressions_crash_only_the_child(workspace, source):
    proc, seconds = build(workspace, source)
    assert_clean_error(proc, "evaluation crashed", "overflowed its stack")
    assert seconds < 30


def test_a_budget_failure_in_one_package_names_that_package(workspace):
    (workspace.root / "hermetic.toml").write_text(BUDGET.format(timeout=2))
    workspace.write("ok/BUILD.hermetic", 'genrule(name = "a", srcs = ["//p:b"], outs = ["o"], cmd = "cp $(SRCS) $(OUTS)")\n')
    workspace.write("p/BUILD.hermetic", 'genrule(name = "b", outs = ["o"], cmd = "echo > $(OUTS)")\n'
                                        "x = [0] * 2000000000\n")
    proc = workspace.hb("build", "//ok:a", check=False, timeout=120)
    assert proc.returncode == 3 and proc.stderr.startswith("build file error: p/BUILD.hermetic: "), proc.stderr


def test_normal_files_are_unaffected_by_the_budget(workspace):
    proc, _ = build(workspace, "\n".join(
        f'genrule(name = "t{i}", outs = ["o"], cmd = "echo {i} > $(OUTS)")' for i in range(50)) + "\n")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", ["hermetic_build", "hermetic_build.cli"])
def test_python_m_does_not_import_rule_modules_from_the_checkout(workspace, module):
    """`python -m` puts the working directory first on sys.path: a checkout shipping its own `rules`
    package (hb's default rule module name) must not get it run in hb's process."""
    import subprocess
    import sys

    canary = workspace.root / "PWNED"
    workspace.write("rules/__init__.py", f"open({str(canary)!r}, 'w').write('ran')\n")
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x", outs = ["o"], cmd = "echo hi > $(OUTS)")\n')
    proc = subprocess.run([sys.executable, "-m", module, "build", "//p:x"], cwd=workspace.root,
                          env=workspace.env(), capture_output=True, text=True, timeout=120)
    assert not canary.exists(), proc.stderr
    assert proc.returncode == 0, proc.stderr  # hb's own genrule rule was found and ran
    assert (workspace.root / "hb-out/p/x/o").read_text() == "hi\n"
