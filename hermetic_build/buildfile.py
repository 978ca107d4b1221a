"""Loading BUILD.hermetic files: real Starlark (starlark-pyo3), hermetic by construction.

A BUILD file sees Starlark's standard builtins, `glob()`, `package_name()` and one function per
registered rule; nothing else. There is no file I/O, clock, print or Python import. `load()` of
`.bzl` files inside the workspace provides macros.

BUILD files are untrusted. They are evaluated in forked child processes with a memory and a time
budget per BUILD file (`starlark_memory_mb`, `starlark_timeout_s` in hermetic.toml; see
evalguard.py): the packages a command needs are shared out among one child per core (one child
for a few packages), and hb's own process only receives the targets, keeping them in the order
one child would have evaluated them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import starlark as sl

from .errors import AnalysisError, BuildFileError, HbError, Location, did_you_mean
from .evalguard import Channel, GuardFailure, Limits, run_guarded_all
from .label import Label, LabelSyntaxError
from .rule import AttributeValueError, Rule, check_attrs
from .scan import GlobCall, all_packages, glob_fingerprint, run_glob
from .workspace import BUILD_FILE, Workspace, read_regular_file, resolve_source_str

_FRAME_RE = re.compile(r"^\s*\* (.+?):(\d+), in ", re.M)
_ERROR_AT_RE = re.compile(r"-->\s*(.+?):(\d+)(?::\d+)?\s*$", re.M)
_MAX_EVALUATORS = 8
_PACKAGES_PER_EVALUATOR = 16
_TIMEOUT_HINT = "raise starlark_timeout_s in hermetic.toml if this BUILD file really needs that long"
_MEMORY_HINT = "raise starlark_memory_mb in hermetic.toml if this BUILD file really needs that much memory"


@dataclass(frozen=True)
class TargetDef:
    """One rule call in a BUILD file."""

    label: Label
    rule: str
    attrs: dict = field(hash=False, compare=False)
    location: Location = field(default=Location(""), compare=False)


@dataclass
class Package:
    name: str
    build_file: str  # workspace-relative
    targets: dict[str, TargetDef]
    loads: tuple[str, ...] = ()  # workspace-relative .bzl files read
    globs: tuple[GlobCall, ...] = ()


def _starlark_dialect() -> "sl.Dialect":
    dialect = sl.Dialect.extended()
    dialect.enable_load = True
    return dialect


class PackageLoader:
    def __init__(self, workspace: Workspace, rules: dict[str, Rule]):
        self.workspace = workspace
        self.rules = rules
        settings = workspace.settings
        self.limits = Limits(settings.starlark_memory_mb, settings.starlark_timeout_s)
        self._dialect = _starlark_dialect()
        ext = sl.LibraryExtension
        self._globals = sl.Globals.extended_by([ext.StructType, ext.Json, ext.Map, ext.Filter, ext.Partial])
        self._prelude_globals = sl.Globals.extended_by([ext.CallStack, ext.Json])
        # One JSON string per rule call crosses into Python: converting kwargs value by value
        # costs more than the whole rule call (measured: 10,000 calls 1.0 s -> 0.6 s).
        # glob() is defined here too, so that it knows the line it is called from.
        self._prelude = sl.parse("<hb-prelude>", "".join(
            f"def {name}(**kwargs):\n    _hb_rule(json.encode([{name!r}, call_stack(), kwargs]))\n"
            for name in sorted(rules)
        ) + "def glob(include, exclude = None, allow_empty = True):\n"
            "    return _hb_glob(include, exclude, allow_empty, call_stack())\n", self._dialect)
        self._packages: dict[str, Package] = {}
        self._failed: dict[str, HbError] = {}  # package -> the error its evaluation raised
        self._bzl: dict[str, "sl.FrozenModule"] = {}
        self._bzl_loading: list[str] = []
        # state of the package being evaluated (in the guarded child)
        self._current: str | None = None
        self._targets: dict[str, TargetDef] = {}
        self._loads: list[str] = []
        self._globs: list[GlobCall] = []
        self._pending: HbError | None = None
        self._deadline = 0.0
        self._eval_options = sl.EvalOptions(check_cancelled=self._out_of_time)

    # ----- public ----------------------------------------------------------------------------
    def has_package(self, package: str) -> bool:
        return self.workspace.build_file(package).is_file()

    def load(self, package: str, *, referenced_from: Location | None = None) -> Package:
        if package in self._packages:
            return self._packages[package]
        if package not in self._failed:
            self._check_build_file(package, referenced_from)
            self.preload([package])
        if package in self._failed:
            raise self._failed[package]
        return self._packages[package]

    def preload(self, packages) -> None:
        """Evaluate `packages` and every package their targets name, in guarded child processes:
        one per core when there are enough packages to share (see _shares)."""
        wanted = [p for p in dict.fromkeys(packages)
                  if p not in self._packages and p not in self._failed and self.has_package(p)]
        if not wanted:
            return
        received: dict[str, tuple] = {}

        def receive(message) -> None:
            received.setdefault(message[1], message)  # two children may both evaluate a package named by both

        shares = _shares(wanted)
        try:
            run_guarded_all([functools.partial(self._evaluate_closure, share, wanted) for share in shares],
                            self.limits, receive)
        except GuardFailure as failure:
            raise self._guard_error(failure) from None
        finally:
            self._take(wanted, received)

        # ----- in hb's process -----------------------------------------------------------------------
    def _check_build_file(self, package: str, referenced_from: Location | None) -> None:
        path = self.workspace.build_file(package)
        if path.is_file():
            return
        rel = self.workspace.relpath(path)
        if os.path.lexists(path):
            what = ("is a directory" if path.is_dir() else
                    "is a broken symbolic link" if path.is_symlink() else "is not a regular file")
            raise BuildFileError(f"no package //{package}: {rel} {what}", location=referenced_from,
                                 hint=f"make {rel} a regular file")
        known = all_packages(self.workspace)
        hint = did_you_mean(f"//{package}", [f"//{p}" for p in known])
        raise BuildFileError(
            f"no package //{package}: {rel} does not exist",
            location=referenced_from,
            hint=hint or "create a BUILD.hermetic file in that directory",
        )

    def _take(self, wanted: list[str], received: dict[str, tuple]) -> None:
        """Keep the packages the children sent, in the order one child would have evaluated them
        (breadth first from `wanted`), whichever child finished first: the analysis is the same
        whatever the number of cores."""
        order, queue, seen = [], deque(wanted), set(wanted)
        while queue:
            name = queue.popleft()
            message = received.get(name)
            if message is None:
                continue
            order.append(message)
            for referenced in (message[2] if message[0] == "package" else ()):
                if referenced not in seen and referenced in received:
                    seen.add(referenced)
                    queue.append(referenced)
        order.extend(m for name, m in received.items() if name not in seen)  # only after a failure
        for message in order:
            if message[0] == "package":
                self._packages[message[1]] = message[3]
            else:
                _, name, (cls, text, location, hint, detail) = message
                self._failed[name] = cls(text, location=location, hint=hint, detail=detail)

    def _guard_error(self, failure: GuardFailure) -> BuildFileError:
        where = Location(failure.unit) if failure.unit else None
        if failure.reason == "timeout":
            return BuildFileError(
                f"evaluation took longer than starlark_timeout_s = {self.limits.timeout_s} s; stopped",
                location=where, hint=_TIMEOUT_HINT)
        if failure.reason == "memory":
            return BuildFileError(
                f"evaluation used more than starlark_memory_mb = {self.limits.memory_mb} MiB; stopped"
                + (f" ({failure.detail})" if failure.detail else ""),
                location=where, hint=_MEMORY_HINT)
        first, _, rest = failure.detail.partition("\n")
        return BuildFileError(f"evaluation crashed: {first}", location=where, detail=rest.strip() or None)

    # ----- evaluation (in the guarded child) -----------------------------------------------------
    def _evaluate_closure(self, share: list[str], wanted: list[str], channel: Channel) -> None:
        """Evaluate the packages of `share` and every package they name that is not in `wanted`
        (the packages another child evaluates), sending each one's targets or its error."""
        queue, seen = deque(share), set(wanted)
        while queue:
            package = queue.popleft()
            channel.begin(self.workspace.relpath(self.workspace.build_file(package)))
            try:
                loaded = self._evaluate(package)
            except HbError as exc:
                channel.begin(None)
                channel.send(("error", package, (type(exc), exc.message, exc.location, exc.hint, exc.detail)))
                continue
            channel.begin(None)
            referenced = [name for name in dict.fromkeys(self._referenced_packages(loaded))
                          if name not in self._packages and self.has_package(name)]
            channel.send(("package", package, referenced, loaded))
            for name in referenced:
                if name not in seen:
                    seen.add(name)
                    queue.append(name)

    def _referenced_packages(self, package: Package) -> list[str]:
        names = []
        label_attrs: dict[str, list[str]] = {}
        for target in package.targets.values():
            attr_names = label_attrs.get(target.rule)
            if attr_names is None:
                attr_names = label_attrs[target.rule] = [
                    name for name, spec in self.rules[target.rule].attrs.items() if spec.is_label]
            for attr_name in attr_names:
                value = target.attrs.get(attr_name)
                if value is not None:
                    names.extend(label.package for label in ((value,) if isinstance(value, Label) else value))
        return names

    def _evaluate(self, package: str) -> Package:
        path = self.workspace.build_file(package)
        rel = self.workspace.relpath(path)
        self._current, self._targets, self._loads, self._globs = package, {}, [], []
        self._deadline = time.monotonic() + self.limits.timeout_s
        try:
            self._eval(rel, _read_source(self.workspace.root, rel, None), package)
        finally:
            self._current = None
        return Package(package, rel, self._targets, tuple(self._loads), tuple(self._globs))

    def _out_of_time(self) -> bool:
        return time.monotonic() > self._deadline

    def _new_module(self) -> "sl.Module":
        module = sl.Module()
        module.add_callable("_hb_rule", self._register)
        module.add_callable("_hb_glob", self._glob)
        sl.eval(module, self._prelude, self._prelude_globals)
        module.add_callable("package_name", self._package_name)
        return module

    def _eval(self, rel: str, source: str, package: str):
        module = self._new_module()
        self._pending = None
        try:
            ast = sl.parse(rel, source, self._dialect)
            sl.eval_with(self._eval_options, module, ast, self._globals,
                         sl.FileLoader(lambda spec: self._load_bzl(spec, rel, package)))
        except sl.StarlarkError as exc:
            if self._pending is not None:
                raise self._pending from None
            error = _starlark_error(exc, rel)
            if error.message == "Evaluation cancelled":
                raise BuildFileError(
                    f"evaluation took longer than starlark_timeout_s = {self.limits.timeout_s} s; stopped here",
                    location=error.location, hint=_TIMEOUT_HINT, detail=error.detail) from None
            raise error from None
        return module

    def _load_bzl(self, spec: str, loading_file: str, package: str) -> "sl.FrozenModule":
        try:
            label = Label.parse(spec, package)
        except LabelSyntaxError as exc:
            self._pending = BuildFileError(f"load({spec!r}): {exc}", location=Location(loading_file))
            raise
        rel = "/".join(p for p in (label.package, label.name) if p)
        if not rel.endswith(".bzl"):
            self._pending = BuildFileError(f"load({spec!r}): only .bzl files can be loaded",
                                           location=Location(loading_file))
            raise ValueError(self._pending.message)
        if rel in self._bzl:
            self._loads.append(rel)
            return self._bzl[rel]
        if rel in self._bzl_loading:
            self._pending = BuildFileError(
                "load cycle: " + " -> ".join([*self._bzl_loading, rel]), location=Location(loading_file))
            raise ValueError(self._pending.message)
        path = self.workspace.root / rel
        if not path.is_file():
            self._pending = BuildFileError(f"load({spec!r}): {rel} does not exist", location=Location(loading_file))
            raise ValueError(self._pending.message)
        self._bzl_loading.append(rel)
        try:
            module = self._eval(rel, _read_source(self.workspace.root, rel, Location(loading_file)), label.package)
        finally:
            self._bzl_loading.pop()
        frozen = module.freeze()
        self._bzl[rel] = frozen
        self._loads.append(rel)
        return frozen

    # ----- builtins ---------------------------------------------------------------------------
    def _register(self, call: str) -> None:
        rule_name, stack, kwargs = json.loads(call)
        frame = _FRAME_RE.search(stack)  # the outermost call: the line of the BUILD file
        path, line = frame.groups() if frame else ("<unknown>", "0")
        location = Location(path, int(line))
        package = self._current
        if package is None:
            self._pending = BuildFileError(f"{rule_name}() may only be called while loading a BUILD file",
                                           location=location)
            raise ValueError(self._pending.message)
        try:
            attrs = check_attrs(self.rules[rule_name], kwargs, package)
            label = Label.parse(":" + attrs["name"], package)
        except (AttributeValueError, LabelSyntaxError) as exc:
            # a value of the wrong type or shape: an analysis error (exit 4), as the README says
            self._pending = AnalysisError(str(exc), location=location)
            raise ValueError(str(exc)) from None
        except ValueError as exc:  # the call itself is wrong: an unknown or a missing attribute
            self._pending = BuildFileError(str(exc), location=location)
            raise ValueError(str(exc)) from None
        if label.name in self._targets:
            first = self._targets[label.name].location
            self._pending = BuildFileError(f"target {label} is already defined at {first}", location=location)
            raise ValueError(self._pending.message)
        self._targets[label.name] = TargetDef(label, rule_name, attrs, location)

    def _package_name(self) -> str:
        return self._current or ""

    def _glob(self, include, exclude, allow_empty, stack: str):
        package = self._current or ""
        frames = _FRAME_RE.findall(stack)
        location = (Location(frames[0][0], int(frames[0][1])) if frames
                    else Location(self.workspace.relpath(self.workspace.build_file(package))))
        try:
            include = _glob_patterns("include", include)
            exclude = _glob_patterns("exclude", exclude or [])
        except (TypeError, ValueError) as exc:
            self._pending = BuildFileError(str(exc), location=location,
                                           hint='patterns are relative to the package: glob(["*.txt", "data/**"])')
            raise
        result = tuple(run_glob(self.workspace, package, include, exclude))
        if not result and not allow_empty:
            self._pending = BuildFileError(f"glob({list(include)}) matched no files in //{package}", location=location)
            raise ValueError(self._pending.message)
        self._globs.append(GlobCall(package, include, exclude, result))
        return list(result)


