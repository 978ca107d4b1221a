"""The workspace: the nearest ancestor directory holding hermetic.toml, and its settings."""

from __future__ import annotations

import functools
import os
import platform as _platform
import re
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import AnalysisError, Location, UsageError, did_you_mean
from .trust import PrivilegedSetting, privileged

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
    # what hermetic.toml sets that reaches outside the workspace: used only once you trust it (trust.py)
    privileged: tuple = field(default=(), compare=False)


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


MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: the last second a timestamp (RFC 3339, tar, zip) can hold
_PLATFORM = re.compile(r"[a-z0-9]+(?:-[a-z0-9_]+)*")  # conda subdirs: linux-64, osx-arm64, noarch
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")  # an absolute module name
_ENV_NAME = re.compile(r"[^=\x00]+")  # a host variable's name: anything but '=' and NUL
REMOTE_CACHE_SCHEMES = ("http", "https", "oci", "grpc", "grpcs")
REMOTE_EXECUTOR_SCHEMES = ("grpc", "grpcs")


MAX_SETTINGS_BYTES = 16 << 20


def load_settings(root: Path) -> Settings:
    path = root / WORKSPACE_FILE
    try:
        # a file of the checkout: never one a link leads to outside it (resolve_source), at most 16 MiB
        text = read_regular_file(resolve_source_str(root, WORKSPACE_FILE), MAX_SETTINGS_BYTES, WORKSPACE_FILE).decode()
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid TOML: {exc}", location=Location(str(path))) from None
    except AnalysisError as exc:  # a link out of the workspace
        raise UsageError(exc.message, location=Location(str(path)), hint=exc.hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {WORKSPACE_FILE}: {exc}", location=Location(str(path))) from None
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    read = _SettingsReader(path, text, top)
    for key in top:
        if key not in _KNOWN_KEYS:
            raise UsageError(
                f"unknown setting {key!r}", location=read.where(key),
                hint=did_you_mean(key, _KNOWN_KEYS) or f"known settings: {', '.join(sorted(_KNOWN_KEYS))}",
            )
    cache_dir, setting = _cache_dir(root, read)
    settings = Settings(
        cache_dir=cache_dir,
        cache_dir_setting=setting,
        platforms=read.strings("platforms", [], _PLATFORM, "a conda platform name such as linux-64") or (host_platform(),),
        source_date_epoch=read.integer("source_date_epoch", 0, 0, MAX_EPOCH),
        env_allowlist=tuple(sorted(read.strings("env_allowlist", [], _ENV_NAME, "a variable name"))),
        remote_cache=read.url("remote_cache", REMOTE_CACHE_SCHEMES) or None,
        remote_instance_name=read.typed("remote_instance_name", str, ""),
        remote_executor=read.url("remote_executor", REMOTE_EXECUTOR_SCHEMES) or None,
        remote_download=read.choice("remote_download", ("minimal", "all")),
        remote_upload=read.typed("remote_upload", bool, False),
        remote_timeout=read.integer("remote_timeout", 10, 1, 86400),
        jobs=read.integer("jobs", 0, 0, 10000),
        rule_modules=read.strings("rule_modules", ["rules"], _MODULE, "an absolute module name such as rules"),
        starlark_memory_mb=read.integer("starlark_memory_mb", 2048, 1, 1 << 20),
        starlark_timeout_s=read.integer("starlark_timeout_s", 60, 1, 86400),
        extra=sections,
    )
    effective = set(top) - ({"cache_dir"} if os.environ.get("HB_CACHE_DIR") else set())
    return replace(settings, privileged=tuple(
        PrivilegedSetting(key, top[key], read.where(key)) for key in sorted(effective, key=read.line_of)
        if privileged(key, top[key])))


def _refuse_cache_inside(cache_dir: Path, root: Path, read: "_SettingsReader") -> None:
    """hermetic.toml's cache_dir may not lie inside the workspace: a cache there can come with the
    checkout, and hb would take its entries (and the analysis and no-op state it loads back as Python
    objects) as its own. HB_CACHE_DIR may: that is your choice for this machine."""
    try:
        resolved, ws = cache_dir.resolve(), root.resolve()
        inside = resolved != ws and resolved.is_relative_to(ws)  # the workspace itself: check_cache_dir
    except (OSError, RuntimeError, ValueError):
        return  # check_cache_dir reports what cannot be resolved
    if inside:
        read.fail("cache_dir", "names a directory inside the workspace, which a checkout could bring with "
                  "it (hb would take its results and state as its own)",
                  hint="name a directory outside the workspace, or set HB_CACHE_DIR on this machine")


def _cache_dir(root: Path, read: "_SettingsReader") -> tuple[Path, str]:
    """(the cache directory, how the user named it): HB_CACHE_DIR, else cache_dir, else the default."""
    env_cache = os.environ.get("HB_CACHE_DIR")
    if env_cache:
        cache_dir, setting = Path(env_cache), f"HB_CACHE_DIR={env_cache}"
    elif "cache_dir" in read.top:
        text = read.typed("cache_dir", str, "")
        cache_dir = Path(os.path.expanduser(text))
        if not cache_dir.is_absolute():
            cache_dir = root / cache_dir
        setting = f"cache_dir = {text!r} in {read.path}"
        _refuse_cache_inside(cache_dir, root, read)
    else:
        cache_dir = default_cache_dir()
        setting = f"the default cache directory {cache_dir} (XDG_CACHE_HOME)"
    return check_cache_dir(cache_dir.absolute(), root, setting), setting


class _SettingsReader:
    """The top-level settings of hermetic.toml, each checked for its type and range; an error names
    the file and the setting's line."""

    def __init__(self, path: Path, text: str, top: dict):
        self.path, self.text, self.top = path, text, top

    def where(self, key: str) -> Location:
        return Location(str(self.path), self.line_of(key))

    def line_of(self, key: str) -> int:
        match = re.search(rf"^[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*=", self.text, re.MULTILINE)
        return self.text.count("\n", 0, match.start()) + 1 if match else 0

    def fail(self, key: str, message: str, hint: str | None = None):
        raise UsageError(f"setting {key!r} {message}", location=self.where(key), hint=hint)

    def typed(self, key: str, kind: type, default):
        value = self.top.get(key, default)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"must be {_a(kind.__name__)}, not {_a(type(value).__name__)}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.typed(key, int, default)
        if not low <= value <= high:
            what = f"a positive integer of at most {high}" if low == 1 else f"an integer from {low} to {high}"
            self.fail(key, f"must be {what}, not {value}")
        return value

    def strings(self, key: str, default: list, pattern: re.Pattern, what: str) -> tuple[str, ...]:
        items = self.typed(key, list, default)
        for item in items:
            if not isinstance(item, str):
                self.fail(key, f"must be a list of strings; {item!r} is {_a(type(item).__name__)}")
            if not pattern.fullmatch(item):
                self.fail(key, f"has {item!r}, which is not {what}")
        return tuple(items)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.typed(key, str, choices[0])
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
        return value

    def url(self, key: str, schemes: tuple[str, ...]) -> str:
        value = self.typed(key, str, "")
        problem = remote_url_problem(value, schemes) if value else None
        if problem:
            self.fail(key, f"is not a usable URL: {value!r} {problem}",
                      hint="use http(s)://host/prefix, oci://host/repository or grpc(s)://host:port[/instance]"
                      if "http" in schemes else "use grpc://host:port, grpcs://host:port or grpc://host:port/INSTANCE")
        return value


def _a(kind: str) -> str:
    """A TOML value's kind for a message: "an integer", "a string", "a list"."""
    kind = {"int": "integer", "str": "string", "bool": "boolean", "dict": "table", "list": "list"}.get(kind, kind)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def remote_url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why `url` cannot name a remote cache or executor (a scheme of `schemes`, a host, a valid port),
    or None: checked when hermetic.toml is read, so a bad URL is an error at its line."""
    import urllib.parse

    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains whitespace or a control character"
    try:
        parsed = urllib.parse.urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        return f"cannot be parsed: {exc}"
    if parsed.scheme not in schemes:
        return f"has scheme {parsed.scheme or '(none)'!r}; use {', '.join(s + '://' for s in schemes)}"
    if not parsed.hostname:
        return "names no host"
    if parsed.scheme == "oci":
        from .registry import RegistryRef

        try:
            RegistryRef.parse(url)
        except ValueError as exc:
            return f"is not a registry repository: {exc}"
    return None


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


def read_regular_file(path: str, limit: int, shown: str) -> bytes:
    """The bytes of `path`, opened without following a link at its last component: a regular file of
    at most `limit` bytes, else OSError (a FIFO, a device such as /dev/zero, a huge file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{shown} is not a regular file")
        if st.st_size > limit:
            raise OSError(f"{shown} has {st.st_size:,} bytes, more than hb reads from such a file ({limit:,})")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{shown} grew past {limit:,} bytes while it was read")
    return data


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
