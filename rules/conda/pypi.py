"""Locking the `pip:` section of an environment with uv, per platform, wheels only.

`hb lock` runs `uv pip compile --format pylock.toml --only-binary :all:` for the Python version of
the locked conda `python` and the platform's wheel tags (manylinux level from `__glibc`, macOS
version from `__osx`). Python packages the conda side already installs (conda packages that depend
on python, as conda-lock counts them, named on PyPI by their purls, else pypi_mapping.json, else
pixi's conda-forge mapping (conda_pypi_names.json), else their PEP 503-normalised name) are dropped from the requirements, passed to uv as constraints at
their conda versions and left out of the result, so nothing is installed twice.
Each resolved package is pinned to the one wheel file whose tags the platform supports (checked
here again with `packaging`, whatever uv listed), by URL and sha256, and written into conda-lock.yml
as a conda-lock `manager: pip` entry. hb build never runs uv.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from dataclasses import dataclass

from hermetic_build.api import AnalysisError, Location, public_url

from .spec import PYPI_MAPPING, PipIndexes, PipRequirement, index_url_problem, parse_virtual_package

CONDA_FORGE_NAMES = pathlib.Path(__file__).resolve().with_name("conda_pypi_names.json")

# uv's --python-platform names the manylinux levels it knows; a glibc in between rounds down
_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
_ARCH = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "osx-arm64": "arm64", "osx-64": "x86_64"}


@dataclass(frozen=True)
class WheelTarget:
    """What a platform's wheels must match: uv's --python-platform (+ its environment) and tags."""

    platform: str
    python_version: str  # e.g. "3.11.2" (the locked conda python)
    uv_platform: str
    uv_env: tuple[tuple[str, str], ...]
    tag_platforms: tuple[str, ...]  # packaging platform tags, most specific first


@dataclass(frozen=True)
class ResolvedWheel:
    name: str  # PEP 503-normalised
    version: str
    url: str
    sha256: str
    # (dependency name, version spec) as conda-lock writes them, sorted; filled by pypi_deps
    dependencies: tuple[tuple[str, str], ...] = ()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_target(platform: str, virtual_packages: list[str], python_version: str, where: str = "") -> WheelTarget:
    versions = dict(parse_virtual_package(v) for v in virtual_packages)
    arch = _ARCH.get(platform)
    if arch is None:
        raise AnalysisError(f"{where}pip packages cannot be locked for {platform} (hb knows the wheel tags of "
                            f"{', '.join(sorted(_ARCH))})")
    if platform.startswith("linux-"):
        glibc = versions.get("__glibc")
        if not glibc or glibc == "0":
            raise AnalysisError(f"{where}locking pip packages for {platform} needs the __glibc virtual package",
                                hint="declare it, e.g. virtual_packages = {\"%s\": [\"__glibc=2.28\", ...]}" % platform)
        major, minor = (int(x) for x in glibc.split(".")[:2])
        usable = [m for m in _MANYLINUX_MINORS if major == 2 and m <= minor]
        if not usable:
            raise AnalysisError(f"{where}__glibc={glibc} is older than manylinux2014 (glibc 2.17), the oldest "
                                "wheels hb locks")
        tags = tuple(f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)) + (
            f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}")
        return WheelTarget(platform, python_version, f"{arch}-manylinux_2_{usable[-1]}", (), tags)
    osx = versions.get("__osx")
    if not osx or osx == "0":
        raise AnalysisError(f"{where}locking pip packages for {platform} needs the __osx virtual package",
                            hint="declare it, e.g. \"__osx=13.0\"")
    from packaging.tags import mac_platforms

    major, minor = (int(x) for x in (osx.split(".") + ["0"])[:2])
    uv_platform = "aarch64-apple-darwin" if arch == "arm64" else "x86_64-apple-darwin"
    return WheelTarget(platform, python_version, uv_platform, (("MACOSX_DEPLOYMENT_TARGET", f"{major}.{minor}"),),
                       tuple(mac_platforms((major, minor), arch)))


def supported_tags(target: WheelTarget):
    from packaging.tags import compatible_tags, cpython_tags

    major, minor = (int(x) for x in target.python_version.split(".")[:2])
    return [*cpython_tags((major, minor), platforms=list(target.tag_platforms)),
            *compatible_tags((major, minor), platforms=list(target.tag_platforms))]


@functools.lru_cache(maxsize=16)
def _tag_rank(target: WheelTarget) -> dict:
    return {tag: i for i, tag in enumerate(supported_tags(target))}


def pick_wheel(name: str, wheels: list[dict], target: WheelTarget) -> dict | None:
    """The wheel of `wheels` (pylock entries: url, hashes) whose best tag ranks highest for target."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    rank = _tag_rank(target)
    best = None
    for wheel in wheels:
        filename = wheel.get("name") or str(wheel.get("url") or "").rsplit("/", 1)[-1]
        try:
            _, _, _, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, wheel)
    return best[1] if best else None