def _shares(wanted: list[str]) -> list[list[str]]:
    """`wanted` dealt out to one child per core (at most _MAX_EVALUATORS), each with at least
    _PACKAGES_PER_EVALUATOR packages: a few BUILD files evaluate faster than a second child starts."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    count = max(1, min(cores, _MAX_EVALUATORS, len(wanted) // _PACKAGES_PER_EVALUATOR))
    return [wanted[i::count] for i in range(count)]


def _glob_patterns(argument: str, patterns) -> tuple[str, ...]:
    """glob() patterns: a list of relative paths inside the package (no '..', no absolute path)."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise TypeError(f"glob() {argument} must be a list of patterns, got {type(patterns).__name__} {patterns!r}")
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"glob() {argument} patterns must be non-empty strings, got {pattern!r}")
        if pattern.startswith("/") or any(part in ("", ".", "..") for part in pattern.split("/")):
            raise ValueError(f"glob() pattern {pattern!r} must be a relative path inside the package "
                             "(no leading '/', no '.', '..' or empty parts)")
    return tuple(patterns)


MAX_SOURCE_BYTES = 64 << 20  # one BUILD or .bzl file


def _read_source(root: Path, rel: str, referenced_from: Location | None) -> str:
    """The text of a BUILD or .bzl file; an unreadable or non-UTF-8 file is a BUILD file error. It is
    a source file of the checkout like any other (resolve_source): one that is, or lies under, a link
    leading out of the workspace or into hb-out/ is refused before it is opened (a BUILD.hermetic
    linked to /proc/self/environ had its first line, every variable of hb's environment, printed in
    the parse error, e.g. into a public CI log). It is read from a regular file opened without
    following a link, at most MAX_SOURCE_BYTES."""
    try:
        real = resolve_source_str(root, rel)
    except AnalysisError as exc:
        raise BuildFileError(exc.message, location=referenced_from or Location(rel), hint=exc.hint) from None
    try:
        data = read_regular_file(real, MAX_SOURCE_BYTES, rel)
    except OSError as exc:
        raise BuildFileError(f"cannot read {rel}: {exc.strerror or exc}", location=referenced_from) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BuildFileError(f"not valid UTF-8 (byte {data[exc.start]:#04x})", location=Location(rel, line)) from None


