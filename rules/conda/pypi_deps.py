"""The dependencies of locked wheels, as conda-lock writes them into a `manager: pip` entry
(`dependencies: {name: version spec}`).

uv's pylock.toml output does not carry the dependency graph, so hb reads each chosen wheel's core
metadata (PEP 658: `<wheel url>.metadata`, the wheel's own METADATA file, served by PyPI beside the
wheel; a wheel without it is downloaded once and checked against its locked sha256) and evaluates
its `Requires-Dist` for the platform (the locked python, the platform's sys_platform and machine) and
for the extras that are asked for (the pip: lines' own, and those the other wheels ask for), as uv did
while resolving. A dependency is listed only if the lock holds it for that platform (a wheel, or a
conda package that provides it), so hostile metadata cannot add names to the lock file; it has to
name the wheel's own name and version, else the lock fails. Entries are cached by the wheel's
sha256 (a wheel's metadata never changes), so a re-lock asks PyPI nothing new.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import tempfile
import time
import urllib.error
import urllib.parse
from dataclasses import dataclass

from hermetic_build.api import AnalysisError

MAX_METADATA_BYTES = 16 << 20
MAX_ANSWER_BYTES = 6 * MAX_METADATA_BYTES + 4096  # the sandboxed reader's JSON answer
FETCH_THREADS = 16
_TIMEOUT_S = 60
_PLATFORM_MARKERS = {  # sys_platform, platform_system, platform_machine, os_name
    "linux-64": ("linux", "Linux", "x86_64", "posix"),
    "linux-aarch64": ("linux", "Linux", "aarch64", "posix"),
    "osx-64": ("darwin", "Darwin", "x86_64", "posix"),
    "osx-arm64": ("darwin", "Darwin", "arm64", "posix"),
}


@dataclass(frozen=True)
class WheelMetadata:
    """What hb reads from a wheel's METADATA: its name and version, and its Requires-Dist lines."""

    name: str
    version: str
    requires_dist: tuple[str, ...]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_environment(platform: str, python_version: str) -> dict[str, str]:
    """PEP 508 marker variables for a conda platform and the locked CPython version."""
    if platform not in _PLATFORM_MARKERS:
        raise AnalysisError(f"no PEP 508 marker environment is known for {platform}")
    sys_platform, system, machine, os_name = _PLATFORM_MARKERS[platform]
    major_minor = ".".join(python_version.split(".")[:2])
    return {"sys_platform": sys_platform, "platform_system": system, "platform_machine": machine,
            "os_name": os_name, "python_version": major_minor, "python_full_version": python_version,
            "implementation_name": "cpython", "implementation_version": python_version,
            "platform_python_implementation": "CPython", "platform_release": "", "platform_version": ""}


def parse_metadata(text: str, where: str) -> WheelMetadata:
    """Name, version and Requires-Dist of a core metadata file (RFC 822 headers); AnalysisError naming
    `where` (the wheel) if one of them is missing or a Requires-Dist line is no PEP 508 requirement
    (left out, the lock would miss the dependency it names)."""
    import email.parser  # here: hb build reads lock files through normalise() and never parses metadata

    headers = email.parser.HeaderParser().parsestr(text)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        raise AnalysisError(f"{where}: its metadata has no Name or no Version")
    requires = tuple(str(v).strip() for v in headers.get_all("Requires-Dist") or ())
    for line in requires:
        _requirement(line, where)
    return WheelMetadata(normalise(str(name).strip()), str(version).strip(), requires)


def _requirement(line: str, where: str):
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(line)
    except InvalidRequirement as exc:
        raise AnalysisError(f"{where}: its METADATA has a Requires-Dist line that is not a PEP 508 requirement: "
                            f"{line!r} ({' '.join(str(exc).split())})",
                            hint="the wheel's metadata is broken: lock another version of it") from None


def _matches(marker, env: dict[str, str], extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({**env, "extra": extra}) for extra in ({""} | extras))


