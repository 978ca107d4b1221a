"""The sandbox: what hb says about isolation (bwrap missing vs present but unable to create
namespaces, issue 10), and the synthetic /etc commands see (issue 8, item 11)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


KEYRING_PROBE = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keyctl = int(sys.argv[1])
def call(*args):
    return libc.syscall(ctypes.c_long(keyctl), *[a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args])
ring = call(0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
if ring < 0:
    print(f"session keyring refused: {os.strerror(ctypes.get_errno())}")
    sys.exit(0)
ids = ctypes.create_string_buffer(4096)
for i in range(0, max(call(11, ring, ids, 4096), 0), 4):  # KEYCTL_READ of a keyring: its keys' ids
    data = ctypes.create_string_buffer(4096)
    size = call(11, int.from_bytes(ids.raw[i:i + 4], "little"), data, 4096)
    print(f"key: {data.raw[:max(size, 0)]!r}")
'''

WITH_A_SESSION_KEY = r'''
import ctypes, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keyctl = int(sys.argv[1])
assert libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(1), None) >= 0  # a new session keyring of its own
secret = b"HOST-SESSION-SECRET"
assert libc.syscall(ctypes.c_long(keyctl - 2), b"user", b"hb-test", secret, ctypes.c_size_t(len(secret)),
                    ctypes.c_long(-3)) >= 0  # add_key into it
sys.exit(subprocess.run(sys.argv[2:]).returncode)
'''


def test_a_command_cannot_read_the_keyrings_of_the_user_who_builds(workspace, tmp_path):
    """The kernel's keyrings are not namespaced: a genrule under `hb build` read a key of the session
    keyring hb was started with (a login's has one: Kerberos tickets, ecryptfs keys; reproduced).
    bubblewrap now installs hb's keyring filter (hermetic_build/seccomp.py) before the command runs:
    keyctl, add_key and request_key fail with ENOSYS, as under Docker's default profile."""
    import platform

    keyctl = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
    if keyctl is None:
        pytest.fail(f"no keyring syscall numbers for {platform.machine()} in this test")
    require_tool("bwrap")
    workspace.write("p/probe.py", KEYRING_PROBE)
    workspace.write("p/BUILD.hermetic", f'genrule(name = "k", srcs = ["probe.py"], outs = ["o"], '
                                        f'cmd = "python3 $(SRCS) {keyctl} > $(OUTS)")\n')
    (tmp_path / "keys.py").write_text(WITH_A_SESSION_KEY)
    proc = subprocess.run([sys.executable, str(tmp_path / "keys.py"), str(keyctl), sys.executable, "-m",
                           "hermetic_build.cli", "build", "//p:k"], cwd=workspace.root, env=workspace.env(),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    found = (workspace.root / "hb-out/p/k/o").read_text()
    assert "HOST-SESSION-SECRET" not in found, found
    assert found == "session keyring refused: Function not implemented\n", found


HELPER_IN_A_SESSION_WITH_A_KEY = r'''
import os, sys
from hermetic_build.sandbox import run_bounded, worker_command
probe, keyctl = sys.argv[1:3]
roots = {sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
         os.path.dirname(os.path.realpath(sys.executable)), probe}
done = run_bounded(worker_command([sys.executable, "-I", probe, keyctl], read_only=tuple(sorted(roots))),
                   timeout=60, stdout_limit=1 << 20)
sys.stdout.write(done.stdout.decode())
sys.stderr.write(done.stderr.decode())
sys.exit(done.returncode)
'''


def test_a_long_lived_helper_cannot_read_the_keyrings_of_the_user_who_builds(tmp_path):
    """The long-lived helpers (worker_command: archive checks, METADATA reads) parse hostile bytes in
    bubblewrap; a helper subverted by them read a key of the session keyring hb was started with, as a
    genrule did (reproduced with this probe as the helper). start_helper now hands bubblewrap the same
    keyring filter as run_command."""
    import platform

    keyctl = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
    if keyctl is None:
        pytest.fail(f"no keyring syscall numbers for {platform.machine()} in this test")
    require_tool("bwrap")
    (tmp_path / "probe.py").write_text(KEYRING_PROBE)
    (tmp_path / "keys.py").write_text(WITH_A_SESSION_KEY)
    (tmp_path / "helper.py").write_text(HELPER_IN_A_SESSION_WITH_A_KEY)
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, str(tmp_path / "keys.py"), str(keyctl), sys.executable,
                           str(tmp_path / "helper.py"), str(tmp_path / "probe.py"), str(keyctl)],
                          env={**os.environ, "PYTHONPATH": code_root}, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HOST-SESSION-SECRET" not in proc.stdout, proc.stdout
    assert proc.stdout == "session keyring refused: Function not implemented\n", proc.stdout


def test_a_command_cannot_list_the_hosts_keys_in_proc(workspace):
    """/proc/keys lists the ids, types and names of every key the sandbox's uid may view (the keyring
    filter refuses the calls, not this file): a genrule read them. It and Docker's other masked /proc
    files (sandbox.MASKED_PROC_FILES) are covered in every sandbox; reading one fails."""
    require_tool("bwrap")
    Path("/proc/keys").read_text()  # readable here, outside
    workspace.write("p/BUILD.hermetic", 'genrule(name = "k", outs = ["o"], '
                                        'cmd = "(cat /proc/keys /proc/key-users 2>&1; true) > $(OUTS)")\n')
    workspace.hb("build", "//p:k")
    found = (workspace.root / "hb-out/p/k/o").read_text()
    assert "keyring" not in found and found.count("Permission denied") == 2, found


USERNS_PROBE = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER: every capability in a namespace of its own
    print("made a user namespace")
else:
    print(f"refused: {os.strerror(ctypes.get_errno())}")
'''


def test_a_command_cannot_make_a_user_namespace(workspace):
    """In a user namespace of its own a process holds every capability, which opens the kernel interfaces
    most local privilege escalations go through; a genrule made one (reproduced). bubblewrap now
    disables further user namespaces in every command's sandbox (sandbox.NO_NESTED_USERNS)."""
    from hermetic_build.sandbox import sandbox_support

    require_tool("bwrap")
    assert sandbox_support().no_nested_userns, "this bubblewrap cannot disable user namespaces (0.8 or later can)"
    workspace.write("p/probe.py", USERNS_PROBE)
    workspace.write("p/BUILD.hermetic", 'genrule(name = "u", srcs = ["probe.py"], outs = ["o"], '
                                        'cmd = "python3 $(SRCS) > $(OUTS)")\n')
    workspace.hb("build", "//p:u")
    found = (workspace.root / "hb-out/p/u/o").read_text()
    assert found.startswith("refused: ") and "made" not in found, found


IO_URING_PROBE = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)  # struct io_uring_params
fd = libc.syscall(ctypes.c_long(int(sys.argv[1])), ctypes.c_long(1), params)
print("io_uring:", "an instance" if fd >= 0 else os.strerror(ctypes.get_errno()))
'''


def test_a_command_cannot_reach_io_uring(workspace):
    """io_uring is a path into the kernel that most recent kernel exploits took (Docker refuses it since
    25.0); a genrule set up an instance (reproduced). The seccomp filter refuses it with ENOSYS, as a
    kernel without io_uring would, so a program that tries it falls back to epoll."""
    import platform

    require_tool("bwrap")
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.fail(f"no io_uring_setup number for {platform.machine()} in this test")
    workspace.write("p/probe.py", IO_URING_PROBE)
    workspace.write("p/BUILD.hermetic", 'genrule(name = "u", srcs = ["probe.py"], outs = ["o"], '
                                        'cmd = "python3 $(SRCS) 425 > $(OUTS)")\n')
    workspace.hb("build", "//p:u")
    found = (workspace.root / "hb-out/p/u/o").read_text()
    assert found == "io_uring: Function not implemented\n", found
