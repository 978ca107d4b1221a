"""Attacks from inside an action (issue 8, items 1 and 11): a command that swaps a declared output,
its parent directory, or the execution root itself for a link to a host directory must not make hb
read, move, chmod or delete anything outside the sandbox, with bubblewrap and without it (hb then
runs commands unisolated but still collects outputs only through descriptors anchored at the
sandbox). And in bubblewrap the host's /etc is not visible beyond what commands need."""

from __future__ import annotations

import os
import pwd
import stat

import pytest
from payloads_sandbox import SECRET, SandboxWorkspace, assert_victim_intact, files_containing, make_victim
from support import require_tool

MODES = [pytest.param(True, id="bwrap"), pytest.param(False, id="no-bwrap")]


@pytest.fixture(params=MODES)
def attack(request, tmp_path):
    if request.param:
        require_tool("bwrap")
    root = tmp_path / "ws"
    root.mkdir()
    return SandboxWorkspace(root, tmp_path / "cache", bwrap=request.param), make_victim(tmp_path)


def build_refused(workspace, victim, build: str, *expected: str):
    workspace.write("p/BUILD.hermetic", build.replace("VICTIM", str(victim)))
    proc = workspace.hb("build", "//p:steal", check=False)
    assert proc.returncode == 5, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert_victim_intact(victim)
    assert files_containing(workspace.cache, SECRET) == []
    assert files_containing(workspace.root / "hb-out", SECRET) == []
    return proc


def test_output_under_a_symlinked_parent_is_refused(attack):
    workspace, victim = attack
    build_refused(workspace, victim,
                  'genrule(name="steal", outs=["sub/secret.txt"], cmd="rmdir $(RULEDIR)/sub && ln -s VICTIM $(RULEDIR)/sub")\n',
                  "declared output hb-out/p/steal/sub/secret.txt is not collected",
                  f"hb-out/p/steal/sub is a symbolic link (-> {victim})")


def test_output_that_is_a_link_to_a_host_file_is_refused(attack):
    workspace, victim = attack
    build_refused(workspace, victim,
                  'genrule(name="steal", outs=["out"], cmd="ln -s VICTIM/secret.txt $(OUTS)")\n',
                  f"declared output hb-out/p/steal/out is a symbolic link (-> {victim}/secret.txt), not a regular file")


def test_output_deeper_under_a_link_is_refused(attack):
    workspace, victim = attack
    # the link is two levels up from the output: every component is checked, not only the parent
    build_refused(workspace, victim,
                  'genrule(name="steal", outs=["a/inner/more.txt"], '
                  'cmd="rm -r $(RULEDIR)/a && ln -s VICTIM $(RULEDIR)/a")\n',
                  f"hb-out/p/steal/a is a symbolic link (-> {victim})")


def test_execution_root_swapped_for_a_link_is_refused(attack, tmp_path):
    workspace, victim = attack
    # a host directory laid out like the execution root, with the secret where the output is expected
    fake = tmp_path / "fake-execroot"
    (fake / "hb-out/p/steal").mkdir(parents=True)
    (fake / "hb-out/p/steal/out").write_bytes(SECRET)
    build_refused(workspace, victim,
                  f'genrule(name="steal", outs=["out"], cmd="cd .. && mv execroot moved && ln -s {fake} execroot")\n',
                  f"execroot is a symbolic link (-> {fake})")
    assert (fake / "hb-out/p/steal/out").read_bytes() == SECRET  # not moved into the cache


def test_directory_output_that_is_a_link_is_refused(attack):
    workspace, victim = attack
    build_refused(workspace, victim,
                  'tree_out(name="steal", cmd="rmdir $(OUT) 2>/dev/null; ln -s VICTIM $(OUT)")\n',
                  f"declared output hb-out/p/steal/tree is a symbolic link (-> {victim}), not a directory")


def test_directory_output_under_a_symlinked_parent_is_refused(attack):
    workspace, victim = attack
    build_refused(workspace, victim,
                  'tree_out(name="steal", cmd="d=$(OUT); rm -rf ${d%/*} && ln -s VICTIM ${d%/*}")\n',
                  f"hb-out/p/steal is a symbolic link (-> {victim})")