def platform_dependencies(metadata: dict[str, WheelMetadata], root_extras: dict[str, set[str]],
                          env: dict[str, str], present: set[str]) -> dict[str, dict[str, str]]:
    """name -> {dependency name -> version spec} for the wheels of one platform.

    `metadata`: each locked wheel's metadata by normalised name; `root_extras`: the extras the pip:
    lines ask for; `present`: the names the lock holds for the platform (wheels and conda-provided
    PyPI names). Extras other wheels ask for are followed until nothing changes."""
    parsed = {name: [_requirement(line, f"{name} {meta.version}") for line in meta.requires_dist]
              for name, meta in metadata.items()}
    extras = {name: set(root_extras.get(name, ())) for name in metadata}
    changed = True
    while changed:  # extras asked for by other wheels (e.g. `httpx[http2]`) switch on more requirements
        changed = False
        for name, reqs in parsed.items():
            for req in reqs:
                dep = normalise(req.name)
                if req.extras and dep in extras and _matches(req.marker, env, extras[name]):
                    wanted = {normalise(e) for e in req.extras}
                    if not wanted <= extras[dep]:
                        extras[dep] |= wanted
                        changed = True
    out: dict[str, dict[str, str]] = {}
    for name, reqs in sorted(parsed.items()):
        specs: dict[str, list[str]] = {}
        for req in reqs:
            dep = normalise(req.name)
            if dep == name or dep not in present or not _matches(req.marker, env, extras[name]):
                continue
            specs.setdefault(dep, [])
            if str(req.specifier):
                specs[dep].append(str(req.specifier))
        out[name] = {dep: _combined(parts) for dep, parts in sorted(specs.items())}
    return out


def _combined(parts: list[str]) -> str:
    """One spec from several Requires-Dist lines for the same name (conda-lock writes `*` for none)."""
    from packaging.specifiers import SpecifierSet

    joined = SpecifierSet(",".join(parts)) if parts else SpecifierSet()
    return ",".join(sorted(str(s) for s in joined)) or "*"


