"""The workspace: the nearest ancestor directory holding hermetic.toml, and its settings."""

from __future__ import annotations

import functools
import os
import platform as _platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Location, UsageError, did_you_mean

WORKSPACE_FILE = "hermetic.toml"
BUILD_FILE = "BUILD.hermetic"
OUTPUT_DIR = "hb-out"


@functools.lru_cache(maxsize=1)
def host_platform() -> str:
    """The conda-style name of this machine's platform (linux-64, osx-arm64, ...); the same for
    the whole process (every genrule action asks)."""
    system = {"linux": "linux", "darwin": "osx", "win32": "win"}.get(os.sys.platform, os.sys.platform)
    machine = _platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64"}.get(machine, machine)
    if system == "osx" and arch == "aarch64":
        arch = "arm64"
    return f"{system}-{arch}"


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    cache_dir_setting: str = ""  # how the user named it, for errors: "HB_CACHE_DIR=/x", ...
    platforms: tuple[str, ...] = ()
    source_date_epoch: int = 0
    env_allowlist: tuple[str, ...] = ()
    remote_cache: str | None = None
    remote_instance_name: str = ""  # REAPI instance for grpc(s):// caches whose URL names none
    remote_executor: str | None = None  # grpc(s)://host:port[/instance]: a REAPI engine that runs actions
    remote_download: str = "minimal"  # with remote_executor: "minimal" leaves unneeded outputs remote, or "all"
    remote_upload: bool = False
    remote_timeout: int = 10
    jobs: int = 0
    rule_modules: tuple[str, ...] = ("rules",)
    # Budget for evaluating one BUILD file (with the .bzl files it loads): BUILD files are untrusted.
    starlark_memory_mb: int = 2048
    starlark_timeout_s: int = 60
    extra: dict = field(default_factory=dict, compare=False)  # sections owned by rules (e.g. [conda])