def test_links_inside_a_directory_output_are_kept_as_links(attack):
    workspace, victim = attack
    workspace.write("p/BUILD.hermetic", f'tree_out(name="steal", cmd="mkdir -p $(OUT)/d && echo ok > $(OUT)/d/f '
                    f'&& ln -s {victim} $(OUT)/dirlink && ln -s {victim}/secret.txt $(OUT)/d/filelink")\n')
    workspace.hb("build", "//p:steal")
    tree = workspace.root / "hb-out/p/steal/tree"
    assert (tree / "d/f").read_text() == "ok\n"
    assert os.readlink(tree / "dirlink") == str(victim)  # data, not followed
    assert os.readlink(tree / "d/filelink") == f"{victim}/secret.txt"
    assert_victim_intact(victim)
    assert files_containing(workspace.cache, SECRET) == []


def test_special_file_in_a_directory_output_is_refused_without_blocking(attack):
    workspace, _victim = attack
    workspace.write("p/BUILD.hermetic", 'tree_out(name="steal", cmd="mkdir -p $(OUT) && mkfifo $(OUT)/pipe")\n')
    proc = workspace.hb("build", "//p:steal", check=False, timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert "declared output hb-out/p/steal/tree is not collected: hb-out/p/steal/tree/pipe: only files, " \
           "directories and symlinks can be stored" in proc.stderr


def test_hard_link_to_a_host_file_is_copied_never_moved_or_chmoded(tmp_path):
    """Without bwrap a command can hard-link a host file into its outputs (with bwrap the host file
    is not visible). Its content is not secret from an unisolated command anyway; what must hold is
    that hb neither moves it nor makes it read-only nor shares its inode with the CAS."""
    root = tmp_path / "ws"
    root.mkdir()
    workspace = SandboxWorkspace(root, tmp_path / "cache", bwrap=False)
    victim = make_victim(tmp_path)
    workspace.write("p/BUILD.hermetic", f'genrule(name="x", outs=["out"], cmd="ln {victim}/secret.txt $(OUTS)")\n')
    workspace.hb("build", "//p:x")
    assert_victim_intact(victim)
    inode = os.stat(victim / "secret.txt").st_ino
    for path in files_containing(workspace.cache, SECRET):
        assert os.stat(path).st_ino != inode


@pytest.mark.parametrize("secret", ["/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/root", "/etc/sudoers",
                                    "/etc/machine-id", "/etc/ssh"])
def test_host_secrets_are_not_visible_in_bwrap(workspace, secret):
    require_tool("bwrap")
    workspace.write("p/BUILD.hermetic", f'genrule(name="x", outs=["o"], cmd="test -e {secret} || echo absent > $(OUTS)")\n')
    workspace.hb("build", "//p:x")
    assert (workspace.root / "hb-out/p/x/o").read_text() == "absent\n"


def test_etc_is_synthetic_but_tools_work_in_bwrap(workspace):
    require_tool("bwrap")
    require_tool("cc")
    workspace.write("p/BUILD.hermetic", """\
        genrule(name="x", outs=["o"], cmd="(echo b; echo a) | sort | awk '{print toupper($0)}' > $(OUTS); \
        id -un >> $(OUTS); printf 'int main(void){return 0;}' > t.c && cc t.c -o t && ./t && echo cc-ok >> $(OUTS); \
        python3 -c 'import ssl; print(ssl.create_default_context().cert_store_stats()[\\"x509_ca\\"] > 0)' >> $(OUTS)")
        """)
    workspace.hb("build", "//p:x")
    lines = (workspace.root / "hb-out/p/x/o").read_text().splitlines()
    assert lines[:4] == ["A", "B", pwd.getpwuid(os.getuid()).pw_name, "cc-ok"]  # /etc/passwd is there
    assert lines[4] == "True"  # CA certificates through /etc/ssl/certs
    assert stat.S_ISLNK(os.lstat("/usr/bin/awk").st_mode)  # the case this covers: awk via /etc/alternatives


# ----- the sandbox's own processes (twelfth session): what a command reaches besides files ----------


def test_hb_environment_is_not_readable_through_proc(workspace, monkeypatch):
    """bwrap stays in the sandbox's PID namespace as PID 1; it was started with hb's whole environment,
    so a genrule read /proc/1/environ: every secret of the user's (remote password, cloud keys)."""
    require_tool("bwrap")
    secret = "hb-env-secret-5c0ffee"
    monkeypatch.setenv("HB_REMOTE_PASSWORD", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    workspace.write("p/BUILD.hermetic", 'genrule(name="x", outs=["o"], '
                    'cmd="for f in /proc/[0-9]*/environ; do cat $f; done > $(OUTS) 2>/dev/null; env >> $(OUTS)")\n')
    workspace.hb("build", "//p:x")
    seen = (workspace.root / "hb-out/p/x/o").read_bytes()
    assert b"SOURCE_DATE_EPOCH" in seen  # the probe read the command's own environment
    assert secret.encode() not in seen
    assert files_containing(workspace.cache, secret.encode()) == []


def test_commands_have_no_capabilities(workspace):
    """Where hb runs as root (CI containers) bwrap kept every capability in the user namespace: a
    genrule remounted the read-only /usr bind read-write and wrote into the host's /usr."""
    require_tool("bwrap")
    canary = f"/usr/.hb-adv-canary-{os.getpid()}"
    workspace.write("p/BUILD.hermetic", 'genrule(name="x", outs=["o"], cmd="grep CapEff /proc/self/status > $(OUTS); '
                    f'(mount -o remount,bind,rw /usr && touch {canary}) 2>/dev/null; '
                    '(umount /etc/passwd && echo unmounted >> $(OUTS)) 2>/dev/null; true")\n')
    try:
        workspace.hb("build", "//p:x")
        assert not os.path.lexists(canary)
    finally:
        if os.path.lexists(canary):
            os.unlink(canary)
    assert (workspace.root / "hb-out/p/x/o").read_text() == "CapEff:\t0000000000000000\n"


def test_command_cannot_type_into_hbs_terminal(workspace):
    """A command had hb's controlling terminal: TIOCSTI on /dev/tty queued input that the user's shell
    reads (runs) once hb exits, and it could write escape sequences there past hb's capture."""
    import fcntl
    import subprocess
    import sys
    import termios

    require_tool("bwrap")
    workspace.write("p/BUILD.hermetic", '''\
        genrule(name="x", outs=["o"], cmd="""python3 -c '
        import fcntl, os, termios
        try:
            fd = os.open(\\"/dev/tty\\", os.O_RDWR)
        except OSError as e:
            print(\\"no tty\\", e.errno)
        else:
            os.write(fd, b\\"WRITTEN\\\\n\\")
            for c in b\\"echo INJECTED\\\\n\\":
                fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
            print(\\"tty\\")
        ' > $(OUTS)""")
        ''')
    master, slave = os.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "//p:x"], cwd=workspace.root,
                              env=workspace.env(), stdin=slave, capture_output=True, text=True, timeout=120,
                              preexec_fn=controlling_terminal)
        assert proc.returncode == 0, proc.stderr
        os.set_blocking(master, False)
        os.set_blocking(slave, False)
        typed = written = b""
        try:
            typed = os.read(slave, 4096)  # what the shell would read next
        except BlockingIOError:
            pass
        try:
            written = os.read(master, 4096)  # what the terminal would show
        except BlockingIOError:
            pass
    finally:
        os.close(master)
        os.close(slave)
    assert b"INJECTED" not in typed and b"WRITTEN" not in written, (typed, written)
    assert (workspace.root / "hb-out/p/x/o").read_text().startswith("no tty")


