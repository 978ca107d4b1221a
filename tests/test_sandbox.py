"""The sandbox: what hb says about isolation (bwrap missing vs present but unable to create
namespaces, issue 10), and the synthetic /etc commands see (issue 8, item 11)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from support import require_tool

from hermetic_build.sandbox import ETC_ENTRIES, SandboxSupport, etc_arguments, isolation_note

BUILD = 'genrule(name="x", outs=["o"], cmd="echo hi > $(OUTS)")\n'


def test_note_when_bwrap_is_missing():
    note = isolation_note(SandboxSupport(None, False))
    assert "NOT ISOLATED" in note and "is not installed" in note
    assert "apt-get install bubblewrap" in note


def test_note_when_bwrap_cannot_create_namespaces_says_what_bwrap_said():
    said = "bwrap: No permissions to create new namespace"
    note = isolation_note(SandboxSupport("/usr/bin/bwrap", False, said))
    assert "installed (/usr/bin/bwrap) but cannot create namespaces" in note
    assert f"bwrap said: {said}" in note
    assert "install" not in note.replace("installed", "")  # installing it again is not the fix
    assert "sysctl" in note or "--privileged" in note


def test_note_when_usable():
    assert isolation_note(SandboxSupport("/usr/bin/bwrap", True)).startswith("sandbox: bubblewrap")


def test_hb_without_bwrap_on_path_says_it_is_missing(workspace, tmp_path):
    workspace.write("p/BUILD.hermetic", BUILD)
    env = workspace.env()
    env["PATH"] = str(tmp_path)  # no bwrap there
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "//p:x"], cwd=workspace.root,
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "bubblewrap (bwrap) is not installed" in proc.stderr
    assert "cannot create namespaces" not in proc.stderr


def test_hb_where_real_bwrap_cannot_create_namespaces_says_so(workspace):
    """A user namespace without a uid map (as a restrictive container gives): the real bwrap fails."""
    require_tool("bwrap")
    unshare = require_tool("unshare")
    workspace.write("p/BUILD.hermetic", BUILD)
    probe = subprocess.run([unshare, "--user", shutil.which("bwrap"), "--unshare-all", "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True, check=False)
    assert probe.returncode != 0, "bwrap worked inside an unmapped user namespace; this test needs it to fail"
    proc = subprocess.run([unshare, "--user", sys.executable, "-m", "hermetic_build.cli", "build", "//p:x"],
                          cwd=workspace.root, env=workspace.env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "bubblewrap is installed" in proc.stderr and "but cannot create namespaces" in proc.stderr
    assert f"bwrap said: {probe.stderr.strip()}" in proc.stderr
    assert "to fix:" in proc.stderr
    assert "not installed" not in proc.stderr


def test_etc_holds_only_the_allowed_entries():
    args = etc_arguments(network=False)
    assert args[:2] == ["--dir", "/etc"]
    bound = {args[i + 1] for i, a in enumerate(args) if a == "--ro-bind"}
    assert bound == {f"/etc/{name}" for name in ETC_ENTRIES if os.path.exists(f"/etc/{name}")}
    assert "/etc/passwd" in bound and "/etc/shadow" not in bound and "/etc/ssl/private" not in bound
    assert "/etc/resolv.conf" not in bound
    if os.path.exists("/etc/resolv.conf"):
        assert "/etc/resolv.conf" in etc_arguments(network=True)


def test_run_bounded_reads_a_helpers_answer_within_its_bounds():
    """run_bounded: a helper's whole answer and its stderr's tail; one that writes past the stdout bound,
    or runs past the timeout, is killed at once and says which (its stdout is then not kept)."""
    import time

    from hermetic_build.sandbox import run_bounded

    done = run_bounded([sys.executable, "-c", "import sys; sys.stdout.write('a' * 5000); "
                        "sys.stderr.write('e' * 200000 + 'END')"], timeout=30, stdout_limit=5000, stderr_limit=1000)
    assert (done.returncode, done.stdout, done.overrun) == (0, b"a" * 5000, "")
    assert len(done.stderr) == 1000 and done.stderr.endswith(b"END")

    started = time.monotonic()
    done = run_bounded([sys.executable, "-c", "import sys, time; sys.stdout.write('a' * 5001); sys.stdout.flush(); "
                        "time.sleep(60)"], timeout=30, stdout_limit=5000)
    assert done.overrun == "it wrote more than 5,000 bytes" and done.stdout == b"" and done.returncode < 0
    assert time.monotonic() - started < 10

    started = time.monotonic()
    done = run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1, stdout_limit=5000)
    assert done.overrun == "it ran longer than 1 s" and done.returncode < 0
    assert time.monotonic() - started < 10

    # its pipes closed but the process still there: the same deadline
    started = time.monotonic()
    done = run_bounded([sys.executable, "-c", "import os, time; os.close(1); os.close(2); time.sleep(60)"],
                       timeout=1, stdout_limit=5000)
    assert done.overrun == "it ran longer than 1 s" and done.returncode < 0
    assert time.monotonic() - started < 10
