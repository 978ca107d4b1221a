"""`hb worker --bots grpc://host:port --instance NAME`: a worker for engines that take workers through
the Remote Workers API (Bots service: CreateBotSession / UpdateBotSession), e.g. BuildGrid.

It leases actions (a lease's payload is an Action or an Action digest), and runs only hb actions:
a Command whose argv is `python3 -P -m hermetic_build.worker_exec .hb/action.json` (anything else is
refused with FAILED_PRECONDITION). For each lease it reads the Action, Command and input root from
the CAS (every blob checked against its SHA-256; every directory converted into an hb tree and
validated by tree.py's strict checks before anything is written), materialises the input root with
tree.materialize_tree (new entries only, never through a link), runs worker_exec with this worker's
own Python, confined in bubblewrap (confine.py; the action's commands in their own bubblewrap inside it, as hb runs them locally), uploads the declared
outputs (collected through descriptors, never following a link) and reports the ActionResult and a
status on the lease. While an action runs, the session is kept alive every HEARTBEAT seconds; a
worker that dies stops heartbeating and the engine gives its lease to another worker."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..anchored import RefusedPath, open_directory, open_regular_file
from ..sandbox import FIXED_PATH
from ..store.reapi import ReapiStore
from ..store.remote import Signer
from ..tree import materialize_tree, restore_special_bits, store_tree
from . import confine
from .description import DESCRIPTION_PATH, BadDescription, check_path
from .merkle import (BlobIngest, RemoteTreeError, Upload, fetch_directories, hb_tree_to_reapi, reapi_tree_to_hb,
                     sha256_of_blob)

HEARTBEAT = 1.0  # seconds between UpdateBotSession calls while an action runs
LONG_POLL = 20.0  # seconds an idle UpdateBotSession may wait for work
MAX_MESSAGE = 1 << 20  # an Action or a Command
LEFT_GRACE = 0.5  # seconds an exiting process of a finished action may take to leave the fork server's sandbox
WORKER_MODULE = "hermetic_build.worker_exec"
PASSED_ENV = ("PYTHONPATH", "HB_RULE_MODULES")  # this worker's own settings, handed to worker_exec


def _rule_modules() -> list[str]:
    return [name.strip() for name in os.environ.get("HB_RULE_MODULES", "rules").split(",") if name.strip()]


@functools.cache
def _shared_actions_dir() -> Path:
    """The directory of the input roots of a confined fork server: one per process (0700, removed at exit)."""
    import atexit

    path = Path(tempfile.mkdtemp(prefix="hb-worker-actions-"))
    atexit.register(shutil.rmtree, path, True)
    confine.give_to_confined(path)  # where the worker is root, the confined user's (confine.py)
    return path


# what this worker reads of worker_exec's stdout or stderr: worker_exec keeps a command's output to
# about 8 MiB (sandbox.OUTPUT_LIMIT), so more comes only from a kind's Python gone wrong or subverted,
# which wrote into the worker's memory without end (a log read whole, or captured until the timeout)
MAX_LOG_BYTES = 16 << 20


def _read_log(directory: Path, name: str) -> bytes:
    """A log file the confined worker_exec wrote in `directory`, which it can write: read through
    descriptors that follow no link, only a regular file (a kind that replaced its stdout with a link to
    a file of the host had this worker upload that file as the action's stdout), to at most
    MAX_LOG_BYTES (then its first MAX_LOG_BYTES and a line saying how much was left out)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        fd, _opened = open_regular_file(dir_fd, name)
    except FileNotFoundError:
        return b""
    except (OSError, RefusedPath):
        return f"hb worker: {name} of the action is not a regular file\n".encode()
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_LOG_BYTES)
        size = os.fstat(f.fileno()).st_size
    if size > MAX_LOG_BYTES:
        data += f"\n[hb worker: {size - MAX_LOG_BYTES:,} more bytes of {name} left out]\n".encode()
    return data


class WorkerRefused(Exception):
    """This worker cannot run actions safely here (one line: why, and what to do)."""


