"""The executor: computes action keys, consults the action cache, runs what is missing in
parallel, and stores outputs in the CAS."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .action import Action, File, action_key, get_action_kind, key_fields
from .anchored import RefusedPath, describe, open_directory, open_subdirectory
from .digest import Digest
from .errors import ActionFailed, AnalysisError, HbError, IntegrityError, no_space
from .filecache import FileDigestCache
from .sandbox import FILE_VIEWS_DIR, ActionExecution, bwrap_path, isolation_note, prepare_sandbox
from .store.base import ActionResult, OutputEntry
from .leftovers import remove_tree
from .tree import MissingBlob, materialize_tree, store_tree, store_tree_in_place
from .treeviews import TreeViews


# download threads (io_bound action kinds, e.g. a conda package fetch), besides the `jobs` threads:
# a fetch mostly waits on the server and on the archive check's helpers; the plain-tools baseline
# of the benchmarks (benchmarks/conda.py) downloads on 8 threads too
IO_JOBS = 8


@dataclass
class ActionRecord:
    """What happened to one action in a build (also what `hb explain` compares next time)."""

    key: str
    fields: dict
    cached: bool
    result: ActionResult
    duration: float = 0.0


@dataclass
class BuildStats:
    executed: int = 0
    cached: int = 0
    records: dict[int, ActionRecord] = field(default_factory=dict)


class Executor:
    def __init__(self, workspace, store, actions: list[Action], file_cache: FileDigestCache, *,
                 jobs: int, reporter, keep_sandbox: bool = False, env: dict | None = None, load_kinds=None,
                 remote_executor=None):
        self.workspace = workspace
        self.store = store
        self.actions = actions
        self.file_cache = file_cache
        self.jobs = max(1, jobs)
        self.reporter = reporter
        self.keep_sandbox = keep_sandbox
        self.load_kinds = load_kinds  # imports rule modules on first need (a no-op build needs none)
        self.env = os.environ if env is None else env
        self.producers = {out.path: i for i, a in enumerate(actions) for out in a.outputs}
        self.stats = BuildStats()
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._rerun_locks: dict[int, threading.Lock] = {}
        self._rebuilt: set[int] = set()
        self._isolation_reported = False
        self._warming = False
        self._deleter: ThreadPoolExecutor | None = None
        self._deletions: list = []
        self._views: TreeViews | None = None  # read-only tree views (read_only_trees kinds)
        # emptied sandboxes of io_bound actions without inputs (downloads), taken by the next such action
        # instead of making (and later deleting) a new one: see _take_sandbox
        self._spare_sandboxes: list[Path] = []
        self.remote_executor = remote_executor  # rexec.client.RemoteExecutor: runs what is not local-only
        # directory outputs the build publishes under hb-out/: those a sandboxed action writes are
        # kept as they are after collection, so that publishing renames them instead of copying
        self.publish_in_place: frozenset[str] = frozenset()
        self._in_place: dict[str, tuple[Digest, Path]] = {}  # output path -> (digest, holder directory)
        self.before_run = None  # called with an action about to run here (the build clears its old outputs)

    # ----- scheduling ---------------------------------------------------------------------------
    def closure(self, files: list[File]) -> list[int]:
        """Indices of the actions needed to produce `files`, dependencies first."""
        needed: set[int] = set()
        stack = [self.producers[f.path] for f in files if f.path in self.producers]
        while stack:
            i = stack.pop()
            if i in needed:
                continue
            needed.add(i)
            stack.extend(self.producers[f.path] for f in self.actions[i].inputs if f.path in self.producers)
        return sorted(needed)

    def run(self, indices: list[int]) -> BuildStats:
        """Run the actions `indices` (dependencies first). Cache hits are settled on this thread,
        so a no-op build never touches the pool; misses run on up to `jobs` worker threads."""
        deps = {i: {self.producers[f.path] for f in self.actions[i].inputs if f.path in self.producers}
                for i in indices}
        dependents: dict[int, list[int]] = {i: [] for i in indices}
        for i, ds in deps.items():
            for d in ds:
                dependents[d].append(i)
        remaining = {i: len(ds) for i, ds in deps.items()}
        ready = deque(i for i in indices if remaining[i] == 0)
        self.reporter.start(len(indices))
        failure: BaseException | None = None

        def finished(i: int) -> None:
            for j in dependents[i]:
                remaining[j] -= 1
                if remaining[j] == 0:
                    ready.append(j)

        # nothing is fsynced per action: one syncfs when the run ends (LocalStore.deferred_durability),
        # on a thread of its own while the build publishes its outputs; close() waits for it
        local = getattr(self.store, "local", self.store)
        deferred = getattr(local, "deferred_durability", None)
        durability = deferred(background=True) if deferred is not None else contextlib.nullcontext()
        with durability, ThreadPoolExecutor(max_workers=self.jobs) as pool, \
                ThreadPoolExecutor(max_workers=self.io_jobs, thread_name_prefix="hb-io") as io_pool:
            running = {}
            while ready or running:
                while ready and failure is None:
                    i = ready.popleft()
                    try:
                        hit = self._try_cached(i)
                        io_bound = not hit and getattr(self._kind_of(self.actions[i]), "io_bound", False)
                    except BaseException as exc:  # noqa: BLE001 - reported after running ones finish
                        failure = exc
                        break
                    if hit:
                        finished(i)
                    else:
                        if not running:
                            self._start_warming(indices)
                        running[(io_pool if io_bound else pool).submit(self._run_uncached, i)] = i
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    try:
                        future.result()
                    except BaseException as exc:  # noqa: BLE001
                        failure = failure or exc
                        continue
                    finished(i)
        self.reporter.finish()
        if failure is not None:
            raise failure
        return self.stats

    @property
    def io_jobs(self) -> int:
        """Threads for io_bound actions (downloads): IO_JOBS, or one where the build runs one action at
        a time (-j 1)."""
        return 1 if self.jobs == 1 else max(self.jobs, IO_JOBS)

    def _kind_of(self, action: Action):
        """The registered kind of `action` (rule modules imported on first need), None if none is."""
        kind = get_action_kind(action.kind)
        if kind is None and self.load_kinds is not None:
            with self._lock:
                self.load_kinds()
            kind = get_action_kind(action.kind)
        return kind

    def _start_warming(self, indices: list[int]) -> None:
        """Once work has to run: call the warm hooks of the action kinds among `indices` that have one
        and whose actions are not settled yet, in one background thread (see ActionKind.warm). A hook
        that fails costs nothing: its action then loads what it needs itself and reports any error."""
        if self._warming:
            return
        self._warming = True
        hooks = []
        for kind_name in sorted({self.actions[i].kind for i in indices if i not in self.stats.records}):
            kind = get_action_kind(kind_name)
            if kind is not None and kind.warm is not None and kind.warm not in hooks:
                hooks.append(kind.warm)
        if not hooks:
            return

        def run_hooks() -> None:
            for hook in hooks:
                try:
                    hook()
                except Exception:  # noqa: BLE001 - only a head start; the action itself reports errors
                    pass

        threading.Thread(target=run_hooks, name="hb-warm", daemon=True).start()

    # ----- one action ---------------------------------------------------------------------------
    def input_digests(self, action: Action) -> dict[str, Digest]:
        digests = {}
        for f in action.inputs:
            if f.is_source:
                path = self.workspace.source_file(f.path)
                try:
                    with self._file_lock:
                        digests[f.path] = self.file_cache.digest(path)
                except FileNotFoundError:
                    raise AnalysisError(f"{action.owner}: source file {f.path} does not exist") from None
            else:
                record = self.stats.records.get(self.producers[f.path])
                if record is None:
                    raise HbError(f"internal: {f.path} needed before it was produced")
                entry = next(o for o in record.result.outputs if o.path == f.path)
                digests[f.path] = entry.digest
        return digests

    def key_of(self, action: Action) -> tuple[str, dict]:
        env = {k: self.env[k] for k in action.env_allowlist if k in self.env}
        fields = key_fields(action, self.input_digests(action), env,
                            self.upstream_keys(action) if action.dep_keys else None)
        return action_key(fields), fields

    def upstream_keys(self, action: Action) -> list[dict]:
        """The keys of every action whose outputs `action` reads, directly or through other actions,
        sorted: who (owner, mnemonic, first output) and the key. Each is known before `action` runs,
        and `action`'s own key is never among them (the graph has no cycles)."""
        seen: set[int] = set()
        stack = [self.producers[f.path] for f in action.inputs if not f.is_source]
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            stack.extend(self.producers[f.path] for f in self.actions[j].inputs if not f.is_source)
        found = []
        for j in seen:
            record = self.stats.records.get(j)
            if record is None:
                raise HbError(f"internal: the key of {self.actions[j].description} needed before it was known")
            a = self.actions[j]
            found.append({"owner": str(a.owner), "mnemonic": a.mnemonic,
                          "output": a.outputs[0].path if a.outputs else "", "key": record.key})
        return sorted(found, key=lambda d: (d["owner"], d["mnemonic"], d["output"], d["key"]))

    def _try_cached(self, i: int) -> bool:
        """Settle action i from the action cache if its result and output blobs are there."""
        action = self.actions[i]
        key, fields = self.key_of(action)
        result = self.cached_result(action, key)
        if result is None:
            return False
        with self._lock:
            self.stats.records[i] = ActionRecord(key, fields, True, result)
            self.stats.cached += 1
        self.reporter.action_done(action, cached=True, duration=0.0)
        return True

    def cached_result(self, action: Action, key: str) -> ActionResult | None:
        """The usable cached result of `action` under `key`: successful, describing exactly its declared
        outputs, every output blob present. None otherwise (what a build would run)."""
        result = self.store.get_action_result(key)
        if result is None or result.exit_code != 0:
            return None
        declared = {out.path: "dir" if out.is_directory else "file" for out in action.outputs}
        if {o.path: o.kind for o in result.outputs} != declared or len(result.outputs) != len(declared):
            # a well-formed entry that does not describe this action's outputs: planted or damaged
            reject = getattr(self.store, "reject_action_result", None)
            if reject is not None:
                reject(key, f"its outputs are not the declared outputs of {action.description}")
            return None
        if not all(self.store.has_blob(o.digest) for o in result.outputs):
            return None
        return result

    def _run_uncached(self, i: int) -> None:
        action = self.actions[i]
        for _attempt in range(3):
            key, fields = self.key_of(action)
            try:
                started = time.monotonic()
                result = self._execute(action, key)
            except MissingBlob as missing:
                # An input blob was corrupt or gone (and has been removed): rebuild its producer.
                self._rerun_producer_of(action, missing.digest)
                continue
            duration = time.monotonic() - started
            with self._lock:
                self.stats.records[i] = ActionRecord(key, fields, False, result, duration)
                self.stats.executed += 1
            self.reporter.action_done(action, cached=False, duration=duration)
            return
        raise IntegrityError(f"{action.owner}: inputs of {action.mnemonic} kept failing verification")

    def _rerun_producer_of(self, action: Action, digest: Digest) -> None:
        """An input could not be materialized: rebuild the producer of that blob, and of every other
        input whose blobs this machine does not hold (a remote that failed mid-build)."""
        local = getattr(self.store, "local", self.store)
        for f in action.inputs:
            if f.is_source or f.path not in self.producers:
                continue
            j = self.producers[f.path]
            record = self.stats.records.get(j)
            if record is None:
                continue
            entry = next(o for o in record.result.outputs if o.path == f.path)
            if entry.digest == digest or entry.kind == "dir" or not local.has_blob(entry.digest):
                self.rebuild(j)

    def rebuild(self, j: int) -> None:
        """Run action j again, ignoring its cached result (its outputs were found corrupt)."""
        with self._lock:
            lock = self._rerun_locks.setdefault(j, threading.Lock())
        with lock:
            if j in self._rebuilt:
                return
            self.reporter.warn(f"the cached outputs of {self.actions[j].description} could not be read (corrupt, "
                               "or the remote cache failed); rebuilding it")
            with self._lock:
                if self.stats.records[j].cached:
                    self.stats.cached -= 1
                else:
                    self.stats.executed -= 1
            self._run_uncached(j)
            self._rebuilt.add(j)

    def _execute(self, action: Action, key: str) -> ActionResult:
        kind = self._kind_of(action)
        if kind is None:
            raise ActionFailed(f"{action.owner}: no implementation registered for action kind {action.kind!r}")
        if self.remote_executor is not None and not kind.local_only:
            result = self._execute_remotely(action)
            if result is not None:
                self.store.put_action_result(key, result)
                return result
        if not self._isolation_reported and bwrap_path() is None:
            self._isolation_reported = True
            self.reporter.warn(isolation_note())
        reusable = kind.io_bound and not action.inputs
        sandbox, execroot = self._take_sandbox() if reusable else prepare_sandbox(self.store.tmp_dir)
        ok = False
        execution = ActionExecution(action, sandbox, execroot,
                                    {k: self.env[k] for k in action.env_allowlist if k in self.env},
                                    self.store, self.workspace.settings, bytearray(), bytearray(),
                                    {f.path: self.output_entry(f) for f in action.inputs if not f.is_source}, {},
                                    self.upstream_keys(action) if action.dep_keys else None)
        try:
            if self.before_run is not None:
                self.before_run(action)
            if kind.stage_inputs:
                isolated = bwrap_path() is not None
                self._stage_inputs(action, execution, kind.read_only_trees and isolated,
                                   kind.read_only_files and isolated)
            for out in action.outputs:
                _make_parents(execroot, out.path)
            try:
                kind.run(execution)
            except ActionFailed as exc:  # the action's own place (a lock file's line) and advice are kept
                raise self._failure(action, exc.message, execution, sandbox, location=exc.location,
                                    advice=exc.hint) from None
            except (HbError, MissingBlob):
                raise
            except Exception as exc:  # noqa: BLE001 - an action implementation bug, reported with its action
                import traceback

                raise self._failure(action, f"{type(exc).__name__}: {exc}", execution, sandbox,
                                    None if no_space(exc) else traceback.format_exc()) from exc
            outputs = self._collect_outputs(action, execution, sandbox)
            result = ActionResult(
                tuple(outputs), 0,
                self.store.put_blob(bytes(execution.stdout)), self.store.put_blob(bytes(execution.stderr)),
                {"mnemonic": action.mnemonic, "owner": str(action.owner),
                 **{f"recorded.{k}": v for k, v in sorted(execution.recorded.items())}},
            )
            self.store.put_action_result(key, result)
            ok = True
            return result
        finally:
            if ok and reusable and _holds_only_directories(sandbox):
                with self._lock:
                    self._spare_sandboxes.append(sandbox)
            elif ok or not self.keep_sandbox:
                self._discard(sandbox)

    def _take_sandbox(self) -> tuple[Path, Path]:
        """A sandbox for an io_bound action without inputs (a download): one an earlier such action left
        holding nothing but directories (its output was moved into the CAS, see _holds_only_directories),
        else a new one. The output's parent directories are then usually there already: a download
        creates one file instead of eight directories and a file, and deletes nothing (a cold build of
        300 packages made and deleted 2,400 directories). That matters where deletions are slow to be
        forgotten: ext4 without a journal makes each file created within a minute of a deletion skip
        every inode freed meanwhile."""
        with self._lock:
            if self._spare_sandboxes:
                sandbox = self._spare_sandboxes.pop()
                return sandbox, sandbox / "execroot"
        return prepare_sandbox(self.store.tmp_dir)

    def _execute_remotely(self, action: Action) -> ActionResult | None:
        """The result of running `action` on the remote executor; None when the engine is unreachable
        (then this and every later action of the build run locally, after one warning)."""
        from .store.remote import RemoteAuthError, RemoteUnavailable

        sources = {f.path: self.workspace.source_file(f.path) for f in action.inputs if f.is_source}
        entries = {f.path: self.output_entry(f) for f in action.inputs if not f.is_source}
        env = {k: self.env[k] for k in action.env_allowlist if k in self.env}
        try:
            return self.remote_executor.execute(action, sources, entries, env,
                                                self.workspace.settings.source_date_epoch)
        except (RemoteUnavailable, RemoteAuthError) as exc:
            with self._lock:
                if self.remote_executor is None:
                    return None
                self.remote_executor = None
            self.reporter.warn(f"remote executor unavailable ({exc}); running the remaining actions locally")
            return None

    def _collect_outputs(self, action: Action, execution, sandbox: Path) -> list[OutputEntry]:
        """Move the declared outputs into the CAS through descriptors anchored at the sandbox
        directory (which the command cannot replace: it is the bind mount's source). Every path
        component is opened with O_NOFOLLOW, so an output under a link, or that is a link, is
        refused and nothing outside the sandbox is read, moved or deleted."""
        sandbox_fd = os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return [self._collect_output(action, out, sandbox_fd, execution, sandbox) for out in action.outputs]
        finally:
            os.close(sandbox_fd)

    def _collect_output(self, action: Action, out: File, sandbox_fd: int, execution, sandbox: Path) -> OutputEntry:
        parent, _, name = f"execroot/{out.path}".rpartition("/")
        want = "a directory" if out.is_directory else "a regular file"
        try:
            dir_fd = open_directory(sandbox_fd, parent)
        except FileNotFoundError:
            raise self._failure(action, f"declared output {out.path} was not created", execution, sandbox) from None
        except RefusedPath as refused:
            raise self._failure(action, f"declared output {out.path} is not collected: "
                                f"{str(refused).removeprefix('execroot/')} (outputs are never collected through a "
                                "link)", execution, sandbox) from None
        except OSError as exc:
            raise self._failure(action, f"declared output {out.path} could not be read: {exc}",
                                execution, sandbox) from None
        try:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise self._failure(action, f"declared output {out.path} was not created", execution, sandbox) from None
            if out.is_directory != stat.S_ISDIR(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise self._failure(action, f"declared output {describe(dir_fd, name, out.path)}, not {want}",
                                    execution, sandbox)
            try:
                written = execution.written  # files the implementation hashed as it wrote them
                if out.is_directory:
                    tree_fd = open_subdirectory(dir_fd, name, out.path)
                    under = f"{out.path}/"
                    known = {path[len(under):]: w for path, w in written.items() if path.startswith(under)}
                    try:
                        if self._publishes_in_place(out, execution):
                            return OutputEntry(out.path, "dir", self._collect_in_place(out, dir_fd, name, tree_fd))
                        return OutputEntry(out.path, "dir", store_tree(self.store, tree_fd, move=True, known=known))
                    finally:
                        os.close(tree_fd)
                digest = (self.store.put_at(dir_fd, name, move=True, known=written[out.path]) if out.path in written
                          else self.store.put_at(dir_fd, name, move=True))
                return OutputEntry(out.path, "file", digest, bool(st.st_mode & stat.S_IXUSR))
            except RefusedPath as refused:
                where = f"{out.path}/{refused}" if out.is_directory else str(refused)
                raise self._failure(action, f"declared output {out.path} is not collected: {where}",
                                    execution, sandbox) from None
            except OSError as exc:  # e.g. a directory the command made unreadable (chmod 000)
                raise self._failure(action, f"declared output {out.path} could not be read: {exc}",
                                    execution, sandbox) from None
        finally:
            os.close(dir_fd)

    def _publishes_in_place(self, out: File, execution) -> bool:
        """Whether a directory output is collected in place: published by this build, written in
        bubblewrap (whose processes are all gone when it returns: nothing can change the tree
        after it is hashed), into a local store only (a remote one gets every blob as before)."""
        from .store.local import LocalStore

        return out.path in self.publish_in_place and execution.isolated and isinstance(self.store, LocalStore)

    def _collect_in_place(self, out: File, dir_fd: int, name: str, tree_fd: int) -> Digest:
        """Store the tree without moving its files (only blobs the store lacks are copied in); if it
        can be published as it is, rename it out of the sandbox into a new directory of hb's
        (sb-<pid>-..., swept if hb dies) for publish_tree_in_place."""
        import tempfile

        from .leftovers import sandbox_prefix

        digest, why = store_tree_in_place(self.store, tree_fd)
        if why is not None:
            return digest  # published from the store, as any output
        holder = Path(tempfile.mkdtemp(prefix=sandbox_prefix(), dir=self.store.tmp_dir))
        holder_fd = os.open(holder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.rename(name, "tree", src_dir_fd=dir_fd, dst_dir_fd=holder_fd)
            moved = os.stat("tree", dir_fd=holder_fd, follow_symlinks=False)
        except OSError:  # the tree stays in the sandbox; published from the store
            moved = None
        finally:
            os.close(holder_fd)
        hashed = os.fstat(tree_fd)
        if moved is None or (moved.st_dev, moved.st_ino) != (hashed.st_dev, hashed.st_ino):
            self._discard(holder)
            return digest
        with self._lock:
            previous = self._in_place.pop(out.path, None)
            self._in_place[out.path] = (digest, holder)
        if previous is not None:
            self._discard(previous[1])
        return digest

    def publish_tree_in_place(self, path: str, digest: Digest, dest: Path) -> bool:
        """Rename the collected tree of output `path` to `dest` (which must not exist) if it was kept
        and is the tree `digest`; False if not (then it is materialized from the store)."""
        with self._lock:
            kept = self._in_place.pop(path, None)
        if kept is None:
            return False
        kept_digest, holder = kept
        try:
            if kept_digest != digest:
                return False
            tree = holder / "tree"
            os.chmod(tree, 0o755)  # hb's own directory (checked when it was moved), as materialize_tree's caller makes the root
            os.rename(tree, dest)
            return True
        except OSError:  # e.g. hb-out/ on another filesystem than the cache
            return False
        finally:
            self._discard(holder)

    def _discard(self, sandbox: Path) -> None:
        """Delete a sandbox off the critical path: deleting an environment's thousands of files
        took as long as installing them. close() waits for the deletions."""
        with self._lock:
            if self._deleter is None:
                self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hb-delete")
            self._deletions.append(self._deleter.submit(remove_tree, sandbox))  # 0o555 directories too

    def close(self) -> None:
        """Discard the trees kept for publishing in place that were not published, then wait for the
        sandbox deletions and for the syncfs that makes the run's outputs durable."""
        with self._lock:
            kept, self._in_place = list(self._in_place.values()), {}
            spare, self._spare_sandboxes = self._spare_sandboxes, []
        for _digest, holder in kept:
            self._discard(holder)
        for sandbox in spare:
            self._discard(sandbox)
        if self._deleter is not None:
            self._deleter.shutdown(wait=True)
            self._deleter = None
        wait_for_durability = getattr(getattr(self.store, "local", self.store), "wait_for_durability", None)
        if wait_for_durability is not None:
            wait_for_durability()

    def _failure(self, action, message, execution, sandbox, trace: str | None = None, *, location=None,
                 advice: str | None = None) -> ActionFailed:
        out = bytes(execution.stdout).decode(errors="replace")[-4000:]
        err = bytes(execution.stderr).decode(errors="replace")[-4000:]
        detail = ""
        if out.strip():
            detail += f"--- stdout ---\n{out}\n"
        if err.strip():
            detail += f"--- stderr ---\n{err}\n"
        if trace:
            detail += trace
        hint = (f"the sandbox was kept at {sandbox}" if self.keep_sandbox
                else "re-run with --keep-sandbox to inspect the sandbox")
        return ActionFailed(f"{action.owner}: {action.mnemonic} failed: {message}", location=location,
                            hint=f"{advice}; {hint}" if advice else hint, detail=detail or None)

    def _stage_inputs(self, action: Action, execution: ActionExecution, views: bool = False,
                      file_views: bool = False) -> None:
        """Copy the action's inputs into its execution root; with `views`, bind directory inputs
        read-only from their tree views instead (only an empty mount point is made here); with
        `file_views`, hard-link generated file inputs from the local CAS into the sandbox's inputs/
        directory, which run_command binds read-only (no bytes copied, no inode made or later freed;
        copied as usual where a link cannot be made, e.g. the CAS on another file system)."""
        execroot = execution.execroot
        local = getattr(self.store, "local", self.store)
        for f in action.inputs:
            dest = execroot / f.path
            if file_views and not f.is_source and self._link_input(execution, local, f):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.is_source:
                src = self.workspace.source_file(f.path)
                shutil.copyfile(src, dest)
                shutil.copymode(src, dest)
                continue
            record = self.stats.records[self.producers[f.path]]
            entry = next(o for o in record.result.outputs if o.path == f.path)
            if entry.kind == "dir":
                view = self._tree_views().view(entry.digest) if views else None
                if view is not None:
                    dest.mkdir()
                    execution.tree_views[f.path] = view
                    continue
                materialize_tree(self.store, entry.digest, dest)
            else:
                if not self.store.fetch_file(entry.digest, dest):
                    raise MissingBlob(entry.digest)
                os.chmod(dest, 0o755 if entry.executable else 0o644)

    def _link_input(self, execution: ActionExecution, local, f: File) -> bool:
        """Hard-link the CAS blob of input f at sandbox/inputs/<path> (ActionExecution.file_views);
        False (nothing linked) where the blob is not in the local CAS or cannot be linked."""
        entry = self.output_entry(f)
        if entry.kind != "file" or not hasattr(local, "blob_path") or not local.has_blob(entry.digest):
            return False
        link = execution.sandbox_dir / FILE_VIEWS_DIR / f.path
        try:
            if not link.parent.is_dir():
                link.parent.mkdir(parents=True)
            os.link(local.blob_path(entry.digest), link, follow_symlinks=False)
        except OSError:
            return False
        execution.file_views[f.path] = link
        return True

    def _tree_views(self) -> TreeViews:
        with self._lock:
            if self._views is None:
                local = getattr(self.store, "local", self.store)
                self._views = TreeViews(self.store, local.root, local.tmp_dir)
            return self._views

    # ----- results to the workspace --------------------------------------------------------------
    def output_entry(self, f: File) -> OutputEntry:
        record = self.stats.records[self.producers[f.path]]
        return next(o for o in record.result.outputs if o.path == f.path)


def _holds_only_directories(sandbox: Path) -> bool:
    """Whether nothing but directories is left under sandbox (not following links): such a sandbox
    can be handed to another action as if new, since an action finds only the directories it makes."""
    pending = [str(sandbox)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        return False
                    pending.append(entry.path)
        except OSError:
            return False
    return True


def _make_parents(root: Path, path: str) -> None:
    """mkdir each parent directory of `path` under root, from the top down: one mkdir per level in
    a new sandbox (pathlib's mkdir(parents=True) first fails on every missing level, bottom up)."""
    parts = path.split("/")[:-1]
    current = str(root)
    for part in parts:
        current = f"{current}/{part}"
        try:
            os.mkdir(current)
        except FileExistsError:
            if not os.path.isdir(current):
                raise