class MetadataCache:
    """Core metadata of wheels by their sha256, on disk under `directory` (state, not a build input)."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory

    def _path(self, sha256: str) -> pathlib.Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise AnalysisError(f"not a sha256: {sha256!r}")
        return self.directory / sha256[:2] / f"{sha256}.metadata"

    def get(self, sha256: str) -> str | None:
        try:
            return self._path(sha256).read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def put(self, sha256: str, text: str) -> None:
        path = self._path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)


def _get(url: str, limit: int) -> bytes | None:
    """The body of `url` (https/http/file), or None on 404; at most `limit` bytes, all of it within
    _TIMEOUT_S (plus one read's timeout): an index that trickles a byte now and then gives up instead of
    holding `hb lock` (a per-read timeout alone is reset by every byte). Over http(s) through the
    fetch's connections (redirects to http and https only, not to ftp: or file:)."""
    from urllib.request import url2pathname

    from . import connections
    from .fetch import _open_regular

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        try:
            with _open_regular(url2pathname(parsed.path), url) as f:  # a regular file: a FIFO never ends
                body = f.read(limit + 1)
        except FileNotFoundError:  # a file:// index without PEP 658 files
            return None
    else:
        try:
            source = connections.get(url, _TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        chunks, size, started = [], 0, time.monotonic()
        with source:
            read = getattr(source, "read1", source.read)
            while chunk := read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
                if time.monotonic() - started > _TIMEOUT_S:
                    raise AnalysisError(f"{url}: {size:,} bytes in over {_TIMEOUT_S} s; the index is too slow or "
                                        "never ends its answer")
        body = b"".join(chunks)
    if len(body) > limit:
        raise AnalysisError(f"{url} is larger than {limit} bytes")
    return body


# run in a sandboxed Python (no network, the wheel and the Python installation read-only): a
# wheel is outside bytes, and reading its METADATA means parsing its zip directory and inflating
_READ_METADATA = r"""
import json, sys, zipfile
path, limit = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from zipdir import MAX_WHEEL_ENTRIES, zip_directory_problem
def answer(**reply):
    sys.stdout.write(json.dumps(reply))
    sys.exit(0)
try:
    with open(path, "rb") as f:
        problem = zip_directory_problem(f, MAX_WHEEL_ENTRIES)
    if problem:
        answer(error=f"is not a readable wheel: {problem}")
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            answer(error=f"has {len(names)} .dist-info/METADATA files")
        with zf.open(names[0]) as member:
            data = member.read(limit + 1)
except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
    answer(error=f"is not a readable wheel ({type(exc).__name__}: {exc})")
if len(data) > limit:
    answer(error=f"has a METADATA larger than {limit} bytes")
answer(metadata=data.decode("utf-8", "replace"))
"""


def _metadata_from_wheel(url: str, sha256: str, where: str) -> str:
    """METADATA of a wheel whose index serves no PEP 658 file: the wheel itself, checked by sha256,
    then read in a sandboxed Python (_READ_METADATA), not in hb's process."""
    from . import fetch
    from .fetch import MIN_BYTES_PER_SECOND, _download, _Mismatch, _TooLarge

    # the build's fetch of the same wheel (fetch._download): at most MAX_DOWNLOAD_BYTES, given up when
    # slower than MIN_BYTES_PER_SECOND; an index answering with an endless body wrote ~400 MB/s into
    # the temporary directory until the disk was full, and a trickle held `hb lock` for ever
    with tempfile.NamedTemporaryFile(prefix="hb-wheel-", suffix=".whl") as f:
        try:
            _download(url, f.name, sha256, "sha256", fetch.MAX_DOWNLOAD_BYTES)
        except _Mismatch:
            raise AnalysisError(f"{where}: {url} does not have the sha256 uv locked ({sha256})") from None
        except _TooLarge as exc:
            raise AnalysisError(f"{where}: {url} is larger than the most hb downloads for a wheel ({exc}); "
                                "nothing was kept", hint="check the index: it serves this wheel without end") from None
        except TimeoutError as exc:
            raise AnalysisError(f"{where}: {url} came slower than {MIN_BYTES_PER_SECOND >> 10} KiB/s ({exc})"
                                ) from None
        return read_wheel_metadata(f.name, f"{where}: {url}")


def read_wheel_metadata(path: str, what: str) -> str:
    """The .dist-info/METADATA text of the wheel at `path`, read in a sandboxed Python."""
    from hermetic_build.api import ActionExecution, loads_bounded, run_bounded

    from .stage import ZIPDIR, python_paths, worker_python

    path = os.path.realpath(path)
    _, exposed = python_paths((str(ZIPDIR),))
    argv = [worker_python(), "-I", "-c", _READ_METADATA, path, str(MAX_METADATA_BYTES), str(ZIPDIR.parent)]
    # the reader parses a hostile zip: what it answers is read within bounds (sandbox.run_bounded), never
    # more than the JSON of a METADATA of MAX_METADATA_BYTES can take (json escapes a character to at
    # most 6 bytes); a subverted reader writing without end took 3.7 GiB of hb's memory in 3 s before
    done = run_bounded(ActionExecution.helper_command(argv, read_only=(*exposed, path)), timeout=_TIMEOUT_S,
                       stdout_limit=MAX_ANSWER_BYTES)
    if done.overrun:
        raise AnalysisError(f"{what}: the sandboxed reader of its METADATA was ended: {done.overrun}")
    try:
        reply = loads_bounded(done.stdout, f"the METADATA reader's answer for {what}") if done.returncode == 0 \
            else None
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("metadata"), str):
        return reply["metadata"]
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        raise AnalysisError(f"{what} {reply['error']}")
    tail = done.stderr.decode("utf-8", "replace").strip()[-500:]
    raise AnalysisError(f"{what}: reading its METADATA failed (exit status {done.returncode})"
                        f"{': ' + tail if tail else ''}")


def fetch_metadata(wheels, cache: MetadataCache, where: str = "") -> dict[str, WheelMetadata]:
    """sha256 -> WheelMetadata for `wheels` (objects with name, version, url, sha256), fetched in
    parallel where the cache lacks them; each must name its wheel's own name and version."""
    unique = {w.sha256: w for w in wheels}
    texts = {sha: cache.get(sha) for sha in unique}
    missing = [w for sha, w in sorted(unique.items()) if texts[sha] is None]

    def fetch(wheel) -> str:
        label = f"{where}{wheel.name} {wheel.version}"
        try:
            body = _get(wheel.url + ".metadata", MAX_METADATA_BYTES)
            if body is None:
                return _metadata_from_wheel(wheel.url, wheel.sha256, label)
            return body.decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as exc:
            raise AnalysisError(f"{label}: cannot read its metadata from {wheel.url}: {exc}",
                                hint="PyPI must be reachable for `hb lock` of a pip: section") from None

    if missing:
        with concurrent.futures.ThreadPoolExecutor(min(FETCH_THREADS, len(missing))) as pool:
            for wheel, text in zip(missing, pool.map(fetch, missing)):
                texts[wheel.sha256] = text
    out = {}
    for sha, wheel in unique.items():
        meta = parse_metadata(texts[sha], f"{where}{wheel.name} {wheel.version} ({wheel.url})")
        if meta.name != normalise(wheel.name) or _version(meta.version) != _version(wheel.version):
            raise AnalysisError(f"{where}the metadata of {wheel.url} names {meta.name} {meta.version}, not "
                                f"{wheel.name} {wheel.version}")
        if any(w.sha256 == sha for w in missing):
            cache.put(sha, texts[sha])
        out[sha] = meta
    return out


def _version(text: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(text))
    except InvalidVersion:
        return text