class LeaseRefused(Exception):
    """A lease this worker will not run; code is a google.rpc code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _children(pid: int, tid: int | None = None) -> list[int] | None:
    """The PIDs of the children of task `tid` of process `pid` (/proc/PID/task/TID/children, one
    RCU-protected walk of the kernel's list per entry); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/children", "rb") as f:
            return [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        return None


def _confined_forkserver_process(bwrap_pid: int) -> int | None:
    """The host PID of the confined fork server: the only child of the sandbox's bubblewrap (this
    process's own child, `bwrap_pid`, whose PID cannot be reused before this process waits for it),
    the sandbox's pid 1 (confine.confined_executable: --as-pid-1). None where it is not exactly one."""
    children = _children(bwrap_pid)
    return children[0] if children is not None and len(children) == 1 else None


def forkserver_left_processes() -> str | None:
    """What the confined fork server's sandbox holds besides the fork server, between two actions (None:
    nothing; also a reason where that cannot be read, or the fork server has a thread: then the caller
    ends the sandbox all the same).

    A process an action leaves behind (double fork, setsid) would live on into the next actions, in the
    sandbox whose one writable directory holds their input roots (reproduced: it wrote into the next
    action's input root). Rather than find and signal such processes one by one (their PIDs can be
    reused; a fork bomb or a process that forks and exits in a loop outruns a scan of /proc), the
    worker ends the whole sandbox after an action that left any (end_confined_forkserver: the kernel
    ends every process of its PID namespace) and the next action starts a new fork server. A
    well-behaved action leaves none, so the fork server stays, and this costs two small reads.

    Why an empty list of the fork server's children proves that it is alone: the fork server is the
    namespace's init, so every other process of the sandbox descends from one of its children, and a
    process whose parent exits is reparented to it (or to a subreaper, itself a descendant) before that
    parent leaves its list of children. So while any other process exists, the list is never empty;
    reading its first entry is one walk under RCU, at one instant. The action's own worker_exec has
    been reaped when its exit status reaches this process. The fork server forks only when asked, and
    no action code can run in it (non-dumpable: rexec/forkserver_start.py), so once it is alone it
    stays alone. One thread only: the children of other threads would be other lists, read at other
    instants."""
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid
    if pid is None:
        return None
    server = _confined_forkserver_process(pid)
    if server is None:
        return f"its bubblewrap's children are {_children(pid)}, not the fork server alone"
    try:
        tasks = os.listdir(f"/proc/{server}/task")
    except OSError as exc:
        return f"its threads cannot be listed ({exc.strerror})"
    if tasks != [str(server)]:
        return f"the fork server has {len(tasks)} threads"
    # an action's own bubblewrap ends after its monitor, which this action's worker_exec waited for:
    # reparented to the fork server, it may still be there, exiting, or reaped by the fork server after
    # it reported the worker_exec's exit (measured: now and then). Read again for a short while; only the
    # last read decides, so this waits and proves nothing more
    deadline, delay = time.monotonic() + LEFT_GRACE, 0.001
    while True:
        children = _children(server)
        if children is None:
            return "the fork server's children cannot be read"
        if not children:
            return None
        if time.monotonic() >= deadline:
            return f"{len(children)} processes: " + ", ".join(_described(child) for child in children[:10])
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _described(pid: int) -> str:
    """'PID (NAME) STATE' of a process of the host, for the log."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read().decode(errors="replace")
        name, _, rest = stat_line.partition("(")[2].rpartition(")")
        return f"{pid} ({name[:32]}) {rest.split()[0] if rest.split() else '?'}"
    except OSError:
        return f"{pid} (gone)"


def _wait_for_exit(pidfd: int, seconds: float) -> bool:
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def end_confined_forkserver() -> None:
    """End the confined fork server with everything it forked; the next action starts a new one.
    The PID a confined fork server reports for a forked worker_exec is one of its sandbox's PID
    namespace (confine.OUTER): on the host it names another process, which multiprocessing's
    `kill()` and `terminate()` would signal (at a timeout, and for a daemon process still running
    when the worker exits). The fork server's own PID is the host's: the sandbox's bubblewrap (its
    script execs it), whose death ends the namespace and every process in it; a forked process's
    sentinel then reads EOF, so multiprocessing finds it ended. multiprocessing keeps that PID
    privately; the fields reset here are those its ensure_running resets when it finds the server
    dead (CPython 3.10 to 3.13)."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pidfd = None
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return
        # the sandbox's pid 1, the fork server, by a pidfd taken while it is still the child of the
        # bubblewrap this process started (so no other process that got its PID): its exit is the end of
        # the namespace, whose every other process the kernel kills and reaps first
        init = _confined_forkserver_process(pid)
        if init is not None:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(init)
            if pidfd is not None and _confined_forkserver_process(pid) != init:
                os.close(pidfd)
                pidfd = None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # else by --die-with-parent
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(server._forkserver_alive_fd)
        address = server._forkserver_address
        server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
    if isinstance(address, str) and address.startswith("/"):
        with contextlib.suppress(OSError):
            os.unlink(address)
    if pidfd is not None:
        # before the next action's input root is written: a process of this sandbox still running
        # (killed, not yet ended) could still write into it
        try:
            if not _wait_for_exit(pidfd, 60):
                raise RuntimeError("the confined fork server's sandbox did not end within 60 s of SIGKILL")
        finally:
            os.close(pidfd)


class BotWorker:
    def __init__(self, url: str, *, instance: str = "", workdir: Path | None = None, cache: Path | None = None,
                 bot_id: str | None = None, properties: tuple[tuple[str, str], ...] = (), timeout: float = 30.0,
                 log=None, preload: bool = True):
        from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
        from buildgrid._protos.google.rpc import code_pb2, status_pb2

        from ..store.local import LocalStore

        self.cas = ReapiStore(url, signer=Signer(None), timeout=timeout, instance_name=instance or None)
        self.pb = self.cas.protos
        self.bots_pb, self.worker_pb, self.code_pb, self.status_pb = bots_pb2, worker_pb2, code_pb2, status_pb2
        self.bots = bots_pb2_grpc.BotsStub(self.cas.channel)
        self._grpc = self.cas._grpc
        self.instance = self.cas.instance
        self.bot_id = bot_id or f"hb-{socket.gethostname()}-{os.getpid()}"
        self.properties = (("OSFamily", "linux"),) + tuple(properties)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hb-worker-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # input roots may hold setuid/setgid bits: only this user enters
        self.store = LocalStore(cache or self.workdir / "cache")
        self.ingest = BlobIngest(self.cas, self.store)
        self._sha_memo: dict = {}  # BLAKE3 hex -> SHA-256 hex of blobs of self.store
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.done: set[str] = set()
        self.ran = 0
        self._stop = threading.Event()
        self.preload = preload  # worker_exec forked from a pre-imported fork server (see _worker_exec)
        self._mp = None
        self._confined: bool | None = None  # decided at start (main) or at the first action (confine.py)

    # ----- the session -------------------------------------------------------------------------------
    def _session(self):
        wp = self.worker_pb
        device = wp.Device(handle="hb", properties=[wp.Device.Property(key=k, value=v) for k, v in self.properties])
        return self.bots_pb.BotSession(bot_id=self.bot_id, status=self.bots_pb.BotStatus.Value("OK"),
                                       worker=wp.Worker(devices=[device]))

    def stop(self) -> None:
        self._stop.set()

    def run(self, max_actions: int | None = None) -> None:
        grpc, bp = self._grpc, self.bots_pb
        session, failures = None, 0
        job: dict | None = None  # {"lease": id, "thread": Thread, "result": (status, ActionResult) or None}
        wake = threading.Event()
        while not self._stop.is_set():
            try:
                if session is None:
                    session = self.bots.CreateBotSession(
                        bp.CreateBotSessionRequest(parent=self.instance, bot_session=self._session()),
                        timeout=LONG_POLL)
                    self.log(f"hb worker {self.bot_id}: session {session.name} on {self.cas.target}")
                else:
                    busy = job is not None and job["result"] is None
                    session = self.bots.UpdateBotSession(
                        bp.UpdateBotSessionRequest(name=session.name, bot_session=session),
                        timeout=HEARTBEAT * 5 if busy else LONG_POLL)
                failures = 0
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DATA_LOSS):
                    self.log(f"hb worker {self.bot_id}: session lost ({code.name}: {exc.details()}); "
                             "starting a new one")
                    session = None
                    continue
                failures += 1
                self.log(f"hb worker {self.bot_id}: {code.name}: {exc.details()}; retrying")
                time.sleep(min(0.2 * 2 ** failures, 5))
                continue
            if job is not None and job["lease"] in self.done and not any(
                    lease.id == job["lease"] and lease.state == bp.LeaseState.Value("COMPLETED")
                    for lease in session.leases):
                job = None  # the engine has taken the result
                if max_actions is not None and self.ran >= max_actions:
                    break
            if job is None:
                for lease in session.leases:
                    if lease.state in (bp.LeaseState.Value("PENDING"), bp.LeaseState.Value("ACTIVE")) \
                            and lease.id not in self.done:
                        lease.state = bp.LeaseState.Value("ACTIVE")
                        job = {"lease": lease.id, "result": None}
                        self.log(f"hb worker {self.bot_id}: leased {lease.id}")
                        payload = lease.payload

                        def work(job=job, payload=payload):
                            job["result"] = self._work(payload)
                            wake.set()

                        job["thread"] = threading.Thread(target=work, daemon=True)
                        job["thread"].start()
                        break
            if job is not None and job["result"] is None:
                wake.wait(HEARTBEAT)
                wake.clear()
            if job is not None and job["result"] is not None:
                status, result = job["result"]
                for lease in session.leases:
                    if lease.id == job["lease"]:
                        lease.state = bp.LeaseState.Value("COMPLETED")
                        lease.status.CopyFrom(status)
                        if result is not None:
                            lease.result.Pack(result)
                self.done.add(job["lease"])

    # ----- one lease -----------------------------------------------------------------------------------
    def _work(self, payload):
        """(google.rpc.Status, REAPI ActionResult or None) for a lease's payload."""
        code = self.code_pb
        started = time.monotonic()
        try:
            action, action_sha = self._action(payload)
            result, kind = self._execute(action)
        except LeaseRefused as exc:
            self.log(f"hb worker {self.bot_id}: refused a lease: {exc}")
            return self.status_pb.Status(code=exc.code, message=str(exc)), None
        except (RemoteTreeError, BadDescription, RefusedPath) as exc:
            self.log(f"hb worker {self.bot_id}: refused a lease: {exc}")
            return self.status_pb.Status(code=code.FAILED_PRECONDITION, message=str(exc)), None
        except Exception as exc:  # noqa: BLE001 - reported to the engine, which may retry elsewhere
            self.log(f"hb worker {self.bot_id}: could not run a lease: {type(exc).__name__}: {exc}")
            return self.status_pb.Status(code=code.INTERNAL, message=f"{type(exc).__name__}: {exc}"), None
        self.ran += 1
        self.log(f"hb worker {self.bot_id}: ran {kind} action {action_sha[:12]} exit {result.exit_code} "
                 f"in {time.monotonic() - started:.2f}s")
        return self.status_pb.Status(code=code.OK), result

    def _message(self, cls, digest, what: str):
        data = self.cas.read_sha(digest.hash, digest.size_bytes, limit=MAX_MESSAGE)
        if data is None:
            raise LeaseRefused(self.code_pb.FAILED_PRECONDITION, f"{what} {digest.hash}/{digest.size_bytes} is "
                               "missing from the CAS or does not match its digest")
        message = cls()
        try:
            message.ParseFromString(data)
        except Exception:  # noqa: BLE001
            raise LeaseRefused(self.code_pb.INVALID_ARGUMENT, f"{what} is not a {cls.__name__} message") from None
        return message

    def _action(self, payload):
        pb = self.pb
        if payload.Is(pb.Action.DESCRIPTOR):
            action = pb.Action()
            payload.Unpack(action)
            return action, hashlib.sha256(action.SerializeToString(deterministic=True)).hexdigest()
        if payload.Is(pb.Digest.DESCRIPTOR):
            digest = pb.Digest()
            payload.Unpack(digest)
            return self._message(pb.Action, digest, "action"), digest.hash
        raise LeaseRefused(self.code_pb.INVALID_ARGUMENT, f"lease payload {payload.type_url} is neither an Action "
                           "nor a Digest")

    def _execute(self, action):
        pb, code = self.pb, self.code_pb
        command = self._message(pb.Command, action.command_digest, "command")
        argv = list(command.arguments)
        # the form hb's clients send, or the one clients before -P sent (this worker adds -P itself)
        if argv[1:] not in (["-P", "-m", WORKER_MODULE, DESCRIPTION_PATH], ["-m", WORKER_MODULE, DESCRIPTION_PATH]) \
                or not os.path.basename(argv[0]).startswith("python"):
            raise LeaseRefused(code.FAILED_PRECONDITION, f"hb worker runs only hb actions "
                               f"(python3 -P -m {WORKER_MODULE} {DESCRIPTION_PATH}), not {argv[:5]!r}")
        outputs = [check_path(p) for p in list(command.output_paths) or
                   list(command.output_files) + list(command.output_directories)]
        kind = next((p.value for p in action.platform.properties if p.name == "hb-kind"), "?")
        # worker_exec's environment is this worker's, never the Command's: the Command's variables reach
        # the process that runs bubblewrap and imports rule modules (PATH chose which `bwrap` ran, on
        # the host; LD_PRELOAD, PYTHONPATH, HB_RULE_MODULES...). The action's own variables travel in
        # the description, allow-listed, into the sandbox only. hb's client sends exactly PATH=FIXED_PATH.
        for var in command.environment_variables:
            if (var.name, var.value) != ("PATH", FIXED_PATH):
                raise LeaseRefused(code.FAILED_PRECONDITION, f"hb worker sets the environment of hb actions "
                                   f"itself: the Command may hold only PATH={FIXED_PATH}, not "
                                   f"{var.name[:40]!r}={var.value[:80]!r}")
        env = {"PATH": FIXED_PATH, **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
        # worker_exec ends itself when this worker dies (kill -9 of the worker ends its action too); not a
        # preexec_fn: Python code between fork and exec aborts in gRPC's fork handlers
        env["HB_WORKER_PID"] = str(os.getpid())
        root = self._actions_dir() / f"action-{uuid.uuid4().hex}"
        try:
            directory, children = fetch_directories(self.cas, pb, action.input_root_digest.hash,
                                                    action.input_root_digest.size_bytes)
            tree = reapi_tree_to_hb(pb, directory, children, self.ingest)
            materialize_tree(self.store, tree, root)
            if self.confined():
                confine.give_to_confined(root)  # before the special bits: a chown clears setgid
            restore_special_bits(self.store, tree, root)  # e.g. a base image's /tmp (1777): workdir is 0700
            timeout = action.timeout.seconds or None
            exit_code, stdout, stderr = self._worker_exec(root, env, timeout)
            result = pb.ActionResult(exit_code=exit_code)
            upload = Upload()
            if exit_code == 0:
                self._collect(root, outputs, result, upload)
            for data, field in ((stdout, "stdout_digest"), (stderr, "stderr_digest")):
                sha = hashlib.sha256(data).hexdigest()
                upload.blobs[sha] = (len(data), data)
                getattr(result, field).CopyFrom(pb.Digest(hash=sha, size_bytes=len(data)))
            self.cas.upload_sha(upload.blobs)
            result.execution_metadata.worker = self.bot_id
            return result, kind
        finally:
            shutil.rmtree(root, ignore_errors=True)
            if self._shares_actions_dir():
                self._sweep_actions_dir(_shared_actions_dir())

    def _sweep_actions_dir(self, directory: Path) -> None:
        """Remove what an action left in the directory of the input roots besides its own (a confined
        kind may write there: it holds its own root): after each action, with none running (a worker runs
        one at a time), so nothing of one action is there for the next ones to find, nor fills the disk.
        The directory is this worker's; what is in it, its actions' (links are removed, never followed)."""
        def writable_and_again(function, path, _exc_info):
            # a directory the action made unreadable or unwritable: its owner (the confined user, or
            # this worker as root) opens it, then it is removed; a link is never chmod-ed (nor followed)
            for where in (os.path.dirname(path), path):
                with contextlib.suppress(OSError):
                    if not os.path.islink(where) and os.path.isdir(where):
                        os.chmod(where, 0o700)
            with contextlib.suppress(OSError):
                function(path)

        left = []
        for entry in os.scandir(directory):
            left.append(entry.name)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=writable_and_again)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        if left:
            self.log(f"hb worker {self.bot_id}: removed what an action left beside its directory: "
                     f"{', '.join(sorted(left)[:5])}{' ...' if len(left) > 5 else ''}")

    def _worker_exec(self, root: Path, env: dict, timeout: int | None) -> tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of worker_exec in the input root `root`. By default in a process
        forked from a fork server that has imported hb and the rule modules once (multiprocessing's
        forkserver: started with exec, so never a fork of this gRPC process), which saves each action
        a fresh interpreter and its imports; with preload off, `python3 -m hermetic_build.worker_exec`."""
        code = self.code_pb
        if not self.preload:
            confined = []
            if self.confined():  # only this action's directory writable; ends with this worker (--die-with-parent)
                env = {k: v for k, v in env.items() if k != "HB_WORKER_PID"}
                confined = [*confine.confinement_argv(root, env, _rule_modules())[:-1], "--chdir", str(root), "--"]
            # its stdout and stderr go to files of this worker's, outside the action's directory, read
            # back within MAX_LOG_BYTES (captured, they were held whole until the timeout, if any)
            logs = Path(tempfile.mkdtemp(prefix="logs-", dir=self.workdir))
            try:
                with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
                    # -P: `-m` would put the working directory, the input root, first on sys.path, where a
                    # package `hermetic_build` of the input root would stand in for this worker's hb
                    proc = subprocess.run([*confined, sys.executable, "-P", "-m", WORKER_MODULE, DESCRIPTION_PATH],
                                          cwd=root, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                          timeout=timeout)
                return proc.returncode, _read_log(logs, "stdout"), _read_log(logs, "stderr")
            except subprocess.TimeoutExpired as exc:
                raise LeaseRefused(code.DEADLINE_EXCEEDED, f"the action ran longer than {timeout} s") from exc
            finally:
                shutil.rmtree(logs, ignore_errors=True)
        from ..worker_exec import run_forked

        logs = Path(tempfile.mkdtemp(prefix="logs-", dir=self._actions_dir()))
        if self.confined():
            confine.give_to_confined(logs)
        try:
            env = {k: v for k, v in env.items() if k != "HB_WORKER_PID"}  # the fork server is the parent
            process = self._forkserver().Process(target=run_forked, args=(
                str(root), env, str(logs / "stdout"), str(logs / "stderr")), daemon=True)
            process.start()
            try:
                process.join(timeout)
                if process.exitcode is None:
                    raise LeaseRefused(code.DEADLINE_EXCEEDED, f"the action ran longer than {timeout} s")
            finally:
                if process.exitcode is None:  # past its timeout, or this worker interrupted: ended now
                    if self.confined():
                        end_confined_forkserver()  # never by its PID, which is one of the sandbox's namespace
                    else:
                        process.kill()
                    process.join()
                elif self.confined() and (left := forkserver_left_processes()) is not None:
                    # no process of an action outlives it: the sandbox of the fork server, which runs the
                    # next actions, is ended with whatever this one left there (forkserver_left_processes)
                    self.log(f"hb worker {self.bot_id}: the fork server's sandbox is ended after an action "
                             f"({left})")
                    end_confined_forkserver()
            out = [_read_log(logs, name) for name in ("stdout", "stderr")]
            return process.exitcode, out[0], out[1]
        finally:
            shutil.rmtree(logs, ignore_errors=True)

    def _forkserver(self):
        if self._mp is None:
            import multiprocessing

            self._mp = multiprocessing.get_context("forkserver")
            modules = _rule_modules()
            # forkserver_start first: the fork server non-dumpable before anything else (its doc)
            self._mp.set_forkserver_preload(["hermetic_build.rexec.forkserver_start", "hermetic_build.worker_exec",
                                             *modules])
            if self.confined():  # the fork server and every worker_exec it forks: see _actions_dir
                env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
                script = confine.confined_executable(_shared_actions_dir(), env, modules)
                if script is not None:
                    self._mp.set_executable(str(script))
                    # before multiprocessing's own exit handler (atexit runs the last registered first),
                    # which would terminate a running worker_exec by its PID (end_confined_forkserver)
                    import atexit

                    atexit.register(end_confined_forkserver)
        return self._mp

    def confined(self) -> bool:
        """Whether worker_exec runs confined (confine.py): where bubblewrap nests here. Said once. As root,
        always, or WorkerRefused: worker_exec never runs as the host's uid 0 (confine.root_refusal)."""
        if self._confined is None:
            refusal = confine.root_refusal()
            if refusal:
                raise WorkerRefused(refusal)
            why = confine.nesting_works()
            self._confined = why is None
            if why is None:
                confine.make_non_dumpable()
            else:
                self.log(f"hb worker {self.bot_id}: worker_exec runs unconfined (an action kind's Python sees this "
                         f"worker's files; its commands are still sandboxed): {why}")
        return self._confined

    def _actions_dir(self) -> Path:
        """Where input roots are made: the workdir's actions/, or with a confined fork server (started once
        per process by multiprocessing, whose sandbox has one writable directory) one directory of this
        process. Never the workdir itself, which holds this worker's store."""
        if self._shares_actions_dir():
            return _shared_actions_dir()  # (as root: the workdir is root's 0700, closed to the confined user)
        actions = self.workdir / "actions"
        actions.mkdir(mode=0o700, exist_ok=True)
        return actions

    def _shares_actions_dir(self) -> bool:
        return self.confined() and (self.preload or confine.host_ids() is not None)

    def _collect(self, root: Path, outputs: list[str], result, upload: Upload) -> None:
        """Declared outputs present in the working directory, read through descriptors (a link, or
        an output under one, is not collected; the client then reports the output as missing)."""
        pb = self.pb
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for path in sorted(outputs):
                parent, _, name = path.rpartition("/")
                try:
                    dir_fd = open_directory(root_fd, parent) if parent else os.dup(root_fd)
                except (FileNotFoundError, RefusedPath, NotADirectoryError):
                    continue
                try:
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        digest = self.store.put_at(dir_fd, name, fsync=False)
                        sha = self.ingest_sha(digest)
                        upload.blobs[sha] = (digest.size, self.store.blob_path(digest))
                        mode = stat.S_IMODE(st.st_mode)
                        props = pb.NodeProperties()
                        props.unix_mode.value = mode
                        result.output_files.add(path=path, digest=pb.Digest(hash=sha, size_bytes=digest.size),
                                                is_executable=bool(mode & 0o100), node_properties=props)
                    elif stat.S_ISDIR(st.st_mode):
                        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                        try:
                            tree = store_tree(self.store, sub)
                        finally:
                            os.close(sub)
                        result.output_directories.add(path=path, tree_digest=self._tree_message(tree, upload))
                finally:
                    os.close(dir_fd)
        finally:
            os.close(root_fd)

    def ingest_sha(self, digest) -> str:
        """The SHA-256 of a blob of this worker's store (remembered both ways)."""
        sha = sha256_of_blob(self.store, digest, self._sha_memo)
        self.ingest.memo[sha] = digest
        return sha

    def _tree_message(self, tree, upload: Upload):
        """A REAPI Tree (root + every subdirectory) of an hb tree, with its blobs added to upload."""
        pb = self.pb
        local = Upload()
        root_sha, _size = hb_tree_to_reapi(pb, self.store, tree, local, self._sha_memo, {})
        upload.blobs.update(local.blobs)
        messages = {}
        for sha, (_n, data) in local.blobs.items():
            if isinstance(data, (bytes, bytearray)):
                messages[sha] = data
        root = pb.Directory()
        root.ParseFromString(messages[root_sha])
        children, seen, stack = [], set(), [d.digest.hash for d in root.directories]
        while stack:
            sha = stack.pop()
            if sha in seen:
                continue
            seen.add(sha)
            child = pb.Directory()
            child.ParseFromString(messages[sha])
            children.append(child)
            stack.extend(d.digest.hash for d in child.directories)
        message = pb.Tree(root=root, children=children)
        data = message.SerializeToString(deterministic=True)
        sha = hashlib.sha256(data).hexdigest()
        upload.blobs[sha] = (len(data), data)
        return pb.Digest(hash=sha, size_bytes=len(data))


def main(url: str, instance: str, workdir: str | None, cache: str | None, bot_id: str | None,
         properties: tuple[str, ...], max_actions: int | None, preload: bool = True) -> int:
    props = []
    for p in properties:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ValueError(f"--property {p!r}: write KEY=VALUE")
        props.append((key, value))
    worker = BotWorker(url, instance=instance, workdir=Path(workdir) if workdir else None,
                       cache=Path(cache) if cache else None, bot_id=bot_id, properties=tuple(props), preload=preload)
    worker.confined()  # as root, refused here rather than at the first lease (WorkerRefused)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    try:
        worker.run(max_actions)
    except KeyboardInterrupt:
        pass
    return 0