def _tree_size(root) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("bwrap", MODES)
def test_a_flood_of_output_is_kept_bounded(tmp_path, bwrap):
    """A command's stdout and stderr were read whole into hb's memory and stored whole in the cache
    with its result: 3 GB of output took hb 8 GB of memory and the cache 2.8 GB. Now hb keeps the first
    and last 4 MiB of each (the end of stderr is what explains a failure)."""
    import resource

    if bwrap:
        require_tool("bwrap")
    root = tmp_path / "ws"
    root.mkdir()
    workspace = SandboxWorkspace(root, tmp_path / "cache", bwrap=bwrap)
    workspace.write("p/BUILD.hermetic", '''\
        genrule(name="ok", outs=["o"], cmd="head -c 300000000 /dev/zero; head -c 300000000 /dev/zero >&2; echo done > $(OUTS)")
        genrule(name="bad", outs=["o2"], cmd="echo first-line >&2; head -c 100000000 /dev/zero >&2; echo the-real-error >&2; exit 3")
        ''')
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    workspace.hb("build", "//p:ok", timeout=300)
    assert (root / "hb-out/p/ok/o").read_text() == "done\n"
    assert _tree_size(workspace.cache) < 64 << 20
    grown = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert grown < 250 << 10 or grown == before, grown  # KiB: hb stayed far below the 600 MB written
    proc = workspace.hb("build", "//p:bad", check=False, timeout=300)
    assert proc.returncode == 5, proc.stderr
    assert "the-real-error" in proc.stderr
