"""Running commands in a sandbox: a fresh directory holding only the declared inputs, a scrubbed
environment and, where bubblewrap is installed, no network and no view of the rest of the disk."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import threading
import stat
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

from .action import register_action_kind
from .errors import ActionFailed
from .store.base import ActionResult, OutputEntry
from .store.local import LocalStore, file_identity

SANDBOX_ROOT = "/hb"  # where the sandbox directory appears inside bubblewrap
# read_only_files kinds: the sandbox directory's inputs/ holds hard links to the CAS blobs of the file
# inputs, and is bound read-only over its own place, so inside bubblewrap they are at
# FILE_VIEWS_ROOT/<path> and cannot be changed (ActionExecution.file_views)
FILE_VIEWS_DIR = "inputs"
FILE_VIEWS_ROOT = f"{SANDBOX_ROOT}/{FILE_VIEWS_DIR}"
FIXED_PATH = "/usr/local/bin:/usr/bin:/bin"


# What of the host's /etc a command sees: name resolution of users and hosts, the dynamic linker's
# cache, CA certificates, the time zone, and Debian's alternatives (/usr/bin/awk, cc, ... are links
# through /etc/alternatives). Nothing else: not shadow, gshadow, ssh keys, ssl/private, sudoers.
ETC_ENTRIES = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "gai.conf", "services", "protocols",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone", "mime.types",
    "os-release", "debian_version", "lsb-release", "locale.alias", "magic", "magic.mime",
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf", "pki/tls/certs", "pki/ca-trust/extracted",
    "crypto-policies/back-ends",
)
ETC_NETWORK_ENTRIES = ("resolv.conf",)  # only for actions that have the network

# bwrap options every sandboxed process gets. --cap-drop ALL: where hb runs as root (CI containers),
# bwrap keeps every capability inside the user namespace by default, and a command could remount its
# read-only binds read-write (`mount -o remount,bind,rw /usr` wrote into the host's /usr) or unmount
# them; none is needed. --new-session: the command gets no controlling terminal, so it cannot push
# keystrokes into the terminal hb runs in (TIOCSTI on /dev/tty, run after hb exits) or write to it.
CONFINEMENT = ("--unshare-all", "--clearenv", "--new-session", "--cap-drop", "ALL")


@dataclass(frozen=True)
class SandboxSupport:
    """Whether commands can run isolated here. path: bwrap, if installed; usable: whether it could
    create namespaces; reason: what bwrap printed when it could not."""

    path: str | None
    usable: bool
    reason: str = ""
    no_nested_userns: bool = False  # whether NO_NESTED_USERNS works here


# What keeps a command from making user namespaces of its own: in one it holds every capability, which
# opens the kernel interfaces most local privilege escalations go through (nf_tables, mounts of other
# filesystems); a genrule's `unshare -U` worked before (reproduced). bubblewrap sets
# user.max_user_namespaces to 0 inside (Docker's default profile refuses the same clone and unshare
# calls). It needs a user namespace of the sandbox's own (--unshare-user, where --unshare-all only tries
# one), so it is used only where the probe below could start a sandbox with it.
NO_NESTED_USERNS = ("--unshare-user", "--disable-userns")


@functools.cache
def sandbox_support() -> SandboxSupport:
    path = shutil.which("bwrap")
    if not path:
        return SandboxSupport(None, False)
    probe = subprocess.run([path, "--unshare-all", *NO_NESTED_USERNS, "--ro-bind", "/", "/", "true"],
                           check=False, capture_output=True, stdin=subprocess.DEVNULL)
    if probe.returncode == 0:
        return SandboxSupport(path, True, no_nested_userns=True)
    probe = subprocess.run([path, "--unshare-all", "--ro-bind", "/", "/", "true"],
                           check=False, capture_output=True, stdin=subprocess.DEVNULL)
    if probe.returncode == 0:  # bubblewrap before 0.8, or a user namespace it may not make here
        return SandboxSupport(path, True)
    said = probe.stderr.decode(errors="replace").strip() or f"it exited with status {probe.returncode}"
    return SandboxSupport(path, False, said)


def confinement() -> list[str]:
    """CONFINEMENT, and NO_NESTED_USERNS where bubblewrap can do it here: the options of every command's
    and long-lived helper's sandbox."""
    return [*CONFINEMENT, *(NO_NESTED_USERNS if sandbox_support().no_nested_userns else ())]


