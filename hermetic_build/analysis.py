"""Analysis: expand patterns, load packages, build the target graph, run rule implementations.

The result is plain data (targets, their default outputs, and the actions in dependency order)
that can be cached between invocations, so a no-op build never re-evaluates Starlark.
"""

from __future__ import annotations

import gc
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .action import (INTERNAL_ROOT, OUTPUT_ROOT, Action, File, get_action_kind, make_params_json, output_dir,
                     reserved_output_problem)
from .buildfile import Package, PackageLoader, TargetDef, all_packages, source_exists, source_path
from .errors import AnalysisError, BuildFileError, HbError, Location, UsageError, did_you_mean
from .label import Label, LabelSyntaxError, TargetPattern
from .rule import DefaultInfo, Provider, Rule
from .workspace import BUILD_FILE, Workspace, host_platform, package_of_cwd


@dataclass(frozen=True)
class TargetSummary:
    label: Label
    rule: str
    location: Location
    deps: tuple[Label, ...]
    files: tuple[File, ...]  # DefaultInfo
    sources: tuple[str, ...] = ()  # workspace-relative source files named in attributes


@dataclass
class AnalysisResult:
    requested: list[Label]
    targets: dict[Label, TargetSummary]
    actions: list[Action]  # dependencies first
    packages: dict[str, str] = field(default_factory=dict)  # package -> build file
    loads: tuple[str, ...] = ()
    globs: tuple = ()
    read_files: tuple[str, ...] = ()  # sources rules read during analysis

    def producers(self) -> dict[str, int]:
        return {out.path: i for i, action in enumerate(self.actions) for out in action.outputs}

    def closure(self, roots) -> list[Label]:
        seen, stack = set(), list(roots)
        while stack:
            label = stack.pop()
            if label in seen:
                continue
            seen.add(label)
            stack.extend(self.targets[label].deps)
        return sorted(seen)


@dataclass(frozen=True)
class GraphNode:
    """A target in the target graph: its definition and what its attributes name."""

    target: TargetDef
    sources: tuple[str, ...]
    source_deps: dict = field(hash=False, compare=False)
    deps: tuple[Label, ...] = ()


class ConfiguredTarget:
    """A dependency as a rule sees it: its label and its providers."""

    def __init__(self, label: Label, providers: dict[type, Provider]):
        self.label = label
        self._providers = providers

    def __getitem__(self, provider_type):
        try:
            return self._providers[provider_type]
        except KeyError:
            raise KeyError(f"{self.label} does not provide {provider_type.__name__}") from None

    def get(self, provider_type, default=None):
        return self._providers.get(provider_type, default)

    def __contains__(self, provider_type) -> bool:
        return provider_type in self._providers

    @property
    def files(self) -> tuple[File, ...]:
        return self._providers[DefaultInfo].files


class AttrView:
    def __init__(self, values: dict):
        self._values = values

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


class Actions:
    """ctx.actions: declare the actions of one target."""

    def __init__(self, ctx: "RuleContext"):
        self._ctx = ctx
        self.declared: list[Action] = []

    def declare(self, *, mnemonic: str, kind: str, inputs, outputs, params: dict | None = None,
                platform: str | None = None, env_allowlist=(), description: str = "",
                hints: dict | None = None, dep_keys: bool = False) -> Action:
        registered = get_action_kind(kind)
        if registered is None:
            raise self._ctx.error(f"unknown action kind {kind!r} (the rule module must register it)")
        if not outputs:
            raise self._ctx.error(f"a {mnemonic} action must declare at least one output")
        action = Action(
            owner=self._ctx.label, mnemonic=mnemonic, kind=kind, version=registered.version,
            inputs=tuple(sorted(set(inputs), key=_path)), outputs=tuple(outputs),
            params_json=make_params_json(params or {}), platform=platform or self._ctx.platform,
            env_allowlist=tuple(sorted(set(env_allowlist) | set(self._ctx.settings.env_allowlist))),
            description=description or f"{mnemonic} {self._ctx.label}",
            hints_json=make_params_json(hints) if hints else "{}", dep_keys=dep_keys,
        )
        self.declared.append(action)
        return action

    def run_shell(self, *, cmd: str, inputs, outputs, mnemonic: str = "Shell", description: str = "",
                  env: dict | None = None) -> Action:
        """Run `cmd` with bash in a fresh sandbox holding only `inputs`."""
        return self.declare(mnemonic=mnemonic, kind="shell", inputs=inputs, outputs=outputs,
                            params={"cmd": cmd, "env": dict(sorted((env or {}).items()))},
                            platform=host_platform(), description=description)