def _starlark_error(exc: Exception, default_path: str) -> BuildFileError:
    """`path:line: message` and the source excerpt; the call stack is summed up in one line, so a
    runaway recursion prints a few lines, not a hundred frames."""
    text = str(exc)
    match = _ERROR_AT_RE.search(text)
    location = Location(match.group(1), int(match.group(2))) if match else Location(default_path)
    lines = text.splitlines()
    at = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), None)
    first = lines[at] if at is not None else (lines[0] if lines else "")
    message = first.removeprefix("error:").strip()
    excerpt = [ln for ln in lines[at + 1:] if ln.strip(" |")] if at is not None else []
    frames = _FRAME_RE.findall(text)
    if frames:
        outer = Location(frames[0][0], int(frames[0][1]))
        depth = f" ({len(frames)} calls deep)" if len(frames) > 2 else ""
        if outer != location or depth:
            excerpt.insert(0, f"  called from {outer}{depth}")
    return BuildFileError(message or "invalid Starlark", location=location, detail="\n".join(excerpt) or None)


def source_path(package: str, name: str) -> str:
    return f"{package}/{name}" if package else name


def source_exists(workspace: Workspace, package: str, name: str) -> bool:
    if "/" not in name:  # most sources: a file of the package's own directory, listed once
        if name in _files_in(_package_directory(str(workspace.root), package)):
            return True
        return os.path.isfile(os.path.join(str(workspace.root), source_path(package, name)))
    path = os.path.join(str(workspace.root), source_path(package, name))
    directory, base = os.path.split(path)
    return base in _files_in(directory) or os.path.isfile(path)


@functools.lru_cache(maxsize=4096)
def _package_directory(root: str, package: str) -> str:
    """The directory source_exists lists for the files of `package` (as os.path.split gives it)."""
    return os.path.split(os.path.join(root, source_path(package, "x")))[0]


@functools.lru_cache(maxsize=4096)
def _files_in(directory: str) -> frozenset:
    """Names of the regular files in a directory, listed once per invocation."""
    try:
        with os.scandir(directory) as it:
            return frozenset(e.name for e in it if e.is_file())
    except OSError:
        return frozenset()


Path, all_packages, glob_fingerprint  # re-exported