def bwrap_path() -> str | None:
    """bwrap, if installed and able to create namespaces here."""
    support = sandbox_support()
    return support.path if support.usable else None


def isolation_note(support: SandboxSupport | None = None) -> str:
    support = support or sandbox_support()
    if support.usable:
        return "sandbox: bubblewrap (no network, only declared inputs visible)"
    risk = "so actions can read files outside their inputs and reach the network"
    if support.path is None:
        return (f"sandbox: NOT ISOLATED - bubblewrap (bwrap) is not installed, {risk}; install it "
                "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)")
    return (f"sandbox: NOT ISOLATED - bubblewrap is installed ({support.path}) but cannot create namespaces "
            f"here, {risk}. bwrap said: {support.reason}\n  to fix: {userns_advice()}")


def userns_advice() -> str:
    """What to do when user namespaces are refused, judged from the knobs this kernel has."""
    knobs = (("/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
             ("/proc/sys/user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
             ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
              "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"))
    for path, off, command in knobs:
        try:
            if Path(path).read_text().strip() == off:
                return f"enable unprivileged user namespaces: {command} (as root)"
        except OSError:
            continue
    return ("this kernel allows user namespaces, so something around hb forbids them (a chroot, a container's "
            "seccomp or AppArmor profile, a user namespace without a uid map): run hb on the host or outside the "
            "chroot, or start the container with user namespaces allowed (docker run --security-opt "
            "seccomp=unconfined --security-opt apparmor=unconfined, or --privileged)")


def etc_arguments(network: bool) -> list[str]:
    """bwrap arguments for a synthetic /etc holding only ETC_ENTRIES that exist on this host
    (a link is bound as what it points to, so a distribution's layout of links keeps working)."""
    args = ["--dir", "/etc"]
    for name in ETC_ENTRIES + (ETC_NETWORK_ENTRIES if network else ()):
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


# Files of a sandbox's /proc that show the host's kernel state, hidden as Docker's default masked paths
# hide them: /proc/keys and /proc/key-users list the keys (ids, types and names) of every keyring the
# sandbox's uid may view, the builder's session and user keyrings included (the seccomp filter refuses
# the calls that read them: seccomp.py), and the others show the kernel's timers and memory. Each is
# bound over by /dev/null, which a sandbox cannot open (its /proc is nodev): reading one fails with
# EACCES. Not for the confinement of `hb worker`, whose /proc must stay fully visible so that the
# actions' own bubblewrap can mount theirs (the kernel refuses a new procfs where files of the
# existing one are covered): those get the masks.
MASKED_PROC_FILES = ("/proc/keys", "/proc/key-users", "/proc/kcore", "/proc/timer_list", "/proc/sched_debug",
                     "/proc/latency_stats", "/proc/timer_stats")


def proc_arguments() -> list[str]:
    """bwrap arguments for a sandbox's /proc: its own procfs, MASKED_PROC_FILES covered."""
    args = ["--proc", "/proc"]
    for path in MASKED_PROC_FILES:
        if os.path.exists(path):  # the same kernel's procfs: the file is there in the sandbox too
            args += ["--ro-bind", "/dev/null", path]
    return args


def host_system_arguments(network: bool) -> list[str]:
    """bwrap arguments for the host's system, read-only: /usr, the synthetic /etc (etc_arguments) and
    /bin, /sbin and /lib* as the host has them (links into /usr on a merged-/usr system, else binds)."""
    args = ["--ro-bind", "/usr", "/usr", *etc_arguments(network)]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink(f"/{name}"):
            args += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif os.path.isdir(f"/{name}"):
            args += ["--ro-bind", f"/{name}", f"/{name}"]
    return args


def relative_path(path) -> str:
    """path, when it is relative and made of single components (no `..`, `.`, empty or absolute part)."""
    if not isinstance(path, str) or not path or "\0" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise ActionFailed(f"{str(path)[:200]!r} is not a relative path of single components")
    return path


@dataclass
class ActionExecution:
    """What an action's implementation receives while it runs."""

    action: object
    sandbox_dir: Path  # holds execroot/, home/, tmp/
    execroot: Path
    env: dict  # allow-listed environment values
    store: object
    settings: object
    stdout: bytearray
    stderr: bytearray
    input_entries: dict = None  # path -> OutputEntry (kind, digest) of each generated input
    # facts an action establishes that a user should see (e.g. the sha256 of a package pinned by md5
    # only): kept with its result, shown by `hb build --json` under "recorded"
    recorded: dict = None
    # for an action declared with dep_keys=True: [{owner, mnemonic, output, key}] of every action
    # upstream of it (Executor.upstream_keys), sorted
    dep_keys: list = None
    # files the implementation wrote itself and hashed as it wrote them (note_written): path under
    # the execroot -> (file identity, Digest), for the collector
    written: dict = field(default_factory=dict)
    # directory inputs bound read-only from a tree view (read_only_trees kinds): path under the
    # execroot -> the view's directory on the host; their place in the execroot is an empty mount point
    tree_views: dict = field(default_factory=dict)
    # file inputs bound read-only from the CAS (read_only_files kinds): path under the execroot -> a
    # hard link to its blob in sandbox_dir/FILE_VIEWS_DIR; inside bubblewrap at FILE_VIEWS_ROOT/<path>
    file_views: dict = field(default_factory=dict)

    def input_tree(self, file):
        """The tree digest of a generated directory input (read it with walk_tree / store.get_blob)."""
        return self.input_entries[file.path].digest

    @property
    def params(self) -> dict:
        return self.action.params

    @property
    def hints(self) -> dict:
        return self.action.hints

    def path(self, file) -> Path:
        return self.execroot / file.path

    def tree_path(self, rel: str) -> Path:
        """Where a directory input's files are on the host, to read (never write): its read-only view,
        or its copy in the execution root."""
        return self.tree_views.get(rel) or self.declared_input(rel)  # params name it: never a host path

    @functools.cached_property
    def _declared_inputs(self) -> dict[str, bool]:
        """Each input's path -> whether it is a directory."""
        return {f.path: f.is_directory for f in self.action.inputs}

    def declared_input(self, path) -> Path:
        """execroot/path for a path that a kind's params name (params are outside bytes on a remote
        worker, where the kind's Python runs outside bubblewrap with the worker's view of the disk): it
        must be relative, of single components, and a declared input or lie under a declared input
        directory; anything else (`/home/worker/.ssh/id_rsa`, `../..`) fails the action."""
        relative_path(path)
        declared = self._declared_inputs  # one lookup per component, not a scan of the inputs per path
        parts = path.split("/")
        if path in declared or any(declared.get("/".join(parts[:i])) for i in range(1, len(parts))):
            return self.execroot / path
        raise ActionFailed(f"{self.action.owner}: {str(path)[:200]!r} is not a declared input of this action")

    def input_path(self, file) -> Path:
        """Where an input file's bytes are on the host, to read (never write): its blob in the CAS when
        bound read-only (file_views), else its copy in the execution root."""
        return self.file_views.get(file.path) or self.execroot / file.path

    def sandbox_path(self, file) -> str:
        """The path a command run by run_command opens for an input file: absolute where it is bound
        read-only (file_views), else relative to the execution root (its working directory)."""
        return f"{FILE_VIEWS_ROOT}/{file.path}" if file.path in self.file_views else file.path

    def note_written(self, path: Path, digest) -> None:
        """Tell the collector the BLAKE3 digest of an output file this implementation wrote itself, in
        this process, hashing exactly the bytes it wrote (a layer blob), or fetched verified from the
        store: collecting it then takes the digest instead of reading the file again, provided it is
        still the same inode, unchanged since this call (device, inode, size, mtime and ctime; so call
        it after the file's last rename). Never for files a command (a sandboxed process) wrote."""
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_size == digest.size:
            self.written[Path(path).relative_to(self.execroot).as_posix()] = (file_identity(st), digest)

    # ----- blobs by another name (e.g. a package's sha256) --------------------------------------
    # Aliases live in the local store only: they save this machine a download; another machine gets
    # the same content through the remote cache's entry for the action itself.
    def recall_alias(self, alias: str, dest: Path) -> bool:
        """Write the blob recorded under `alias` to dest (verified). False if unknown or gone."""
        local = getattr(self.store, "local", self.store)
        result = local.get_action_result(alias_key(alias))
        if result is None or len(result.outputs) != 1 or result.outputs[0].kind != "file":
            return False  # unknown, or not an entry remember_alias wrote: a miss, never a crash
        return local.fetch_file(result.outputs[0].digest, dest)

    def remember_alias(self, alias: str, digest) -> None:
        """Record that the blob `digest` (an output of this action, stored when it succeeds) is
        also known as `alias` (e.g. "sha256:<hex>"). An alias whose blob is missing is a miss."""
        local = getattr(self.store, "local", self.store)
        entry = ActionResult((OutputEntry(alias, "file", digest),))
        # not fsynced: an alias lost or torn by a crash reads as a miss (recall_alias verifies all)
        if isinstance(local, LocalStore):
            local.put_action_result(alias_key(alias), entry, fsync=False)
        else:
            local.put_action_result(alias_key(alias), entry)

    def base_env(self, inside_bwrap: bool) -> dict:
        root = SANDBOX_ROOT if inside_bwrap else str(self.sandbox_dir)
        return {
            "PATH": FIXED_PATH,
            "HOME": f"{root}/home",
            "TMPDIR": f"{root}/tmp",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "SOURCE_DATE_EPOCH": str(self.settings.source_date_epoch),
            **self.env,
        }

    @staticmethod
    def helper_command(argv: list[str], read_only: tuple[str, ...] = ()) -> HelperCommand:
        """The command for a long-lived sandboxed helper process shared by many actions (worker_command)."""
        return worker_command(argv, read_only=read_only)

    @property
    def isolated(self) -> bool:
        """Whether run_command runs in bubblewrap, where /tmp is a private tmpfs (in memory, gone
        with the command's namespace)."""
        return bwrap_path() is not None

    def run_command(self, argv: list[str], extra_env: dict | None = None, network: bool = False,
                    read_only: tuple[str, ...] = (), mounts: tuple[tuple[str, str], ...] = (),
                    root: str | None = None, tmp_size: int | None = None) -> int:
        """Run argv in the execution root; output is captured into the action's stdout/stderr.

        read_only: host paths (e.g. the Python interpreter and its site-packages, for an action kind
        that runs hb code inside the sandbox) made visible read-only at the same path.
        mounts: (path relative to the execution root, absolute path in the sandbox) pairs, mounted
        read-only (e.g. a staged environment at its prefix); they need bubblewrap.
        root: a directory relative to the execution root (e.g. an image's unpacked root filesystem) whose
        top-level entries make up `/` (read-only) instead of the host's /usr, /bin, /lib and /etc; needs
        bubblewrap.
        tmp_size: a limit in bytes on the sandbox's private /tmp tmpfs (bubblewrap only)."""
        bwrap = bwrap_path()
        if (mounts or root is not None) and not bwrap:
            what = ", ".join(m[1] for m in mounts) or "a root filesystem"
            raise ActionFailed(f"{self.action.owner}: mounting {what} needs bubblewrap, "
                               f"which is not usable here ({isolation_note()})")
        env = {**self.base_env(bwrap is not None), **(extra_env or {})}
        if bwrap:
            workdir = f"{SANDBOX_ROOT}/execroot"
            cmd = [bwrap, *confinement(), "--die-with-parent"]
            if network:
                cmd.append("--share-net")
            if root is not None:
                cmd += root_arguments(self.tree_path(root))
            else:
                cmd += host_system_arguments(network)
            cmd += [*proc_arguments(), "--dev", "/dev"]
            if tmp_size:
                cmd += ["--size", str(int(tmp_size))]
            cmd += ["--tmpfs", "/tmp"]
            for path in read_only:
                if os.path.exists(path):
                    cmd += ["--ro-bind", path, path]
            cmd += ["--bind", str(self.sandbox_dir), SANDBOX_ROOT]
            for rel, view in sorted(self.tree_views.items()):  # over their empty mount points
                cmd += ["--ro-bind", str(view), f"{workdir}/{rel}"]
            if self.file_views:  # one read-only bind over the links (a bind per file cost 0.5 ms each)
                cmd += ["--ro-bind", str(self.sandbox_dir / FILE_VIEWS_DIR), FILE_VIEWS_ROOT]
            for rel, target in mounts:  # bwrap reads a bind's source on the host
                cmd += ["--ro-bind", str(self.tree_path(rel)), target]
            cmd += ["--chdir", workdir]
            for key, value in env.items():
                cmd += ["--setenv", key, value]
            # bwrap itself gets no environment: its process stays in the sandbox's PID namespace as
            # PID 1, where the command can read /proc/1/environ (it had hb's whole environment)
            with seccomp_arguments() as (seccomp, fds):
                returncode, out, err = run_captured([*cmd, *seccomp, "--", *argv], env={}, pass_fds=fds)
        else:
            returncode, out, err = run_captured(argv, cwd=self.execroot, env=env)
        self.stdout += out
        self.stderr += err
        self.last_exit_code = returncode  # what a remote worker reports as the action's exit code
        return returncode


# How much of a command's stdout and of its stderr hb keeps (each): the first and the last half of it,
# with a line saying how much was left out. Both are held in hb's memory and stored in the cache with
# the action's result (uploaded to a remote cache too): a genrule writing 3 GB to stdout took hb 8 GB of
# memory and put 2.8 GB into the cache before.
OUTPUT_LIMIT = 8 << 20


class _BoundedOutput:
    """The first and last `limit // 2` bytes of a stream, and how many bytes between were dropped."""

    def __init__(self, limit: int):
        self.half = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail += chunk
        excess = len(self.tail) - self.half
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def value(self) -> bytes:
        if not self.dropped:
            return bytes(self.head + self.tail)
        return bytes(self.head) + f"\n[hb: {self.dropped} bytes of output left out]\n".encode() + bytes(self.tail)


def run_captured(argv: list[str], *, env: dict, cwd=None, limit: int = OUTPUT_LIMIT,
                 pass_fds: tuple[int, ...] = ()) -> tuple[int, bytes, bytes]:
    """Run argv with stdin /dev/null (and the descriptors pass_fds); its exit status and its stdout and
    stderr, each read to the end but kept to at most about `limit` bytes (_BoundedOutput)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=pass_fds)
    kept = (_BoundedOutput(limit), _BoundedOutput(limit))

    def drain(stream, into):
        with stream:
            while chunk := stream.read1(1 << 16):
                into.add(chunk)

    reader = threading.Thread(target=drain, args=(proc.stderr, kept[1]), daemon=True)
    reader.start()
    try:
        drain(proc.stdout, kept[0])
        reader.join()
    finally:
        returncode = proc.wait()
    return returncode, kept[0].value(), kept[1].value()


@dataclass(frozen=True)
class BoundedRun:
    """What run_bounded read of a helper: its exit status (a negative signal number where it was ended),
    its whole stdout (b"" where it was ended), the last bytes of its stderr, and why it was ended ("" if not)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    overrun: str = ""


def run_bounded(argv: HelperCommand | list[str], *, timeout: float, stdout_limit: int, stderr_limit: int = 64 << 10,
                env: dict | None = None, cwd=None) -> BoundedRun:
    """Run a helper whose stdout is an answer hb's process reads whole (a sandboxed reader of hostile
    bytes, which may be subverted): stdin /dev/null, stdout read to at most `stdout_limit` bytes and
    only the last `stderr_limit` bytes of stderr kept, the whole run within `timeout` seconds. A helper
    that writes more or runs longer is killed at once, with `overrun` saying which (subprocess.run's
    capture_output held all it wrote until the timeout: 3.7 GiB of hb's memory in 3 s)."""
    import selectors
    import time

    deadline = time.monotonic() + timeout
    proc = start_helper(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    overrun = ""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, out)
            selector.register(proc.stderr, selectors.EVENT_READ, err)
            while selector.get_map() and not overrun:
                left = deadline - time.monotonic()
                if left <= 0:
                    overrun = f"it ran longer than {timeout:g} s"
                    break
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.data is out:
                        out += chunk
                        if len(out) > stdout_limit:
                            overrun = f"it wrote more than {stdout_limit:,} bytes"
                            break
                    else:
                        err += chunk
                        del err[:-stderr_limit]
        if not overrun:  # both pipes closed: it has a moment to exit, within the same deadline
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                overrun = f"it ran longer than {timeout:g} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
        returncode = proc.wait()
    return BoundedRun(returncode, b"" if overrun else bytes(out), bytes(err), overrun)


_seccomp_memfd: int | None = None
_seccomp_lock = threading.Lock()


def seccomp_program() -> int | None:
    """A new descriptor (close it after the command started) from which bubblewrap's --seccomp reads the
    seccomp filter (hermetic_build/seccomp.py); None where this machine's syscall numbers are not known.
    One memfd holds the program; each command gets a descriptor of its own, opened again through /proc
    (a shared one's offset would be at its end for the second reader)."""
    global _seccomp_memfd
    with _seccomp_lock:
        if _seccomp_memfd is None:
            from .seccomp import syscall_filter

            program = syscall_filter()
            if program is None:
                return None
            fd = os.memfd_create("hb-seccomp", os.MFD_CLOEXEC)
            os.write(fd, program)
            _seccomp_memfd = fd
    return os.open(f"/proc/self/fd/{_seccomp_memfd}", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def seccomp_arguments():
    """(bubblewrap's --seccomp arguments, the descriptors to pass it) for one command that starts inside
    the block: the seccomp filter of hermetic_build/seccomp.py on a descriptor of its own, closed after;
    ([], ()) where this machine's syscall numbers are not known."""
    program = seccomp_program()
    if program is None:
        yield [], ()
        return
    try:
        yield ["--seccomp", str(program)], (program,)
    finally:
        os.close(program)


@dataclass(frozen=True)
class HelperCommand:
    """A long-lived helper's command (worker_command): bubblewrap's options (empty where bubblewrap is
    not usable) and the helper's own argv. start_helper starts it."""

    options: tuple[str, ...]
    argv: tuple[str, ...]


def worker_command(argv: list[str], *, read_only: tuple[str, ...] = (), env: dict | None = None) -> HelperCommand:
    """The command that runs a long-lived helper process (e.g. a checker that reads untrusted files
    for many actions of a build) in bubblewrap: no network, the host's /usr and libraries and the
    `read_only` paths visible read-only, nothing writable but a private /tmp, the environment `env`
    only, and the kernel's keyrings closed (start_helper). Where bubblewrap is not usable, argv itself
    (the build has already said so)."""
    bwrap = bwrap_path()
    if not bwrap:
        return HelperCommand((), tuple(argv))
    # no --die-with-parent: it fires when the *thread* that started the helper ends; the helper ends
    # when its stdin closes instead (hb exited, or gave it up)
    # bwrap is started by `env -i`: it stays in the sandbox as PID 1, whose /proc/1/environ the helper
    # can read (run_command passes it an empty environment itself)
    cmd = [shutil.which("env") or "/usr/bin/env", "-i", bwrap, *confinement(), *host_system_arguments(False)]
    cmd += [*proc_arguments(), "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in read_only:
        if os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    for key, value in {"PATH": FIXED_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(env or {})}.items():
        cmd += ["--setenv", key, value]
    return HelperCommand((*cmd, "--chdir", "/tmp"), tuple(argv))


def start_helper(command: HelperCommand | list[str], **popen_arguments) -> subprocess.Popen:
    """Start a helper (worker_command; a plain argv runs as it is). bubblewrap installs hb's seccomp filter
    (hermetic_build/seccomp.py) before the helper runs, as for run_command: the kernel's keyrings are not
    namespaced, and a helper subverted by the hostile bytes it parses read the session keyring of the
    user who builds (reproduced with a helper made to call keyctl)."""
    if not isinstance(command, HelperCommand):
        return subprocess.Popen(list(command), **popen_arguments)
    if not command.options:
        return subprocess.Popen(list(command.argv), **popen_arguments)
    with seccomp_arguments() as (seccomp, fds):
        return subprocess.Popen([*command.options, *seccomp, "--", *command.argv], pass_fds=fds, **popen_arguments)


def root_arguments(rootfs: Path) -> list[str]:
    """bubblewrap arguments that make a root filesystem's top-level entries `/`, read-only: directories
    and files bound, links recreated as links (never followed on the host). /proc, /dev, /tmp and the
    sandbox's own directory are the sandbox's, whatever the tree holds."""
    args = []
    reserved = {"proc", "dev", "tmp", SANDBOX_ROOT.strip("/")}
    for name in sorted(os.listdir(rootfs)):
        if name in reserved:
            continue
        path = rootfs / name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir() or path.is_file():
            args += ["--ro-bind", str(path), f"/{name}"]
    return args


def alias_key(alias: str) -> str:
    """The action-cache key under which the blob known by `alias` is recorded."""
    return blake3(f"hb-alias/1:{alias}".encode()).hexdigest()


def prepare_sandbox(parent: Path) -> tuple[Path, Path]:
    import tempfile

    from .leftovers import sandbox_prefix

    sandbox = Path(tempfile.mkdtemp(prefix=sandbox_prefix(), dir=parent))  # sb-<pid>-: swept once the pid is gone
    for sub in ("execroot", "home", "tmp"):
        (sandbox / sub).mkdir()
    return sandbox, sandbox / "execroot"


def _run_shell(execution: ActionExecution) -> None:
    params = execution.params
    code = execution.run_command(["/bin/bash", "-c", params["cmd"]], extra_env=params.get("env") or {})
    if code != 0:
        raise ActionFailed(f"command exited with status {code}")


register_action_kind("shell", "1", _run_shell)