class SourceDepsContext:
    """What a rule's source_deps function sees: the target's attributes and a way to read the
    source files they name (tracked, so that editing one re-runs analysis)."""

    def __init__(self, analyzer: "Analyzer", target: TargetDef):
        self._analyzer = analyzer
        self.label = target.label
        self.location = target.location
        self.attr = AttrView(target.attrs)

    def source_path(self, label: Label) -> str:
        """The workspace-relative path of the source file a label attribute names."""
        return source_path(label.package, label.name)

    def read_source(self, path: str) -> bytes | None:
        """The bytes of a workspace source file, or None if it does not exist (the rule's
        implementation reports that, with its own message)."""
        try:
            data = self._analyzer.workspace.source_file(path).read_bytes()
        except FileNotFoundError:
            data = None
        self._analyzer.read_files.add(path)
        return data

    def error(self, message: str, location: Location | None = None, hint: str | None = None) -> AnalysisError:
        return AnalysisError(f"{self.label}: {message}", location=location or self.location, hint=hint)


class RuleContext:
    def __init__(self, analyzer: "Analyzer", target: TargetDef, deps: dict[Label, ConfiguredTarget],
                 source_deps: dict[str, tuple[Label, ...]] | None = None):
        self._analyzer = analyzer
        self.target = target
        self.label = target.label
        self.location = target.location
        self.attr = AttrView(target.attrs)
        self.settings = analyzer.workspace.settings
        self.workspace_root = analyzer.workspace.root
        self.platform = self.settings.platforms[0] if self.settings.platforms else host_platform()
        self._deps = deps
        self._source_deps = source_deps or {}
        self.actions = Actions(self)
        self._declared: dict[str, File] = {}

    # ----- errors -------------------------------------------------------------------------------
    def error(self, message: str, hint: str | None = None) -> AnalysisError:
        return AnalysisError(f"{self.label}: {message}", location=self.location, hint=hint)

    def fail(self, message: str, hint: str | None = None):
        raise self.error(message, hint)

    # ----- dependencies ---------------------------------------------------------------------------
    def deps(self, attr_name: str) -> list[ConfiguredTarget]:
        """The targets a label attribute names, or those the rule's source_deps returned under that name."""
        if attr_name in self.target.attrs:
            labels = _labels(self.target.attrs[attr_name])
        else:
            labels = self._source_deps.get(attr_name, ())
        return [self._deps[label] for label in labels if label in self._deps]

    def dep(self, attr_name: str) -> ConfiguredTarget | None:
        found = self.deps(attr_name)
        return found[0] if found else None

    def files_by_label(self, attr_name: str) -> dict[Label, tuple[File, ...]]:
        """For each label of a label attribute: the source file it names, or the target's outputs."""
        value = self.target.attrs[attr_name]
        labels = _labels(value)
        return {
            label: self._deps[label].files if label in self._deps
            else (File(source_path(label.package, label.name)),)
            for label in labels
        }

    def files(self, attr_name: str) -> tuple[File, ...]:
        """Files named by a label attribute: source files and the default outputs of targets."""
        return tuple(f for files in self.files_by_label(attr_name).values() for f in files)

    def source(self, name: str) -> File:
        """A file of this target's package, which must exist."""
        if not source_exists(self._analyzer.workspace, self.label.package, name):
            raise self.error(f"source file {source_path(self.label.package, name)} does not exist")
        return File(source_path(self.label.package, name))

    def read_source(self, file: File) -> bytes:
        """Read a source file during analysis (e.g. a lockfile); tracked for analysis caching."""
        if not file.is_source:
            raise self.error(f"{file.path} is generated; only source files can be read during analysis")
        path = self._analyzer.workspace.source_file(file.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self.error(f"{file.path} does not exist") from None
        self._analyzer.read_files.add(file.path)
        return data

    def memo(self, namespace: str, key: str, compute):
        """compute()'s JSON value, kept between runs under `key`, which must name every input of
        compute (e.g. a digest of the files it reads): for slow, pure work such as parsing with a
        heavy library. Files it reads must still be read with read_source (tracked)."""
        return self._analyzer.memo.get(namespace, key, compute)

    # ----- outputs ----------------------------------------------------------------------------------
    def declare_file(self, path: str, internal: bool = False) -> File:
        """A file output at hb-out/<package>/<name>/<path>; internal=True keeps it out of that
        directory (hb-out/.internal/...), for intermediates of a target whose output is '.'."""
        return self._declare(path, False, internal)

    def declare_directory(self, path: str, internal: bool = False) -> File:
        """A directory output; path '.' is the target's output directory itself (then every other
        output of the target must be internal)."""
        return self._declare(path, True, internal)

    def _declare(self, path: str, directory: bool, internal: bool = False) -> File:
        if path == "." and directory and not internal:
            public = [p for p, f in self._declared.items() if not f.path.startswith(INTERNAL_ROOT)]
            if public:
                raise self.error("the output directory '.' must be the target's only public output "
                                 f"(already declared: {', '.join(public)}); declare the others internal")
            file = File(output_dir(self.label), self.label, True)
            self._check_not_reserved(file.path, path, internal)
            self._declared[path] = file
            return file
        if "." in self._declared and not internal:
            raise self.error("the output directory '.' must be the target's only public output; "
                             f"declare {path!r} internal")
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise self.error(f"invalid output path {path!r}: use a relative path without '..'")
        if _CONTROL.search(path):
            raise self.error(f"invalid output path {path!r}: it contains a control character (a NUL, a newline, "
                             "...), which no file name hb writes may hold")
        key = f"internal:{path}" if internal else path
        if key in self._declared:
            raise self.error(f"output {path!r} is declared twice")
        base = output_dir(self.label)
        if internal:
            base = INTERNAL_ROOT + base[len(OUTPUT_ROOT):]
        file = File(f"{base}/{path}", self.label, directory)
        self._check_not_reserved(file.path, path, internal)
        self._declared[key] = file
        return file

    def _check_not_reserved(self, full: str, path: str, internal: bool) -> None:
        problem = reserved_output_problem(full, internal)
        if problem:
            raise self.error(f"output {path!r} ({full}) {problem}",
                             hint="rename the target (or its package, or the output)")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Analyzer:
    def __init__(self, workspace: Workspace, rules: dict[str, Rule], memo_dir: Path | None = None):
        from .memo import AnalysisMemo

        self.workspace = workspace
        self.rules = rules
        self.memo = AnalysisMemo(memo_dir)
        self.loader = PackageLoader(workspace, rules)
        self.read_files: set[str] = set()
        self._label_attrs_of: dict[str, list] = {}

    # ----- patterns --------------------------------------------------------------------------------
    def expand(self, patterns: list[str], current_package: str = "") -> list[Label]:
        parsed = []
        for text in patterns:
            try:
                pattern = TargetPattern.parse(text, current_package)
            except LabelSyntaxError as exc:
                raise AnalysisError(str(exc), hint="labels look like //pkg:name, :name or //pkg/...") from None
            packages = [pattern.package]
            if pattern.recursive:
                packages = all_packages(self.workspace, pattern.package)
                if not packages and not self.workspace.package_dir(pattern.package).is_dir():
                    raise AnalysisError(f"pattern {text}: directory {pattern.package} does not exist")
            parsed.append((text, pattern, packages))
        # every package the patterns name, evaluated in guarded children (see buildfile.py)
        self.loader.preload(p for _text, _pattern, packages in parsed for p in packages)
        labels: list[Label] = []
        for text, pattern, packages in parsed:
            if pattern.name is not None:
                label = Label(pattern.package, pattern.name)
                self._target(label, None)
                labels.append(label)
                continue
            found = [Label(p, n) for p in packages for n in sorted(self.loader.load(p).targets)]
            if not found:
                hint = ("run hb inside a workspace that has BUILD.hermetic files (hb -C DIR ...)" if not packages
                        else "add a rule call to the BUILD file, or name another package")
                raise UsageError(f"no targets match {text}: {self._why_empty(pattern, packages)}", hint=hint)
            labels.extend(found)
        return list(dict.fromkeys(labels))

    def _why_empty(self, pattern: TargetPattern, packages: list[str]) -> str:
        root = self.workspace.root
        if pattern.recursive and not packages:
            where = f"the workspace at {root}" if not pattern.package else f"{root / pattern.package}"
            return f"{where} has no {BUILD_FILE} files"
        files = [self.loader.load(p).build_file for p in packages]
        return f"{', '.join(files[:3])}{' and others' if len(files) > 3 else ''} define{'s' if len(files) == 1 else ''} no targets"

    def _target(self, label: Label, referenced_from: Location | None) -> TargetDef:
        package = self.loader.load(label.package, referenced_from=referenced_from)
        if label.name not in package.targets:
            hint = did_you_mean(str(label), [str(Label(label.package, n)) for n in package.targets])
            raise AnalysisError(
                f"no target named {label.name!r} in package //{label.package} ({package.build_file})",
                location=referenced_from, hint=hint,
            )
        return package.targets[label.name]

    # ----- graph -------------------------------------------------------------------------------------
    def _edges(self, target: TargetDef) -> tuple[list[Label], list[str]]:
        """(target dependencies, source files) named by a target's label attributes."""
        deps, sources = [], []
        for name, spec in self._label_attrs(target.rule):
            value = target.attrs[name]
            for label in _labels(value):
                if label.package == target.label.package or self.loader.has_package(label.package):
                    package = self.loader.load(label.package, referenced_from=target.location)
                    if label.name in package.targets:
                        deps.append(label)
                        continue
                    if spec.allow_files and source_exists(self.workspace, label.package, label.name):
                        sources.append(source_path(label.package, label.name))
                        continue
                    candidates = [str(Label(label.package, n)) for n in package.targets]
                    raise AnalysisError(
                        f"{target.label}: attribute {name!r} names {label}, which is "
                        + ("neither a target nor a file" if spec.allow_files else "not a target"),
                        location=target.location, hint=did_you_mean(str(label), candidates),
                    )
                self.loader.load(label.package, referenced_from=target.location)
        return deps, sources

    def _label_attrs(self, rule_name: str) -> list:
        """(name, spec) of the label attributes of a rule, in declaration order."""
        found = self._label_attrs_of.get(rule_name)
        if found is None:
            found = self._label_attrs_of[rule_name] = [
                (name, spec) for name, spec in self.rules[rule_name].attrs.items() if spec.is_label]
        return found

    def _source_deps(self, target: TargetDef) -> dict[str, tuple[Label, ...]]:
        """The dependencies a rule finds in the source files its target names (rule.source_deps)."""
        rule = self.rules[target.rule]
        if rule.source_deps is None:
            return {}
        try:
            found = rule.source_deps(SourceDepsContext(self, target)) or {}
        except HbError:
            raise
        except Exception as exc:  # a bug in a rule: say which rule and target
            raise AnalysisError(f"{target.label}: rule {rule.name} failed to find its dependencies: "
                                f"{type(exc).__name__}: {exc}", location=target.location) from exc
        out = {}
        for name, labels in found.items():
            parsed = []
            for text in labels:
                try:
                    label = text if isinstance(text, Label) else Label.parse(text, target.label.package)
                except LabelSyntaxError as exc:
                    raise AnalysisError(f"{target.label}: {exc}", location=target.location) from None
                self._target(label, target.location)  # must be a target: an error naming it otherwise
                parsed.append(label)
            out[name] = tuple(parsed)
        return out

    def target_graph(self, roots: list[Label]) -> dict[Label, GraphNode]:
        """Every target reachable from `roots`, with its dependencies (plain dicts: networkx's
        views and attribute dicts cost a fifth of the analysis of 50,000 targets)."""
        graph: dict[Label, GraphNode] = {}
        stack = list(roots)
        while stack:
            label = stack.pop()
            if label in graph:
                continue
            target = self._target(label, None)
            deps, sources = self._edges(target)
            source_deps = self._source_deps(target)
            deps += [d for labels in source_deps.values() for d in labels if d not in deps]
            deps = tuple(dict.fromkeys(deps))
            graph[label] = GraphNode(target, tuple(sources), source_deps, deps)
            stack.extend(d for d in deps if d not in graph)
        return graph

    @staticmethod
    def dependency_order(graph: dict[Label, GraphNode]) -> list[Label]:
        """Targets with their dependencies first (an iterative depth-first search); a cycle is an
        error naming the whole chain."""
        order: list[Label] = []
        state: dict[Label, int] = {}  # 1: on the current path, 2: done
        for root in graph:
            if root in state:
                continue
            state[root] = 1
            path, pending = [root], [iter(graph[root].deps)]
            while pending:
                for dep in pending[-1]:
                    seen = state.get(dep)
                    if seen is None:
                        state[dep] = 1
                        path.append(dep)
                        pending.append(iter(graph[dep].deps))
                        break
                    if seen == 1:
                        cycle = path[path.index(dep):]
                        chain = [str(label) for label in cycle] + [str(dep)]
                        raise AnalysisError("dependency cycle: " + " -> ".join(chain),
                                            location=graph[dep].target.location,
                                            hint="break the cycle by removing one of these dependencies")
                else:
                    done = path.pop()
                    pending.pop()
                    state[done] = 2
                    order.append(done)
        return order

    # ----- rules -------------------------------------------------------------------------------------
    def analyze(self, patterns: list[str], current_package: str = "") -> AnalysisResult:
        """Analyse with the cyclic garbage collector paused: analysis allocates millions of small
        objects that all stay alive, so each collection scanned an ever larger heap and found
        nothing (measured: 30% of the parent's CPU at 50,000 targets). The BUILD file child forked
        from here inherits the pause; its memory budget (evalguard) still holds."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._analyze(patterns, current_package)
        finally:
            if enabled:
                gc.enable()

    def _analyze(self, patterns: list[str], current_package: str = "") -> AnalysisResult:
        roots = self.expand(patterns, current_package)
        graph = self.target_graph(roots)
        configured: dict[Label, ConfiguredTarget] = {}
        summaries: dict[Label, TargetSummary] = {}
        actions: list[Action] = []
        owners: dict[str, Label] = {}
        order = self.dependency_order(graph)
        for label in order:
            node = graph[label]
            target: TargetDef = node.target
            deps = {d: configured[d] for d in node.deps}
            ctx = RuleContext(self, target, deps, node.source_deps)
            providers = self._run_rule(ctx)
            for action in ctx.actions.declared:
                for out in action.outputs:
                    if out.path in owners:
                        raise AnalysisError(f"{label}: output {out.path} is also produced by {owners[out.path]}",
                                            location=target.location)
                    owners[out.path] = label
            actions.extend(ctx.actions.declared)
            configured[label] = ConfiguredTarget(label, providers)
            summaries[label] = TargetSummary(label, target.rule, target.location, tuple(sorted(deps)),
                                             providers[DefaultInfo].files, node.sources)
        _check_nested_outputs(owners, graph)
        packages = {p.name: p.build_file for p in self.loader._packages.values()}
        loaded = self.loader._packages.values()
        return AnalysisResult(
            requested=roots, targets=summaries, actions=actions, packages=packages,
            loads=tuple(sorted({f for p in loaded for f in p.loads})),
            globs=tuple(g for p in loaded for g in p.globs), read_files=tuple(sorted(self.read_files)),
        )

    def _run_rule(self, ctx: RuleContext) -> dict[type, Provider]:
        rule = self.rules[ctx.target.rule]
        try:
            returned = rule.implementation(ctx) or []
        except HbError:
            raise
        except Exception as exc:  # a bug in a rule: say which rule and target
            import traceback

            raise AnalysisError(f"{ctx.label}: rule {rule.name} failed: {type(exc).__name__}: {exc}",
                                location=ctx.location, detail=traceback.format_exc()) from exc
        providers: dict[type, Provider] = {}
        for provider in returned:
            if not isinstance(provider, Provider):
                raise AnalysisError(f"{ctx.label}: rule {rule.name} returned {provider!r}, not a Provider",
                                    location=ctx.location)
            providers[type(provider)] = provider
        if DefaultInfo not in providers:
            outputs = tuple(o for a in ctx.actions.declared for o in a.outputs)
            providers[DefaultInfo] = DefaultInfo(outputs)
        return providers


def _check_nested_outputs(owners: dict[str, Label], graph) -> None:
    """No output may lie inside another output (`a` with outs ["x"] next to target `a/x`): one of
    them would have to be a file and a directory at once."""
    for path in sorted(owners):
        parts = path.split("/")
        for i in range(1, len(parts)):
            outer = "/".join(parts[:i])
            if outer in owners:
                inner_owner, outer_owner = owners[path], owners[outer]
                outer_at = graph[outer_owner].target.location
                raise AnalysisError(
                    f"{inner_owner}: output {path} is inside {outer}, an output of {outer_owner} ({outer_at})",
                    location=graph[inner_owner].target.location,
                    hint="rename one of the targets or outputs so that neither output path contains the other")


def _labels(value) -> tuple[Label, ...]:
    """The labels of a label or label_list attribute value (a Label is itself a tuple)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, Label) else tuple(value)


def _path(file: File) -> str:
    return file.path


BuildFileError, Package, package_of_cwd  # re-exported