_KNOWN_KEYS = {"cache_dir", "platforms", "source_date_epoch", "env_allowlist", "remote_cache", "jobs",
               "rule_modules", "remote_upload", "remote_timeout", "remote_instance_name", "remote_executor",
               "remote_download", "starlark_memory_mb", "starlark_timeout_s"}


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings

    @property
    def output_root(self) -> Path:
        return self.root / OUTPUT_DIR

    def package_dir(self, package: str) -> Path:
        return self.root / package if package else self.root

    def build_file(self, package: str) -> Path:
        return self.package_dir(package) / BUILD_FILE

    def relpath(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def source_file(self, rel: str) -> Path:
        """The real path of the workspace-relative source file `rel`, for reading it (resolve_source)."""
        return resolve_source(self.root, rel)

    def source_real_path(self, rel: str) -> str:
        """source_file as a string: for the loops over every source of a big graph (a Path costs
        more to make than the checks do)."""
        return resolve_source_str(self.root, rel)

    def package_of(self, directory: Path) -> str:
        """The package a directory belongs to: the nearest ancestor with BUILD.hermetic ('' = root)."""
        directory = directory.resolve()
        while True:
            if (directory / BUILD_FILE).is_file() or directory == self.root:
                rel = os.path.relpath(directory, self.root)
                return "" if rel == "." else rel.replace(os.sep, "/")
            if self.root not in directory.parents:
                return ""
            directory = directory.parent


def find_workspace(start: Path | None = None) -> Workspace:
    start = (start or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / WORKSPACE_FILE).is_file():
            return Workspace(directory, load_settings(directory))
    raise UsageError(
        f"no {WORKSPACE_FILE} found in {start} or any parent directory",
        hint=f"create an empty {WORKSPACE_FILE} at the root of your workspace",
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hermetic-build"


def check_cache_dir(cache_dir: Path, workspace_root: Path, setting: str) -> Path:
    """Refuse a cache directory whose loss would hurt: /, $HOME (or above it), the workspace or a
    directory above it. (That it is an hb cache at all is checked when the store opens it.)"""
    if "\0" in str(cache_dir):
        raise UsageError(f"{setting}: the path contains a NUL byte")
    try:
        resolved = cache_dir.resolve()
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"{setting}: cannot resolve the path: {exc}") from None
    home = Path(os.path.expanduser("~")).resolve()
    ws = workspace_root.resolve()
    why = None
    if resolved == Path(resolved.anchor):
        why = "the root directory"
    elif resolved == home or resolved in home.parents:
        why = "your home directory" if resolved == home else f"a directory above your home directory {home}"
    elif resolved == ws or resolved in ws.parents:
        why = "the workspace" if resolved == ws else f"a directory above the workspace {ws}"
    if why:
        raise UsageError(f"{setting} is {why}: hb will not use it as its cache",
                         hint="use a directory of its own, e.g. HB_CACHE_DIR=~/.cache/hermetic-build")
    return cache_dir


def load_settings(root: Path) -> Settings:
    path = root / WORKSPACE_FILE
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML: {exc}", location=Location(str(path))) from None
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key in top:
        if key not in _KNOWN_KEYS:
            raise UsageError(
                f"unknown setting {key!r}", location=Location(str(path)),
                hint=did_you_mean(key, _KNOWN_KEYS) or f"known settings: {', '.join(sorted(_KNOWN_KEYS))}",
            )

    def typed(key, kind, default):
        value = top.get(key, default)
        if not isinstance(value, kind):
            raise UsageError(f"setting {key!r} must be {kind.__name__}, not {type(value).__name__}",
                             location=Location(str(path)))
        return value

    def positive(key, default):
        value = typed(key, int, default)
        if isinstance(value, bool) or value <= 0:
            raise UsageError(f"setting {key!r} must be a positive integer, not {value!r}", location=Location(str(path)))
        return value

    env_cache = os.environ.get("HB_CACHE_DIR")
    if env_cache:
        cache_dir, setting = Path(env_cache), f"HB_CACHE_DIR={env_cache}"
    elif "cache_dir" in top:
        text = typed("cache_dir", str, "")
        cache_dir = Path(os.path.expanduser(text))
        if not cache_dir.is_absolute():
            cache_dir = root / cache_dir
        setting = f"cache_dir = {text!r} in {path}"
    else:
        cache_dir = default_cache_dir()
        setting = f"the default cache directory {cache_dir} (XDG_CACHE_HOME)"
    cache_dir = check_cache_dir(cache_dir.absolute(), root, setting)
    return Settings(
        cache_dir=cache_dir,
        cache_dir_setting=setting,
        platforms=tuple(typed("platforms", list, [])) or (host_platform(),),
        source_date_epoch=typed("source_date_epoch", int, 0),
        env_allowlist=tuple(sorted(typed("env_allowlist", list, []))),
        remote_cache=typed("remote_cache", str, "") or None,
        remote_instance_name=typed("remote_instance_name", str, ""),
        remote_executor=typed("remote_executor", str, "") or None,
        remote_download=typed("remote_download", str, "minimal"),
        remote_upload=typed("remote_upload", bool, False),
        remote_timeout=typed("remote_timeout", int, 10),
        jobs=typed("jobs", int, 0),
        rule_modules=tuple(typed("rule_modules", list, ["rules"])),
        starlark_memory_mb=positive("starlark_memory_mb", 2048),
        starlark_timeout_s=positive("starlark_timeout_s", 60),
        extra=sections,
    )


def resolve_source(root: Path, rel: str) -> Path:
    """The real path of the source file `rel` of the workspace at `root`, checked (resolve_source_str)."""
    return Path(resolve_source_str(root, rel))


def resolve_source_str(root: Path, rel: str) -> str:
    """The real path of the source file `rel` of the workspace at `root`. A source that is (or lies
    under) a symbolic link resolving outside the workspace, or into hb-out/, is refused: a checked-out
    repository must not make hb read, hash and publish files from elsewhere on the machine (~/.ssh,
    /etc). Links inside the workspace are followed."""
    real_root, outputs = _real_roots(str(root))
    directory, name = os.path.split(rel)
    real_dir = _realpath_cached(os.path.join(real_root, directory)) if directory else real_root
    real = os.path.join(real_dir, name)
    if os.path.islink(real):  # one lstat per file; directories are resolved once per process
        real = os.path.realpath(real)
    if not real.startswith(real_root + os.sep) or real == outputs or real.startswith(outputs + os.sep):
        from .errors import AnalysisError

        where = "into hb-out/" if real.startswith(real_root + os.sep) else "outside the workspace"
        raise AnalysisError(f"source file {rel} resolves to {real}, {where}",
                            hint="hb reads only source files inside the workspace: copy the file in, "
                                 "or make the link point inside the workspace")
    return real


@functools.lru_cache(maxsize=64)
def _real_roots(root: str) -> tuple[str, str]:
    """(the real path of a workspace root, that of its hb-out/)."""
    real_root = _realpath_cached(root)
    return real_root, os.path.join(real_root, OUTPUT_DIR)


@functools.lru_cache(maxsize=65536)
def _realpath_cached(path: str) -> str:
    return os.path.realpath(path)


def package_of_cwd(workspace: Workspace, cwd: Path | None = None) -> str:
    cwd = (cwd or Path.cwd()).resolve()
    if cwd != workspace.root and workspace.root not in cwd.parents:
        return ""
    rel = os.path.relpath(cwd, workspace.root)
    return "" if rel == "." else rel.replace(os.sep, "/")
