"""One hb invocation on a workspace: rules, analysis (cached), execution, outputs, records."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import importlib.util
import json
import os
import pickle
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

from . import __version__, background_write, noop
from .action import MANIFEST_NAME
from .errors import UsageError
from .jobs import BackgroundJobs
from .label import Label, TargetPattern
from .leftovers import publish_temp_prefix, sweep
from .report import Reporter
from .store.local import LocalStore
from .workspace import (OUTPUT_DIR, REMOTE_CACHE_SCHEMES, REMOTE_EXECUTOR_SCHEMES, WORKSPACE_FILE, Workspace,
                        read_regular_file, remote_url_problem)

# analysis (Starlark, the rules), the executor and the tree code are imported where they are used:
# a no-op build answered by noop.py needs none of them
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .action import File
    from .analysis import AnalysisResult
    from .executor import BuildStats, Executor

ANALYSIS_CACHE_VERSION = 2
PUBLISH_THREADS = 8  # files copied into hb-out/ at once (tree.materialize_tree): on a busy disk each create waits


@dataclass
class BuildSummary:
    targets: dict[str, list[dict]]
    executed: int
    cached: int
    seconds: float
    stats: BuildStats = field(repr=False, default=None)
    recorded: dict | None = None  # facts actions recorded, by their first output (None: from stats)
    noop: bool = False  # answered by the no-op record, without analysis or per-action work

    def recorded_facts(self) -> dict:
        if self.recorded is not None:
            return self.recorded
        recorded = {}
        for record in (self.stats.records.values() if self.stats else ()):
            facts = {k[9:]: v for k, v in record.result.metadata.items() if k.startswith("recorded.")}
            if facts:
                recorded[record.result.outputs[0].path] = facts  # keyed by the action's (first) output
        return dict(sorted(recorded.items()))

    def to_json(self) -> dict:
        recorded = self.recorded_facts()
        return {
            "targets": self.targets,
            "actions": {"executed": self.executed, "cached": self.cached},
            "seconds": round(self.seconds, 3),
            **({"recorded": recorded} if recorded else {}),
            **({"noop": True} if self.noop else {}),
        }


def _check_remote_url(option: str, url: str, schemes: tuple[str, ...]) -> None:
    """A remote URL given on the command line (hermetic.toml's were checked when it was read)."""
    problem = remote_url_problem(url, schemes)
    if problem:
        raise UsageError(f"{option} {url!r} {problem}",
                         hint="use http(s)://host/prefix, oci://host/repository or grpc(s)://host:port[/instance]"
                         if "http" in schemes else "use grpc://host:port, grpcs://host:port or grpc://host:port/INSTANCE")


def _stamp(path: Path):
    """(size, mtime) as a list, so it compares equal after a JSON round trip."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class RemoteOptions:
    url: str | None = None
    upload: bool | None = None  # None: the workspace setting
    required: bool = False
    timeout: int | None = None
    executor: str | None = None  # --remote-executor URL
    download: str | None = None  # --remote-download: minimal | all (None: the workspace setting)


def _require_trusted_settings(workspace: Workspace, remote: RemoteOptions) -> None:
    """Refuse hermetic.toml's settings that reach outside the workspace until you trust them
    (trust.py); one the command line overrides (--remote-cache, --remote-executor) does not count."""
    from .trust import require_trusted

    overridden = {"remote_cache"} if remote.url else set()
    overridden |= {"remote_executor"} if remote.executor else set()
    require_trusted(workspace.root, tuple(s for s in workspace.settings.privileged if s.key not in overridden))


class Session:
    def __init__(self, workspace: Workspace, *, jobs: int = 0, reporter: Reporter | None = None,
                 keep_sandbox: bool = False, remote: RemoteOptions | None = None):
        self.workspace = workspace
        self.settings = workspace.settings
        remote = remote or RemoteOptions()
        _require_trusted_settings(workspace, remote)
        self.jobs = jobs or self.settings.jobs or os.cpu_count() or 1
        self.reporter = reporter or Reporter()
        self.keep_sandbox = keep_sandbox
        self.local_store = LocalStore(self.settings.cache_dir, setting=self.settings.cache_dir_setting or None)
        self.remote = None
        self.store = self.local_store
        url = remote.url or self.settings.remote_cache
        if url:
            _check_remote_url("--remote-cache", url, REMOTE_CACHE_SCHEMES)
            from .redact import redact_url
            from .store.factory import open_remote
            from .store.remote import GuardedRemote
            from .store.tiered import TieredStore

            timeout = remote.timeout or self.settings.remote_timeout
            self.remote = GuardedRemote(open_remote(url, timeout=timeout, local=self.local_store,
                                                    instance_name=self.settings.remote_instance_name or None),
                                        required=remote.required, warn=self.reporter.warn,
                                        url=redact_url(url))  # shown and recorded in last-build.json
            upload = self.settings.remote_upload if remote.upload is None else remote.upload
            self.store = TieredStore(self.local_store, self.remote, upload=upload)
            if remote.required:
                self.remote.probe(upload)
        self.remote_executor = None
        executor_url = remote.executor or self.settings.remote_executor
        if executor_url:
            _check_remote_url("--remote-executor", executor_url, REMOTE_EXECUTOR_SCHEMES)
            self.remote_executor = self._open_executor(executor_url, remote.timeout or self.settings.remote_timeout,
                                                       remote.download or self.settings.remote_download,
                                                       upload if self.remote is not None else False)
        ws_id = blake3(str(workspace.root).encode()).hexdigest()[:16]
        self.state_dir = self.settings.cache_dir / "workspaces" / ws_id
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._rules = None
        self._analyses: dict[tuple, AnalysisResult] = {}
        self._removals = BackgroundJobs("hb-out-removal", daemon=True)  # deleting directories hb-out/ no longer shows
        self._publish_lock = threading.RLock()  # with _publish_fd, the flock on hb-out/ (publishing)
        self._publish_fd: int | None = None

    def _open_executor(self, url: str, timeout: int, download: str, uploads_results: bool):
        """The remote executor; with download "minimal", self.store becomes a LazyOutputs in front of
        the engine's CAS, so that outputs left there are fetched when something here reads them."""
        from .errors import UsageError

        try:
            from .rexec.client import RemoteExecutor
            from .rexec.outputs import DOWNLOAD_MODES, LazyOutputs, RemoteBlobIndex

            if download not in DOWNLOAD_MODES:
                raise UsageError(f"--remote-download {download!r}: use one of {', '.join(DOWNLOAD_MODES)}")
            executor = RemoteExecutor(url, local=self.local_store, store=self.store, timeout=timeout,
                                      instance_name=self.settings.remote_instance_name or None,
                                      cafile=os.environ.get("HB_REMOTE_CA"))
            if download == "minimal":
                index = RemoteBlobIndex(self.settings.cache_dir, executor.cas.endpoint)
                cache = getattr(self.remote, "remote", None)  # the remote cache's own store
                shared = cache if getattr(cache, "endpoint", None) == executor.cas.endpoint else None
                self.store = LazyOutputs(self.store, self.local_store, executor.cas, index,
                                         uploads_results=uploads_results, shared_cache=shared)
                executor.leave_outputs(self.store, index)
            return executor
        except ImportError as exc:
            raise UsageError(f"--remote-executor needs the reapi extra: {exc}",
                             hint="pip install 'hermetic-build[reapi]' (buildgrid, grpcio)") from None
        except ValueError as exc:
            raise UsageError(f"bad remote executor URL {url!r}: {exc}",
                             hint="grpc://host:port, grpcs://host:port or grpc://host:port/INSTANCE") from None

    # ----- rules ---------------------------------------------------------------------------------
    def rules(self):
        if self._rules is None:
            from .rule import registered_rules

            for name in self.settings.rule_modules:
                try:
                    importlib.import_module(name)
                except ImportError as exc:
                    raise UsageError(f"cannot import rule module {name!r}: {exc}",
                                     hint=f"check rule_modules in {WORKSPACE_FILE}") from None
            from . import sandbox  # noqa: F401 - registers the core "shell" action kind

            self._rules = registered_rules()
        return self._rules

    def _code_stamp(self) -> list:
        """(path, stamp) of every .py file of hb and of the rule modules, as they are found now."""
        dirs = [Path(__file__).parent]
        for name in self.settings.rule_modules:
            spec = importlib.util.find_spec(name)
            if spec is not None:
                dirs.extend(Path(p) for p in (spec.submodule_search_locations or [spec.origin]))
        stamps = []
        for d in dirs:
            if d.is_file():
                stamps.append((str(d), noop.stamp(str(d))))
                continue
            for root, dirnames, files in os.walk(d):
                dirnames.sort()
                stamps.extend((path, noop.stamp(path)) for path in
                              (os.path.join(root, f) for f in sorted(files) if f.endswith(".py")))
        return stamps

    # ----- analysis --------------------------------------------------------------------------------
    def analyze(self, patterns: list[str], current_package: str = "", use_cache: bool = True) -> AnalysisResult:
        """The analysis of `patterns`: from this session's memory (`hb query` asks again for each
        sub-expression), the analysis cache, or a fresh analysis."""
        key = (tuple(patterns), current_package)
        if use_cache and key in self._analyses:
            return self._analyses[key]
        self._analyses[key] = analysis = self._analyze(patterns, current_package, use_cache)
        return analysis

    def _analyze(self, patterns: list[str], current_package: str, use_cache: bool) -> AnalysisResult:
        cache_file = self.state_dir / (
            "analysis-" + blake3(json.dumps([patterns, current_package]).encode()).hexdigest()[:16] + ".pickle")
        enabled = gc.isenabled()
        gc.disable()  # (un)pickling and analysis allocate many objects that all stay alive
        try:
            analysis = self._load_analysis(cache_file, patterns, current_package) if use_cache else None
            if analysis is None:
                from .analysis import Analyzer

                analyzer = Analyzer(self.workspace, self.rules(), self.state_dir / "memo")
                analysis = analyzer.analyze(patterns, current_package)
                self._save_analysis(cache_file, patterns, current_package, analysis)
        finally:
            if enabled:
                gc.enable()
        gc.freeze()  # later collections (the build) need not scan the analysis again and again
        return analysis

    def _fingerprint(self, patterns, current_package, analysis: AnalysisResult) -> dict:
        from .scan import all_packages

        root = self.workspace.root
        files = {WORKSPACE_FILE, *analysis.packages.values(), *analysis.loads, *analysis.read_files}
        scans = {}
        for text in patterns:
            with contextlib.suppress(ValueError):
                pattern = TargetPattern.parse(text, current_package)
                if pattern.recursive:
                    scans[pattern.package] = all_packages(self.workspace, pattern.package)
        return {
            "version": [ANALYSIS_CACHE_VERSION, __version__],
            "code": self._code_stamp(),
            "files": {f: _stamp(root / f) for f in sorted(files)},
            "scans": scans,
        }

    def _load_analysis(self, cache_file: Path, patterns, current_package) -> AnalysisResult | None:
        background_write.wait_for(cache_file)
        from .statefile import open_own_file

        f = open_own_file(cache_file)  # a pickle: only one this user wrote (statefile.py)
        if f is None:
            return None
        try:
            with f:
                fingerprint, analysis = pickle.load(f)
        except (FileNotFoundError, EOFError, pickle.UnpicklingError, AttributeError, ImportError,
                ValueError, TypeError):
            return None
        if fingerprint["version"] != [ANALYSIS_CACHE_VERSION, __version__]:
            return None
        from .scan import all_packages, glob_fingerprint

        root = self.workspace.root
        if any(_stamp(root / f) != stamp for f, stamp in fingerprint["files"].items()):
            return None
        if any(all_packages(self.workspace, p) != found for p, found in fingerprint["scans"].items()):
            return None
        if fingerprint["code"] != self._code_stamp() or not glob_fingerprint(self.workspace, analysis.globs):
            return None
        return analysis

    def _save_analysis(self, cache_file: Path, patterns, current_package, analysis: AnalysisResult) -> None:
        fingerprint = self._fingerprint(patterns, current_package, analysis)
        # pickled on another core while the command goes on (hb waits for it before it exits)
        background_write.write_pickle(cache_file, (fingerprint, analysis), _atomic_write)

    # ----- execution -------------------------------------------------------------------------------
    def executor(self, analysis: AnalysisResult) -> Executor:
        from .executor import Executor
        from .filecache import FileDigestCache

        return Executor(self.workspace, self.store, analysis.actions,
                        FileDigestCache(self.state_dir / "file-digests.pickle"),
                        jobs=self.jobs, reporter=self.reporter, keep_sandbox=self.keep_sandbox,
                        load_kinds=self.rules, remote_executor=self.remote_executor)

    def build(self, patterns: list[str], current_package: str = "") -> BuildSummary:
        started = time.monotonic()
        request = noop.Request(tuple(patterns), current_package)
        with self.store.lock():
            self.local_store.sweep_leftovers()  # sandboxes and temp files of builds killed mid-way
            sweep(self.state_dir)
            summary = self._noop(request, started)
            if summary is not None:
                self._save_last_build(0, summary.cached)
                return summary
            noop.forget(self.state_dir)  # whatever happens next, the last record no longer holds
            analysis = self.analyze(patterns, current_package)
            executor = self.executor(analysis)
            wanted = [f for label in analysis.requested for f in analysis.targets[label].files]
            indices = executor.closure(wanted)
            executor.publish_in_place = frozenset(f.path for f in wanted if not f.is_source)
            executor.before_run = lambda action: self._unpublish_before_run(action, executor.publish_in_place)
            try:
                stats = executor.run(indices)
                targets = self._publish(analysis, executor)
            finally:
                executor.file_cache.save()
                self._save_records(executor)
                executor.close()
                with contextlib.suppress(OSError):  # after a failure: old outputs removed before it
                    self._wait_for_removals()
            summary = BuildSummary(targets, stats.executed, stats.cached, 0.0, stats)
            self._record_noop(request, analysis, executor, indices, summary)
        self._save_last_build(stats.executed, stats.cached, stats)
        summary.seconds = time.monotonic() - started
        return summary

    # ----- the no-op shortcut (noop.py) ------------------------------------------------------------
    def _noop(self, request: noop.Request, started: float) -> BuildSummary | None:
        """The summary of the last build, if nothing it depended on changed since."""
        if self.remote is not None:
            return None
        record = noop.load(self.state_dir)
        if record is None:
            return None
        from .scan import all_packages, glob_fingerprint

        why = noop.why_not(record, request, self._code_stamp(), os.environ,
                           lambda package: all_packages(self.workspace, package),
                           lambda globs: glob_fingerprint(self.workspace, globs))
        if why is not None:
            return None
        done = record.summary
        self.reporter.start(0)
        return BuildSummary(done["targets"], 0, done["actions"], time.monotonic() - started,
                            recorded=done["recorded"], noop=True)

    def _record_noop(self, request: noop.Request, analysis: AnalysisResult, executor: Executor,
                     indices: list[int], summary: BuildSummary) -> None:
        if self.remote is not None:
            return
        from .scan import all_packages

        root = self.workspace.root
        files = {WORKSPACE_FILE, *analysis.packages.values(), *analysis.loads, *analysis.read_files}
        followed = [str(root / f) for f in files]
        published = []
        for label in analysis.requested:
            for f in analysis.targets[label].files:
                (followed if f.is_source else published).append(str(root / f.path))
        env_names = set()
        for i in indices:
            action = executor.actions[i]
            env_names.update(action.env_allowlist)
            followed.extend(str(root / f.path) for f in action.inputs if f.is_source)
        scans = {}
        for text in request.patterns:
            with contextlib.suppress(ValueError):
                pattern = TargetPattern.parse(text, request.current_package)
                if pattern.recursive:
                    scans[pattern.package] = all_packages(self.workspace, pattern.package)
        noop.save(self.state_dir, request=request, code=self._code_stamp(),
                  env={name: os.environ.get(name) for name in env_names}, scans=scans, globs=analysis.globs,
                  followed=followed, published=published, cache=self.local_store.eviction_signals(),
                  summary={"targets": summary.targets, "recorded": summary.recorded_facts(),
                           "actions": len(indices)})

    @contextlib.contextmanager
    def publishing(self):
        """Hold hb-out/ for publishing: builds of one workspace (two terminals, CI jobs sharing a
        checkout) take turns replacing what it shows, else one renamed its tree onto the directory
        the other had just published there and failed ("Directory not empty"). An flock on the
        hb-out/ directory itself: no file to leave behind, whatever cache each build uses. Reentrant
        (publishing may rebuild an output whose blobs are gone, and that action's before_run takes it)."""
        with self._publish_lock:
            if self._publish_fd is not None:
                yield
                return
            self._publish_fd = self._lock_output_root()
            try:
                yield
            finally:
                os.close(self._publish_fd)
                self._publish_fd = None

    def _lock_output_root(self) -> int:
        """An flock'ed descriptor of hb-out/ as it is now: `hb clean` deletes hb-out/ while holding
        it, so a build that waited for it locks the new one (made again) instead of publishing into
        the deleted directory, where its outputs would vanish."""
        root = self.workspace.output_root
        while True:
            refuse_linked_output_root(root)
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held, now = os.fstat(fd), os.stat(root, follow_symlinks=False)
            except FileNotFoundError:  # deleted while this build waited
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return fd
            os.close(fd)

    def _publish(self, analysis: AnalysisResult, executor: Executor) -> dict[str, list[dict]]:
        """Make the outputs of the requested targets visible under hb-out/."""
        with self.publishing():
            return self._publish_locked(analysis, executor)

    def _publish_locked(self, analysis: AnalysisResult, executor: Executor) -> dict[str, list[dict]]:
        refuse_linked_output_root(self.workspace.output_root)
        manifest_path = self.workspace.output_root / MANIFEST_NAME
        if manifest_path.is_dir() and not manifest_path.is_symlink():
            # published there by a root target of that name before the name was reserved: not hb's record
            self._remove_in_background(manifest_path)
        try:
            # a file the checkout can ship: no link, no FIFO or device, bounded (workspace.read_regular_file)
            manifest = json.loads(read_regular_file(str(manifest_path), MAX_RECORD_BYTES, MANIFEST_NAME))
        except (OSError, ValueError):  # none yet, unreadable or not a file: everything is published again
            manifest = {}
        if not isinstance(manifest, dict):
            manifest = {}
        summary: dict[str, list[dict]] = {}
        self._sweep_outputs(manifest, analysis)
        try:
            changed = self._publish_targets(analysis, executor, manifest, summary)
        finally:
            self._wait_for_removals()  # the directories replaced, deleted while the new ones were written
        if changed:
            _atomic_write(manifest_path, json.dumps(manifest, sort_keys=True).encode())
        return summary

    def _publish_targets(self, analysis: AnalysisResult, executor: Executor, manifest: dict, summary: dict) -> bool:
        """Publish what differs from `manifest` (updated), fill `summary`; whether anything was."""
        changed = False
        for label in analysis.requested:
            entries = []
            for f in analysis.targets[label].files:
                if f.is_source:
                    entries.append({"path": f.path, "kind": "source"})
                    continue
                entry = executor.output_entry(f)
                dest = self.workspace.root / f.path
                stamp = _published_stamp(self.workspace.output_root, dest)
                if stamp is None or manifest.get(f.path) != [str(entry.digest), stamp]:
                    self._materialize(executor, f, dest)
                    entry = executor.output_entry(f)
                    manifest[f.path] = [str(entry.digest), _published_stamp(self.workspace.output_root, dest)]
                    changed = True
                entries.append({"path": f.path, "kind": entry.kind, "digest": str(entry.digest)})
            summary[str(label)] = entries
        return changed

    def _sweep_outputs(self, manifest: dict, analysis: AnalysisResult) -> None:
        """Remove partial files of publishes killed mid-way (.name.hb-tmp-<dead pid>...) from the
        directories hb publishes into: those of every output published before or requested now."""
        paths = {p for p in manifest if isinstance(p, str)}
        for label in analysis.requested:
            paths.update(f.path for f in analysis.targets[label].files if not f.is_source)
        parents = {os.path.dirname(p) for p in paths if p.startswith(OUTPUT_DIR + "/") and ".." not in p.split("/")}
        for parent in parents | {OUTPUT_DIR}:
            if _real_directories(self.workspace.output_root, self.workspace.root / parent):
                sweep(self.workspace.root / parent)  # never in a directory reached through a link

    def _materialize(self, executor: Executor, f: File, dest: Path) -> None:
        from .tree import MissingBlob, materialize_tree

        for _attempt in range(2):
            entry = executor.output_entry(f)
            self._clear_parents(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir() and not dest.is_symlink():
                self._remove_in_background(dest)
            elif os.path.lexists(dest):
                os.unlink(dest)
            try:
                if entry.kind == "dir":
                    if executor.publish_tree_in_place(f.path, entry.digest, dest):
                        return
                    tmp = Path(tempfile.mkdtemp(prefix=publish_temp_prefix(), dir=dest.parent))
                    try:
                        materialize_tree(self.store, entry.digest, tmp, threads=PUBLISH_THREADS)
                        os.chmod(tmp, 0o755)  # mkdtemp made it 0700; a published directory is readable
                        os.replace(tmp, dest)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
                else:
                    if not self.store.fetch_file(entry.digest, dest, mode=0o755 if entry.executable else 0o644):
                        raise MissingBlob(entry.digest)
                return
            except MissingBlob:
                executor.rebuild(executor.producers[f.path])
        raise MissingBlob(executor.output_entry(f).digest)

    def _unpublish_before_run(self, action, published: frozenset) -> None:
        """An action is about to run: the directories it replaces under hb-out/ (outputs this build
        publishes) are moved aside and deleted in a thread while it runs, not after (as Bazel
        deletes an action's old outputs before running it); publishing then renames or writes the
        new tree where nothing is left. If the action fails, hb-out/ no longer shows its old output."""
        outputs = [out for out in action.outputs if out.is_directory and out.path in published]
        if not outputs:
            return
        with self.publishing():
            for out in outputs:
                dest = self.workspace.root / out.path
                if out.path.startswith(OUTPUT_DIR + "/") and ".." not in out.path.split("/"):
                    self._clear_parents(dest)
                    if dest.is_dir() and not dest.is_symlink():
                        self._remove_in_background(dest)

    def _remove_in_background(self, dest: Path) -> None:
        """Move the directory published before aside (a temp name of this process, which a later
        build sweeps if this one dies) and delete it in a thread while the new one is written;
        build() waits for it before returning."""
        aside = Path(tempfile.mkdtemp(prefix=publish_temp_prefix(), dir=dest.parent))
        os.replace(dest, aside / "old")  # a rename: the whole tree, never a link (dest is a directory)
        self._removals.start(lambda: shutil.rmtree(aside))

    def _wait_for_removals(self) -> None:
        self._removals.wait()

    def _clear_parents(self, dest: Path) -> None:
        """hb-out is a view of the last outputs published: a file where `dest` needs a directory
        (target `a` published output `x`, now target `a/x` publishes `x/y`) is replaced, and so is a
        link (which a checkout may ship). The walk goes from hb-out/ down, lstat'ing each component
        below directories already found real, so nothing is followed: a deepest-first walk looked at
        `hb-out/p/x` through a linked `hb-out/p` and deleted the file it led to outside the workspace."""
        root = self.workspace.output_root
        if root not in dest.parents:
            return
        parent = root
        for part in dest.parent.relative_to(root).parts:
            parent = parent / part
            try:
                st = os.lstat(parent)
            except FileNotFoundError:
                return  # nothing below exists: mkdir makes real directories from here
            if not stat.S_ISDIR(st.st_mode):  # a link (to anything) or a file: hb-out's own entry
                os.unlink(parent)
                return

    # ----- records ---------------------------------------------------------------------------------
    def previous_records(self) -> dict:
        try:
            return json.loads((self.state_dir / "actions.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_records(self, executor: Executor) -> None:
        """Keep each action's key and key fields for `hb explain`; written only when one changed
        (the key is the hash of the fields, so an equal key means equal fields)."""
        records = self.previous_records()
        changed = False
        for i, record in executor.stats.records.items():
            action_id = executor.actions[i].id
            before = records.get(action_id)
            if not isinstance(before, dict) or before.get("key") != record.key:
                records[action_id] = {"key": record.key, "fields": record.fields}
                changed = True
        if changed:
            _atomic_write(self.state_dir / "actions.json", json.dumps(records, sort_keys=True).encode())

    def _save_last_build(self, executed: int, cached: int, stats: BuildStats | None = None) -> None:
        data = {"executed": executed, "cached": cached, "finished": time.time()}
        rejected = self.local_store.rejected_entries
        data["rejected_entries"] = len(rejected)
        data["corrupt_blobs"] = len(self.local_store.corrupt_removed)
        if rejected:
            self.reporter.warn(f"cache: removed {len(rejected)} malformed action-cache entries and rebuilt what "
                               f"they described (first: {rejected[0][0][:12]}: {rejected[0][1]})")
        if self.remote is not None and stats is not None:
            remote = self.remote.stats.to_json()
            remote_keys = getattr(self.store, "remote_hits", set())
            cached = [r for r in stats.records.values() if r.cached]
            data["remote"] = {"url": self.remote.url, "disabled": self.remote.disabled, **remote}
            data["local_hits"] = sum(1 for r in cached if r.key not in remote_keys)
            data["remote_hits_used"] = len(cached) - data["local_hits"]
            unsigned = remote["unsigned_entries"]
            if unsigned:
                self.reporter.warn(f"remote cache: ignored {unsigned} action-cache entries that were unsigned or "
                                   "badly signed (HB_REMOTE_HMAC_KEY is set)")
            if remote["rejected_entries"] > unsigned:
                why = next((e for e in remote["errors"] if "unsigned entry" not in e and "bad signature" not in e),
                           "")
                self.reporter.warn(f"remote cache: ignored {remote['rejected_entries'] - unsigned} malformed "
                                   f"action-cache entries ({why})")
            if remote["rejected_blobs"]:
                self.reporter.warn(f"remote cache: rejected {remote['rejected_blobs']} blobs whose content did not "
                                   "match their digest")
        _atomic_write(self.state_dir / "last-build.json", json.dumps(data).encode())

    def last_build(self) -> dict | None:
        try:
            return json.loads((self.state_dir / "last-build.json").read_text())
        except (FileNotFoundError, ValueError):
            return None


MAX_RECORD_BYTES = 64 << 20  # hb-out/.hb-manifest.json: ~100 bytes an output


def _real_directories(root: Path, directory: Path) -> bool:
    """Whether `directory` (root or below it) and each directory between them is a real directory,
    not a link: lstat'ed from root down."""
    if directory != root and root not in directory.parents:
        return False
    path = root
    for part in ("", *directory.relative_to(root).parts):
        path = path / part if part else path
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def _published_stamp(root: Path, dest: Path):
    """What identifies the entry hb published at `dest`, or None: its own lstat (size, mtime, ctime,
    inode, device, type), and only where every directory from hb-out/ down to it is real. The record
    (hb-out/.hb-manifest.json) comes with the checkout like any file in it: a checkout that shipped a
    record naming an output's digest with the size and mtime of a link to a host file (or of a file
    of a tarball, whose mtime it sets) had hb skip publishing and report the digest over content it
    never wrote. The ctime and inode of an entry are the kernel's, set when hb wrote it."""
    if not _real_directories(root, dest.parent):
        return None
    try:
        st = os.lstat(dest)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, stat.S_IFMT(st.st_mode)]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.hb-tmp-{os.getpid()}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def publish_file(root: Path, dest: Path, data: bytes) -> None:
    """Write a file hb makes in hb-out/ (`root`) beside the outputs it published (a signed envelope):
    every directory from hb-out/ down to it must be real, and the file is written under a new name
    and renamed over `dest`, so a link a checkout put there is replaced, never written through."""
    if not _real_directories(root, dest.parent):
        raise UsageError(f"{dest.parent} is not a directory hb made under {root} (a link?)",
                         hint=f"remove {root} and build again")
    from .store.local import file_mode

    _atomic_write(dest, data)
    os.chmod(dest, file_mode())

Label  # re-exported for callers


def refuse_linked_output_root(root: Path) -> None:
    """hb-out/ must be a real directory of the workspace (or not exist yet): a repository that ships
    `hb-out` as a link would otherwise make hb write and replace files wherever it points. Links
    below it are hb's to replace (_clear_parents), never to follow."""
    if os.path.islink(root) or (os.path.lexists(root) and not os.path.isdir(root)):
        what = f"a symbolic link (-> {os.readlink(root)})" if os.path.islink(root) else "not a directory"
        raise UsageError(f"{root} is {what}: hb publishes outputs only into a real directory of the workspace",
                         hint=f"remove it (rm {root}) and build again")
