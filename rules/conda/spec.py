"""environment.yml, through conda-lock's own parser, and the content hash conda-lock writes."""

from __future__ import annotations

import pathlib
import tempfile
from dataclasses import dataclass

import yaml
from blake3 import blake3

from hermetic_build.api import AnalysisError, Location

# conda-lock needs a PyPI name mapping only for pip dependencies, which hb refuses (see README).
_NO_PIP_MAPPING = "https://hermetic-build.invalid/no-pip-mapping.json"


@dataclass(frozen=True)
class EnvironmentSpec:
    path: pathlib.Path
    lock_spec: object  # conda_lock.models.lock_spec.LockSpecification
    platforms: tuple[str, ...]

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.url for c in self.lock_spec.channels)

    def match_specs(self, platform: str) -> list[str]:
        specs = []
        for dep in self.lock_spec.dependencies.get(platform, []):
            text = dep.name
            if getattr(dep, "version", ""):
                text += f" {dep.version}"
            if getattr(dep, "build", None):
                text += f" {dep.build}"
            specs.append(text)
        return specs


def read_environment(path: pathlib.Path, platforms, channel_overrides=(), shown_path: str | None = None) -> EnvironmentSpec:
    """Parse an environment.yml; refuse what hb cannot lock, naming file and line."""
    shown = shown_path or str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AnalysisError(f"{shown} does not exist", location=Location(shown)) from None
    _check_environment_shape(text, shown)
    import logging

    from conda_lock.src_parser import make_lock_spec

    logging.getLogger("conda_lock").setLevel(logging.ERROR)  # it logs every filtered selector line
    try:
        lock_spec = make_lock_spec(src_files=[path], channel_overrides=list(channel_overrides) or None,
                                   platform_overrides=list(platforms), mapping_url=_NO_PIP_MAPPING)
    except Exception as exc:  # conda-lock raises plain exceptions for bad specs
        raise AnalysisError(f"cannot read {shown}: {exc}", location=Location(shown)) from None
    return EnvironmentSpec(path, lock_spec, tuple(platforms))


def _check_environment_shape(text: str, shown: str) -> None:
    """Check the shape conda-lock expects before it sees the file, so that a wrong shape is an
    error at `file:line` (a YAML syntax error: `file:line:column`) instead of a Python exception
    from deep inside conda-lock."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AnalysisError(f"invalid YAML: {problem}",
                            location=_yaml_error_location(exc, text, shown)) from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise AnalysisError("an environment file must be a mapping with 'dependencies'",
                            location=_at(node, shown) if node is not None else Location(shown))
    for key, value in node.value:
        if key.value in ("channels", "platforms"):
            _require_strings(value, key.value, shown, example="conda-forge" if key.value == "channels" else "linux-64")
        elif key.value == "dependencies":
            if not isinstance(value, yaml.SequenceNode):
                raise AnalysisError(f"'dependencies' must be a list of package specs, got {_shape(value)}",
                                    location=_at(value, shown), hint="write one spec per line: '  - numpy >=1.26'")
            for item in value.value:
                if isinstance(item, yaml.MappingNode):
                    raise AnalysisError(
                        "pip dependencies are not supported: hb locks conda packages only",
                        location=_at(item, shown),
                        hint="package the Python dependency as a conda package (a noarch: python recipe), "
                             "or install it in a later layer")
                _require_string(item, "each dependency", shown, example="numpy >=1.26")


def _require_strings(node, what: str, shown: str, example: str) -> None:
    if not isinstance(node, yaml.SequenceNode):
        raise AnalysisError(f"'{what}' must be a list of strings, got {_shape(node)}", location=_at(node, shown),
                            hint=f"write one per line: '  - {example}'")
    for item in node.value:
        _require_string(item, f"each entry of '{what}'", shown, example)


def _require_string(node, what: str, shown: str, example: str) -> None:
    if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" and node.value.strip()):
        raise AnalysisError(f"{what} must be a non-empty string such as {example!r}, got {_shape(node)}",
                            location=_at(node, shown))


def _shape(node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    kind = node.tag.rsplit(":", 1)[-1]
    if kind == "null" or node.value == "":
        return "nothing"
    name = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}.get(kind, f"a {kind}")
    return f"{name} {node.value!r}"


def _at(node, shown: str) -> Location:
    return Location(shown, node.start_mark.line + 1)


def _yaml_error_location(exc, text: str, shown: str) -> Location:
    """file:line:column of a YAML error; a reader error (e.g. a NUL byte) has only an offset."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return Location(shown, mark.line + 1, mark.column + 1)
    position = getattr(exc, "position", None)
    if isinstance(position, int):
        line_start = text.rfind("\n", 0, position) + 1
        return Location(shown, text.count("\n", 0, position) + 1, position - line_start + 1)
    return Location(shown)