@functools.lru_cache(maxsize=1)
def conda_to_pypi() -> dict[str, tuple[str, ...]]:
    """conda name -> the PyPI names its package provides, where they differ from its own name
    (pypi_mapping.json, in conda-lock's mapping format: one entry per PyPI name; one conda package
    may provide several, e.g. `cupy` for `cupy` and `cupy-cuda12x`, as in parselmouth's mapping
    that pixi uses)."""
    out: dict[str, set[str]] = {}
    for pypi_name, entry in json.loads(PYPI_MAPPING.read_text()).items():
        out.setdefault(entry["conda_name"], set()).add(normalise(entry.get("pypi_name") or pypi_name))
    return {conda: tuple(sorted(names)) for conda, names in out.items()}


def _purl_names(record) -> tuple[str, ...]:
    """PyPI names from the record's package URLs (`pkg:pypi/NAME@...`, CEP 17 `purls` in repodata),
    which pixi prefers to any mapping; () when the channel records none."""
    try:
        purls = json.loads(record.to_json()).get("purls") or ()
    except (AttributeError, ValueError, TypeError):
        return ()
    return tuple(sorted({normalise(p[len("pkg:pypi/"):].split("@")[0].split("?")[0]) for p in purls
                         if isinstance(p, str) and p.startswith("pkg:pypi/") and len(p) > len("pkg:pypi/")}))


@functools.lru_cache(maxsize=1)
def conda_forge_names() -> tuple[dict[str, str], frozenset[str]]:
    """pixi's fallback mapping for conda-forge (parselmouth's compressed mapping, vendored in
    conda_pypi_names.json): (conda name -> its PyPI name where the two differ, the conda names that
    hold no Python distribution)."""
    data = json.loads(CONDA_FORGE_NAMES.read_text())
    return data["renamed"], frozenset(data["not_on_pypi"])


def pypi_names(record) -> tuple[str, ...]:
    """The PyPI names a conda record provides: its purls (as pixi); else hb's mapping
    (pypi_mapping.json); else pixi's mapping of conda-forge names: none for a package that holds no
    Python distribution (a metapackage such as `typing-extensions`, a library), its PyPI name and its
    own where they differ (a package that bundles several distributions is recorded there under one
    of them, e.g. `jaxlib`, so its own name is kept too); else its own PEP 503-normalised name."""
    name = record.name.normalized
    found = _purl_names(record) or conda_to_pypi().get(name)
    if found:
        return found
    renamed, not_on_pypi = conda_forge_names()
    if name in not_on_pypi:
        return ()
    if name in renamed:
        return tuple(sorted({renamed[name], normalise(name)}))
    return (normalise(name),)