def virtual_package_repo(virtual_packages: dict[str, list[str]], platforms):
    """conda-lock's fake repodata for exactly the declared virtual packages (never its defaults)."""
    from conda_lock.virtual_package import virtual_package_repo_from_specification

    subdirs = {}
    for platform in platforms:
        packages = {}
        for item in virtual_packages.get(platform, ()):
            name, version = parse_virtual_package(item)
            packages[name] = version
        subdirs[platform] = {"packages": packages}
    with tempfile.TemporaryDirectory(prefix="hb-vpkgs-") as tmp:
        spec_file = pathlib.Path(tmp) / "virtual-packages.yml"
        spec_file.write_text(yaml.safe_dump({"subdirs": subdirs}))
        return virtual_package_repo_from_specification(spec_file)


def parse_virtual_package(item: str) -> tuple[str, str]:
    """`__cuda=12.4` -> ("__cuda", "12.4"); a bare `__unix` has version 0."""
    name, _, version = item.partition("=")
    name = name.strip()
    if not name.startswith("__"):
        raise ValueError(f"virtual package {item!r} must start with '__' (e.g. __cuda=12.4)")
    return name, version.strip() or "0"


def content_hashes(spec: EnvironmentSpec, virtual_packages: dict[str, list[str]]) -> dict[str, str]:
    """conda-lock's per-platform content hash of the spec, computed by conda-lock itself."""
    from conda_lock.content_hash import compute_content_hashes

    return dict(compute_content_hashes(spec.lock_spec, virtual_package_repo(virtual_packages, spec.platforms)))


def input_fingerprints(spec: EnvironmentSpec, virtual_packages: dict[str, list[str]]) -> dict[str, str]:
    """Per-input digests stored in the lock's custom metadata, so a stale lock can say what changed."""
    def h(value) -> str:
        return blake3(repr(value).encode()).hexdigest()[:16]

    out = {"hb.channels": h(spec.channels), "hb.platforms": h(sorted(spec.platforms))}
    for platform in spec.platforms:
        out[f"hb.dependencies.{platform}"] = h(sorted(spec.match_specs(platform)))
        out[f"hb.virtual_packages.{platform}"] = h(sorted(virtual_packages.get(platform, ())))
    return out


def explain_staleness(recorded: dict | None, current: dict[str, str], platform: str | None = None) -> list[str]:
    recorded = recorded or {}
    names = {
        "hb.channels": "the channels changed",
        "hb.platforms": "the list of platforms changed",
    }
    reasons = []
    for key, value in sorted(current.items()):
        if platform and key.rsplit(".", 1)[-1] not in (platform,) and key.count(".") > 1:
            continue
        if recorded.get(key) == value:
            continue
        if key in names:
            reasons.append(names[key])
        elif key.startswith("hb.dependencies."):
            reasons.append(f"the dependencies for {key.split('.', 2)[2]} changed")
        elif key.startswith("hb.virtual_packages."):
            reasons.append(f"the virtual packages for {key.split('.', 2)[2]} changed")
    return reasons or ["its content hash no longer matches the environment spec"]