def conda_provided(records) -> dict[str, str]:
    """PyPI name -> version of the Python packages the conda side installs (conda-lock's rule: the
    packages that depend on python; named by purls, the mapping or their own PEP 503-normalised
    name; where two claim one PyPI name, the one whose name differs wins, as in conda-lock: the
    Python binding `python-xxhash` over a library `xxhash`)."""
    out: dict[str, tuple[bool, str]] = {}
    for record in sorted(records, key=lambda r: r.name.normalized):
        name = record.name.normalized
        depends = {d.split()[0] for d in record.depends}
        if name == "python" or name.startswith("__") or "python" not in depends:
            continue
        for pypi_name in pypi_names(record):
            mapped = pypi_name != normalise(name)
            if pypi_name not in out or (mapped and not out[pypi_name][0]):
                out[pypi_name] = (mapped, str(record.version))
    return {name: version for name, (_, version) in sorted(out.items())}


def without_conda_provided(requirements: list[PipRequirement], provided: dict[str, str], target: WheelTarget,
                           where: str = "") -> list[PipRequirement]:
    """The requirements uv must resolve: one a conda package already satisfies is not installed twice
    (and need not exist on PyPI); one it provides at a version the requirement excludes is an error."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    out = []
    for r in requirements:
        version = provided.get(r.name)
        if version is None:
            out.append(r)
            continue
        specifier = Requirement(r.text).specifier
        try:
            ok = not specifier or specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = True  # a conda version PEP 440 cannot read: the conda package is taken as it is
        if not ok:
            raise AnalysisError(f"{where}pip requirement {r.text!r} conflicts with the conda package {r.name} "
                                f"{version} of the same environment ({target.platform})",
                                location=Location(r.path, r.line),
                                hint="a Python package is installed once: change the conda spec or the pip one")
    return out


PIP_INDEXES_KEY = "hb.pip_indexes"  # the lock's custom metadata: the indexes its pip entries were resolved from


def pip_index_args(index_url: str, extra_index_urls, written: PipIndexes = PipIndexes(),
                   platform: str | None = None) -> tuple[str, ...]:
    """uv's index options for conda_lock's pip_index_url / pip_extra_index_urls (e.g. PyTorch's
    https://download.pytorch.org/whl/cu121) with those the environment files write (`written`,
    environment_pip_indexes; checked there, at their lines), for `platform` (lines with a platform
    selector only where it keeps them); () for PyPI alone. Each an http(s) URL without credentials
    (index_url_problem). ValueError: why not. With platform None, what the lock records and compares:
    every platform's, each selected line's URL followed by its selector (`[linux]`)."""
    if index_url and written.index_url and index_url != written.index_url:
        raise ValueError(f"pip_index_url {index_url!r} and the --index-url {written.index_url!r} at "
                         f"{written.index_url_at} name different indexes: keep one")
    applying = written.for_platform(platform) if platform is not None else written
    extras = [u for u in dict.fromkeys([*extra_index_urls, *applying.extra_index_urls])]
    main = index_url or written.index_url
    entries = ([("--index-url", main)] if main else []) + [("--extra-index-url", u) for u in extras] \
        + [("--find-links", u) for u in applying.find_links] \
        + ([(option, url, f"[{selector}]") for option, url, selector in written.selected] if platform is None else [])
    out = []
    for option, url, *selector in entries:
        why = index_url_problem(url)
        if why:
            raise ValueError(why)
        out += [option, url, *selector]
    return tuple(out)


def uv_inputs(requirements: list[PipRequirement], target: WheelTarget, provided: dict[str, str],
              preferences: dict[str, str], indexes: tuple[str, ...] = ()):
    """The exact inputs of uv's resolution of `requirements` for `target`: `provided` (conda's Python
    packages) as constraints at their conda versions, `preferences` (name -> version of the old lock)
    as an existing output file whose pins uv keeps where it can."""
    from packaging.version import InvalidVersion, Version

    from .uv_run import UvInputs

    constraints = []
    for name, version in sorted(provided.items()):
        try:
            constraints.append(f"{name}=={Version(version)}\n")
        except InvalidVersion:
            continue  # not a PEP 440 version: the package is still left out of the result
    prefs = ""
    if preferences:
        prefs = 'lock-version = "1.0"\ncreated-by = "hb"\n' + "".join(
            f'\n[[packages]]\nname = "{n}"\nversion = "{v}"\n' for n, v in sorted(preferences.items()))
    return UvInputs(target.platform, "".join(r.text + "\n" for r in requirements), "".join(constraints), prefs,
                    target.python_version, target.uv_platform, target.uv_env, tuple(indexes))


def wheel_schemes(indexes: tuple[str, ...]) -> tuple[str, ...]:
    """The URL schemes a wheel of the indexes `indexes` (uv's index options, pip_index_args; () for
    PyPI) may have: https, and http where one of them is an http index. An index page is outside
    data: it may name a wheel on another host (a CDN), never a file of the machine that locks (uv
    follows a `file://` link of an http page, reads and hashes the local file) or another protocol,
    as a conda channel may not (lock._PACKAGE_SCHEMES)."""
    from urllib.parse import urlsplit

    return ("https", "http") if any(urlsplit(arg).scheme == "http" for arg in indexes) else ("https",)


def resolved_wheels(result, requirements: list[PipRequirement], target: WheelTarget, provided: dict[str, str],
                    where: str = "", indexes: tuple[str, ...] = ()) -> list[ResolvedWheel]:
    """The wheels of uv's result (a uv_run.UvResult) for `target`, conda-provided packages left out,
    each an http(s) URL its indexes (uv's index options) may name (wheel_schemes)."""
    import tomllib
    from urllib.parse import urlsplit

    if result.timed_out:
        raise AnalysisError(f"{where}uv did not finish resolving the pip requirements for {target.platform} within "
                            f"{result.timed_out} s and was ended: an index or find-links page that answers slowly "
                            "or without end?", location=_location(requirements, result.stderr),
                            hint=f"if the indexes are right and resolving takes longer, raise uv_timeout_s "
                                 f"({result.limits.where})")
    if result.returncode != 0:
        raise _resolution_error(result.stderr, requirements, target, where, result.limits)
    if result.oversized:
        raise AnalysisError(f"{where}uv's resolution of the pip requirements for {target.platform} is larger than "
                            f"{result.oversized:,} bytes (a pylock.toml of hundreds of packages is about 1 MB): an "
                            "index that answers with huge pages?", location=_location(requirements, result.stderr))
    lock = tomllib.loads(result.pylock)
    wheels = []
    allowed = wheel_schemes(indexes)
    for package in lock.get("packages", []):
        name = normalise(package["name"])
        if name in provided:
            continue
        listed = package.get("wheels") or []
        chosen = pick_wheel(name, listed, target)
        if chosen is None:
            raise _not_installable(name, package, listed, requirements, target, where)
        url = chosen.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in allowed:
            shown = public_url(url) if isinstance(url, str) else f"the local path {chosen.get('path')!r}"
            raise AnalysisError(f"{where}the index lists {shown} for {name} {package.get('version', '')} "
                                f"({target.platform}): a wheel of these indexes must be an {' or '.join(allowed)} "
                                "URL", location=_location(requirements, name),
                                hint="the index or find-links page is wrong or hostile: fix or drop it (nothing "
                                     "was written)")
        sha256 = (chosen.get("hashes") or {}).get("sha256", "")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise AnalysisError(f"{where}uv gave no sha256 for {public_url(url)}")
        wheels.append(ResolvedWheel(name, str(package["version"]), url, sha256))
    # pip's hash-checking mode: once a requirement has --hash options, every package installed needs
    # them (pip-compile --generate-hashes writes each dependency with its hashes), and each line of a
    # package that has them must allow its wheel
    pinned: dict[str, list[PipRequirement]] = {}
    for r in requirements:
        if r.hashes:
            pinned.setdefault(r.name, []).append(r)
    for wheel in wheels:
        for r in pinned.get(wheel.name, ()):
            if wheel.sha256 not in r.hashes:
                raise AnalysisError(f"{where}the wheel of {wheel.name} {wheel.version} for {target.platform} is "
                                    f"{public_url(wheel.url)} (sha256 {wheel.sha256}), which the --hash options of "
                                    f"{r.text!r} do not allow", location=Location(r.path, r.line),
                                    hint="regenerate the hashes (pip-compile --generate-hashes) or pin the version "
                                         "they were written for")
    unhashed = [w for w in wheels if pinned and w.name not in pinned]
    if unhashed:
        first = next(iter(pinned.values()))[0]
        raise AnalysisError(f"{where}{', '.join(f'{w.name} {w.version}' for w in unhashed)} ({target.platform}) "
                            f"would be locked with no --hash option allowing it, while {first.text!r} and the other "
                            "requirements with --hash options ask for hash-checking, where pip installs no package "
                            "without its hashes", location=Location(first.path, first.line),
                            hint="add each with its hashes (pip-compile --generate-hashes writes every dependency), "
                                 "or drop the --hash options")
    return wheels


def resolve(requirements: list[PipRequirement], target: WheelTarget, provided: dict[str, str],
            preferences: dict[str, str], cache_dir: pathlib.Path, where: str = "") -> list[ResolvedWheel]:
    """Resolve `requirements` for `target` with uv, now (one process, waited for)."""
    from .uv_run import UvRun

    run = UvRun(uv_inputs(requirements, target, provided, preferences), cache_dir)
    return resolved_wheels(run.result(), requirements, target, provided, where)


def root_extras(requirements: list[PipRequirement]) -> dict[str, set[str]]:
    """The extras the pip: lines ask for, by normalised name (`pkg[a,b]`)."""
    from packaging.requirements import Requirement

    out: dict[str, set[str]] = {}
    for r in requirements:
        out.setdefault(r.name, set()).update(normalise(e) for e in Requirement(r.text).extras)
    return out


def _location(requirements: list[PipRequirement], text: str) -> Location | None:
    for r in requirements:
        if re.search(rf"(?<![\w.-]){re.escape(r.name)}(?![\w.-])", normalise(text)):
            return Location(r.path, r.line)
    return Location(requirements[0].path, requirements[0].line) if requirements else None


def _resolution_error(stderr: str, requirements, target: WheelTarget, where: str, limits=None) -> AnalysisError:
    message = "\n".join(line for line in stderr.strip().splitlines() if line.strip())
    hint = "check the pip: requirements (name, version) against PyPI"
    if re.search(r"^memory allocation of \d+ bytes failed", message, re.M) or "File too large" in message:
        hint = ("uv ran out of the memory or file size hb allows it (an index or find-links page without end?); "
                f"if the indexes are right, raise uv_max_memory_mb ({limits.where if limits else 'hermetic.toml'})")
    if "no usable wheels" in message or "building from source is disabled" in message or "--only-binary" in message:
        hint = ("hb installs wheels only: a requirement published only as an sdist would run its build at "
                "install time and cannot be pinned to one file; pick a version with wheels for this platform "
                "or package it as a conda package")
    return AnalysisError(f"{where}cannot lock the pip requirements for {target.platform} (Python "
                         f"{target.python_version}, {target.uv_platform}):\n{message}",
                         location=_location(requirements, message), hint=hint)


def _not_installable(name, package, listed, requirements, target: WheelTarget, where: str) -> AnalysisError:
    if not listed:
        what = f"{name} {package.get('version', '')} has no wheel (only an sdist)"
    else:
        what = (f"none of the wheels of {name} {package.get('version', '')} fits {target.platform} (Python "
                f"{target.python_version}, {target.tag_platforms[0]}): "
                + ", ".join(w['url'].rsplit('/', 1)[-1] for w in listed))
    return AnalysisError(f"{where}{what}", location=_location(requirements, name),
                         hint="hb installs wheels only; pick a version with a wheel for this platform, "
                              "or package it as a conda package")


def locked_wheel_dependency(wheel: ResolvedWheel, platform: str):
    """A conda-lock `manager: pip` LockedDependency (conda-lock's own model and schema)."""
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    return LockedDependency(name=wheel.name, version=wheel.version, manager="pip", platform=platform,
                            dependencies=dict(wheel.dependencies), url=public_url(wheel.url),
                            hash=HashModel(sha256=wheel.sha256), categories={"main"})
