"""Reading the lock files teams already commit, fast and leniently, into hb's frozen records:

- conda-lock unified files (`conda-lock.yml`, format version 1, and what older writers left out:
  a missing `optional` or `category`, a hash written as one string), read with yaml's C loader;
- explicit lock files (`@EXPLICIT`, one URL a line with a `#<md5>` or `#sha256:<hex>` fragment,
  conda-lock's `# pip name @ url#sha256=<hex>` lines);
- pixi.lock, through py-rattler's `LockFile`, one environment of it.

Lock files are untrusted: every URL must be http(s) or file, every file name one path component,
every digest hex of the right length. An error names the user's file and line, in a line or two.
An entry that cannot be used is an error of its platform only: it is raised when that platform is
selected (a malformed osx-arm64 entry does not stop a linux-64 build); what leaves the whole file
unreadable (its YAML, its metadata, an entry without a name or platform) is an error at once."""

from __future__ import annotations

import codecs
import pathlib
import re
import reprlib
import tempfile
import urllib.parse
from dataclasses import dataclass, field, replace

from .lockfile import LockedPackage, LockedWheel, decoded_filename
from .yamlload import safe_loader

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX64 = re.compile(r"[0-9a-f]{64}")
SCHEMES = ("https://", "http://", "file://")
CONDA_SUFFIXES = (".conda", ".tar.bz2")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 100, 100
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4


def _shown(value) -> str:
    """repr of a value read from a lock, bounded in length and in work: YAML aliases let a few lines
    stand for a list of 10**9 items, whose repr (even cut to 60 characters afterwards) never ends."""
    return _REPR.repr(value)


class LockReadError(Exception):
    def __init__(self, message: str, line: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


@dataclass(frozen=True)
class LockMetadata:
    content_hash: dict = field(default_factory=dict)
    platforms: tuple[str, ...] = ()
    custom_metadata: dict = field(default_factory=dict)
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockEntry:
    package: LockedPackage | LockedWheel
    categories: frozenset[str]
    line: int | None
    # why the entry cannot be used (an sdist, an unpinned git URL): raised only when its platform
    # and category are selected, so one bad pip entry of another platform does not block this one
    error: LockReadError | None = None


@dataclass(frozen=True)
class AdoptedLock:
    kind: str  # "conda-lock" | "explicit" | "pixi"
    metadata: LockMetadata
    entries: tuple[LockEntry, ...]


def read_lock(path: pathlib.Path, *, environment: str = "default") -> AdoptedLock:
    """Read any supported lock file; LockReadError(message, line) when it cannot be used."""
    data = path.read_bytes()
    text = _decoded(data)
    _no_conflict_markers(text)
    head = text[:4096]
    if re.search(r"^environments:", text, re.MULTILINE) and re.search(r"^packages:", text, re.MULTILINE):
        return _read_pixi_text(path, data, text, environment)
    if (re.search(r"^version: [23][ \t\r]*$", text, re.MULTILINE) and re.search(r"^package:", text, re.MULTILINE)
            and not re.search(r"^  categories:", text, re.MULTILINE)):
        # pixi.lock 2 and 3: conda-lock's version 1 layout (`category:`), pixi's version; conda-lock's
        # own version 2 (`categories:` lists) is conda-lock's
        return _read_pixi_text(path, data, text, environment)
    explicit = "@EXPLICIT" in text and not re.search(r"^package:", head, re.MULTILINE)
    if environment != "default":  # else silently ignored: the one environment would be built instead
        raise LockReadError(f"environment = {environment!r}, but this is {'an explicit' if explicit else 'a conda-lock'} "
                            "lock file, which holds one environment", 1,
                            hint="leave environment out: only a pixi.lock (version 4 or later, or 2 and 3) has several")
    return _read_explicit(text) if explicit else _read_unified(text)


_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _decoded(data: bytes) -> str:
    """The lock's text: UTF-8, after a byte-order mark if it has one (editors on Windows add it), or
    UTF-16 with its byte-order mark (PowerShell 5's `>` writes it: `conda list --explicit > x.lock`,
    conda/conda#11623). Re-encoding changes no line: every error still names the user's line."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    head = data[:4096]
    if len(head) >= 2 and head.count(0) * 3 > len(head):  # every other byte NUL: ASCII text in UTF-16
        raise LockReadError("the file is UTF-16 text without a byte-order mark (every other byte is NUL)", 1,
                            hint="save it as UTF-8 (e.g. `iconv -f UTF-16LE -t UTF-8`), or write the lock again "
                                 "with a tool that writes UTF-8")
    return data.decode("utf-8-sig", errors="replace")


_CONFLICT_MARKER = re.compile(r"^(?:<{7}|={7}|>{7})(?: .*)?$", re.MULTILINE)


def _no_conflict_markers(text: str) -> None:
    """A lock committed in the middle of a merge (`<<<<<<< HEAD` ... `>>>>>>> branch`) holds two
    versions of the lock; each reader would misread the marker (an explicit file as a URL)."""
    match = _CONFLICT_MARKER.search(text)
    if match is not None:
        raise LockReadError(f"merge conflict marker {match.group().strip()[:60]!r}: the file holds two versions "
                            "of the lock", text.count("\n", 0, match.start()) + 1,
                            hint="re-lock (hb lock, conda-lock or pixi lock) and commit the lock it writes; "
                                 "never merge two lock files by hand")


def _read_pixi_text(path: pathlib.Path, data: bytes, text: str, environment: str) -> AdoptedLock:
    """_read_pixi; rattler reads the file itself, as UTF-8 without a byte-order mark: a lock that
    was re-encoded (_decoded) is handed to it as a UTF-8 copy of the same lines."""
    if not data.startswith(_BOMS):
        return _read_pixi(path, text, environment)
    with tempfile.TemporaryDirectory(prefix="hb-lock-") as tmp:
        copy = pathlib.Path(tmp) / path.name
        copy.write_bytes(text.encode("utf-8"))
        return _read_pixi(copy, text, environment)


# ----- conda-lock unified --------------------------------------------------------------------------
def _url_lines(text: str, starts: list[int] | None = None) -> dict[str, list[int]]:
    """Each URL -> the lines of the `package` entries' own `url:` keys that name it, in order: the n-th
    entry with a URL is at its n-th line. A pip entry's `source: {url: ..}` (the same URL, one level
    deeper) is not counted: counted, it made every later entry of that URL take the line before its own.
    starts: if given, gets the line of each entry's `- ` (the line of an entry without a url)."""
    lines: dict[str, list[int]] = {}
    in_package, entry_indent = False, None  # an entry's keys are two columns past the `- ` that starts it
    for number, line in enumerate(text.splitlines(), 1):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if indent == 0 and body.strip() and not body.startswith(("-", "#")):
            in_package = body.startswith("package:")
            continue
        if not in_package:
            continue
        if body.startswith("- "):
            body, indent = body[2:], indent + 2
            entry_indent = indent if entry_indent is None else entry_indent
            if starts is not None and indent == entry_indent:
                starts.append(number)
        if indent == entry_indent and body.startswith("url: "):
            lines.setdefault(body[5:].strip().strip("'\""), []).append(number)
    return lines


def _key_line(text: str, key: str, default: int = 1) -> int:
    """The first line that sets `key` (at any indent), for errors about a value of the metadata."""
    match = re.search(rf"^[ \t]*{re.escape(key)}:", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else default


def _metadata(meta, text: str) -> LockMetadata:
    """The lock's `metadata`, with the types conda-lock's LockMeta gives them (content_hash and
    custom_metadata: mappings of strings, platforms: a list of strings, channels: a list of channel
    mappings with a url, or of URLs); anything else is an error at its line."""
    if not isinstance(meta, dict):
        raise LockReadError(f"'metadata' is a {_kind(meta)}, not a mapping", _key_line(text, "metadata"))

    def mapping(key: str, what: str) -> dict:
        value = meta.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise LockReadError(f"metadata {key} must be {what}, not {_shown(value):.80}", _key_line(text, key))
        return dict(value)

    def strings(key: str, items, what: str) -> tuple[str, ...]:
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise LockReadError(f"metadata {key} must be {what}, not {_shown(meta.get(key)):.80}", _key_line(text, key))
        return tuple(items)

    channels = meta.get("channels") or []
    if isinstance(channels, list):
        channels = [c.get("url") if isinstance(c, dict) else c for c in channels]
    return LockMetadata(mapping("content_hash", "a mapping of platform to hash (e.g. linux-64: <hex>)"),
                        strings("platforms", meta.get("platforms") or [], "a list of platform names"),
                        mapping("custom_metadata", "a mapping of strings to strings"),
                        strings("channels", channels, "a list of channels (each a mapping with a url, or a URL)"))


def _kind(value) -> str:
    return {dict: "mapping", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _categories(item: dict, name: str, line) -> frozenset[str]:
    """`categories: [main, dev]` (conda-lock 2) and an older writer's `category: main`; none = main.
    A string where the list belongs is refused, as conda-lock's model refuses it (it is not a list of
    one category: set("main") would be four one-letter ones, and the package would be left out)."""
    categories, category = item.get("categories"), item.get("category")
    if categories is not None and not (isinstance(categories, list) and all(isinstance(c, str) for c in categories)):
        raise LockReadError(f"{name}: categories must be a list of strings, not {_shown(categories):.60}", line,
                            hint=f"write categories: [{categories}]" if isinstance(categories, str) else None)
    if category is not None and not isinstance(category, str):
        raise LockReadError(f"{name}: category must be a string, not {_shown(category):.60}", line)
    return frozenset([*(categories or ()), *([category] if category else [])] or ["main"])


def _read_unified(text: str, fast: bool = True) -> AdoptedLock:
    import yaml

    loader = safe_loader()
    doc = _fast_unified(text, loader) if fast else None  # conda-lock's own layout, read line by line
    try:
        doc = doc if doc is not None else yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise LockReadError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", _yaml_error_line(exc, text)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("package"), list):
        raise LockReadError("not a conda-lock file (no 'package' list)", 1,
                            hint="hb reads conda-lock.yml, explicit @EXPLICIT locks and pixi.lock")
    version = doc.get("version", 1)
    if version not in (1, 2):  # conda-lock's parser reads both: 2 lists an entry's categories
        raise LockReadError(f"conda-lock format version {_shown(version)} is not supported (hb reads versions 1 and 2)", 1)
    metadata = _metadata(doc.get("metadata") or {}, text)
    starts: list[int] = []
    lines = _url_lines(text, starts)
    if len(starts) != len(doc["package"]):  # not one `- ` line per entry (flow style): no lines from it
        starts = []
    seen_urls: dict[str, int] = {}
    entries = []
    for i, item in enumerate(doc["package"]):
        line = starts[i] if starts else None
        if not isinstance(item, dict):
            raise LockReadError(f"package entry {i + 1} is not a mapping", line)
        url = item.get("url")
        if isinstance(url, str) and url in lines:  # the n-th entry with this URL is at its n-th line
            nth = seen_urls[url] = seen_urls.get(url, -1) + 1
            line = lines[url][min(nth, len(lines[url]) - 1)]
        if _is_virtual(item):
            continue
        entries.append(_unified_entry(i, item, url, line))
    return AdoptedLock("conda-lock", metadata, _no_conflicting_duplicates(entries))


def _yaml_error_line(exc, text: str) -> int | None:
    """The line of a YAML error: its mark's, or, for a character libyaml's reader refuses (a control
    character), the line of its position in the text."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(exc, "position", None)
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else None


def _is_virtual(item: dict) -> bool:
    """A virtual package (`__osx`, `__glibc`) that conda-lock 1.x wrote into the lock, with a file://
    URL of its solver's temporary directory and an empty md5: the system provides it, nothing is
    installed; conda-lock install leaves it out too (filter_virtual_packages_inplace)."""
    name = item.get("name")
    return item.get("manager", "conda") == "conda" and isinstance(name, str) and name.startswith("__")


def _unified_entry(i: int, item: dict, url, line) -> LockEntry:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise LockReadError(f"package entry {i + 1} has no name", line)
    platform = item.get("platform")
    if not isinstance(platform, str):
        raise LockReadError(f"{name} has no platform", line)
    categories = _categories(item, name, line)
    try:
        return _platform_entry(name, platform, categories, item, url, line)
    except LockReadError as exc:  # raised only if its platform is built (select): one bad entry of
        # osx-arm64 does not stop a linux-64 build of the same lock
        placeholder = LockedPackage(name=name, version="", build="", url=url if isinstance(url, str) else "",
                                    sha256="", md5=None, platform=platform)
        return LockEntry(placeholder, categories, line, exc)


def _platform_entry(name: str, platform: str, categories: frozenset[str], item: dict, url, line) -> LockEntry:
    if not isinstance(url, str) or not url:
        raise LockReadError(f"{name} ({platform}) has no url: hb fetches every package from its locked URL", line)
    manager, version, build = item.get("manager", "conda"), item.get("version", ""), item.get("build")
    if not isinstance(version, (str, int, float)) or isinstance(version, bool):
        raise LockReadError(f"{name}: version must be a string, not {_shown(version):.60}", line)
    if manager == "pip":
        return _pip_entry(name, str(version), url, item.get("hash"), platform, categories, line)
    if manager != "conda":
        raise LockReadError(f"{name}: unknown manager {_shown(manager):.40} (conda or pip)", line)
    if build is not None and not isinstance(build, (str, int)):
        raise LockReadError(f"{name}: build must be a string, not {_shown(build):.60}", line)
    md5, sha256 = _hashes(item.get("hash"), name, line)
    _check_conda_url(url, name, line)
    package = LockedPackage(name=name, version=str(version), build=str(build or _build_of(url)), url=url,
                            sha256=sha256, md5=md5, platform=platform)
    _check_file_is_entry(package, line)
    return LockEntry(package, categories, line)


def conda_entry(name: str, version: str, build: str, url: str, md5: str | None, sha256: str | None,
                platform: str) -> LockedPackage:
    """The conda package the lock reader makes of these fields, or the LockReadError it raises: `hb lock`
    checks each solved record with it before writing, so it writes only entries `hb build` reads."""
    item = {"manager": "conda", "version": version, "build": build, "hash": {"md5": md5, "sha256": sha256}}
    entry = _platform_entry(name, platform, frozenset({"main"}), item, url, None)
    if not entry.package.sha256:
        raise LockReadError(f"{name}: no sha256 (md5 only): hb locks packages by sha256", None)
    return entry.package


_SCALAR = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?: (?P<value>.*))?$")
_PLAIN = re.compile(r"^[A-Za-z0-9_.+\-:/@%=~!*<>,]*$")  # plain scalars read as themselves (no YAML syntax)
_ENTRY_KEYS = {"name", "version", "manager", "platform", "url", "category", "optional", "build"}


def _scalar(raw: str):
    """A block scalar as conda-lock's writer emits it: plain, or single/double quoted without escapes."""
    raw = raw.strip()
    if raw in ("", "~", "null", "Null", "NULL"):
        return None  # as YAML reads it (conda-lock writes `sha256: null` for a channel that has none)
    if len(raw) >= 2 and raw[0] == raw[-1] == "'" and "'" not in raw[1:-1]:
        return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"' and '"' not in raw[1:-1] and "\\" not in raw:
        return raw[1:-1]
    if raw in ("true", "false"):
        return raw == "true"
    if _PLAIN.fullmatch(raw) and not raw.startswith(("-", "!", "&", "*", "%", "@")):
        return raw
    raise ValueError(raw)


def _fast_unified(text: str, loader) -> dict | None:
    """The lock as yaml.load would give it, for files laid out as conda-lock writes them (block style,
    two-space indents, one key per line), about ten times faster than the YAML loader; None for
    anything else (flow style, anchors, escapes, comments inside entries), which the loader reads."""
    import yaml

    start = re.search(r"^package:[ \t]*$", text, re.MULTILINE)
    if start is None:
        return None
    head, body = text[:start.start()], text[start.end():]
    after = re.search(r"^[^\s#-]", body, re.MULTILINE)  # a top-level key after `package:` (`version: 1`)
    if after is not None:
        head, body = head + body[after.start():], body[:after.start()]
    try:
        doc = yaml.load(head, Loader=loader) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or "package" in doc:
        return None
    packages, entry, nested = [], None, None
    try:
        for line in body.splitlines():
            if not line.strip():
                continue
            if nested in ("dependencies", "skip") and line.startswith("    "):
                continue  # not needed to stage (dependencies, a pip entry's source): any YAML may be there
            match = _SCALAR.match(line)
            if match is None:
                if entry is not None and nested == "categories" and line.startswith("  - "):
                    entry["categories"].append(_scalar(line[4:]))
                    continue
                return None
            indent, key, value = len(match["indent"]), match["key"], match["value"]
            if match["dash"] is not None:
                if indent != 0:
                    return None
                entry, nested = {}, None
                packages.append(entry)
                indent = 2
            if entry is None:
                return None
            if indent == 2:
                nested = None
                if value is None or value == "":
                    if key in ("hash", "dependencies", "categories"):
                        nested = key
                        entry[key] = [] if key == "categories" else {}
                    elif key not in _ENTRY_KEYS:
                        nested = "skip"  # a mapping hb does not read (e.g. a pip entry's `source`)
                    else:
                        return None
                    continue
                if value == "{}" and key in ("dependencies", "hash"):
                    entry[key] = {}
                    continue
                if value == "[]" and key == "categories":
                    entry[key] = []
                    continue
                entry[key] = _scalar(value)
            elif indent == 4 and nested == "hash":
                entry["hash"][key] = _scalar(value or "")
            else:
                return None
    except ValueError:
        return None
    doc["package"] = packages
    return doc


def _hashes(value, name: str, line) -> tuple[str | None, str]:
    """(md5, sha256) from `hash: {md5: .., sha256: ..}` or an older writer's `hash: "sha256:<hex>"`."""
    md5 = sha256 = None
    if isinstance(value, dict):
        md5, sha256 = value.get("md5"), value.get("sha256")
    elif isinstance(value, str):
        algo, _, hex_ = value.partition(":") if ":" in value else ("", "", value)
        algo = algo or ("md5" if len(hex_) == 32 else "sha256")
        if algo == "md5":
            md5 = hex_
        elif algo == "sha256":
            sha256 = hex_
    if md5 is not None and not (isinstance(md5, str) and HEX32.fullmatch(md5.lower())):
        raise LockReadError(f"{name}: md5 {_shown(md5):.80} is not 32 hex digits", line)
    if sha256 is not None and not (isinstance(sha256, str) and HEX64.fullmatch(sha256.lower())):
        raise LockReadError(f"{name}: sha256 {_shown(sha256):.80} is not 64 hex digits", line)
    return (md5.lower() if md5 else None), (sha256.lower() if sha256 else "")


def _check_url(url: str, name: str, line) -> None:
    """An http(s) or file URL of one file, with no query or fragment: the file is named by the
    path's last component, percent-decoded (decoded_filename), the one name every later step uses."""
    if not url.startswith(SCHEMES):
        raise LockReadError(f"{name}: URL {url!r} is not http(s) or file", line)
    if "?" in url or "#" in url:
        raise LockReadError(f"{name}: URL {url!r} has a query or fragment: hb fetches a package from a plain URL "
                            "whose last path component is its file name", line,
                            hint="lock the package's plain URL (conda-lock and pixi write no query or fragment)")
    filename = decoded_filename(url)
    decoded = urllib.parse.unquote(url)  # what a file:// fetch opens, and what a server is asked for
    if (filename in ("", ".", "..") or "\\" in filename or "/" in filename
            or any(ord(c) < 32 or ord(c) == 127 for c in decoded)):
        raise LockReadError(f"{name}: URL {url!r} does not end in a file name", line)


def _check_conda_url(url: str, name: str, line) -> None:
    """_check_url, and the file must be a conda package: `.conda` or `.tar.bz2`."""
    _check_url(url, name, line)
    if not decoded_filename(url).endswith(CONDA_SUFFIXES):
        raise LockReadError(f"{name}: URL {url!r} is not a conda package (its file name does not end in .conda "
                            "or .tar.bz2)", line)


def _check_file_is_entry(package: LockedPackage, line) -> None:
    """The entry's name, version and build must be those its file name says (name-version-build.conda,
    as every channel names its files): the lock then describes the file it pins, and the stage checks
    that the archive is what its file name says (its info/index.json)."""
    stem = package.filename.removesuffix(".conda").removesuffix(".tar.bz2")
    expected = f"{package.name}-{package.version}-{package.build}"
    if stem != expected:
        raise LockReadError(f"{package.name} {package.version} {package.build}: the lock entry's URL names the file "
                            f"{package.filename}, not {expected}{package.filename[len(stem):]}: the entry does not "
                            "describe the package it pins", line,
                            hint="re-lock (hb lock or conda-lock); a hand-edited entry must keep name, version and "
                                 "URL together")


def _build_of(url: str) -> str:
    stem = decoded_filename(url).removesuffix(".conda").removesuffix(".tar.bz2")
    return stem.rsplit("-", 1)[-1]


def _no_conflicting_duplicates(entries: list[LockEntry]) -> tuple[LockEntry, ...]:
    """One package name per platform and manager: an entry listed again for another category (older
    conda-lock writers did) must pin the same file; a second, different pin is an error at its line
    naming the first one's (silently taking either would stage a package the lock does not mean),
    raised when that platform is selected with either entry's categories."""
    first: dict[tuple[str, str, str], LockEntry] = {}
    kept = []
    for entry in entries:
        p = entry.package
        manager = "pip" if isinstance(p, LockedWheel) else "conda"
        # a PyPI project is one package however the entry spells its name (pip and uv normalise it)
        earlier = first.setdefault((p.platform, manager, _project(p.name) if manager == "pip" else p.name), entry)
        if earlier is not entry and earlier.error is None and entry.error is None and _pin(earlier.package) != _pin(p):
            where = f"line {earlier.line}" if earlier.line is not None else "an earlier entry"
            error = LockReadError(f"{manager} package {p.name} is locked twice for {p.platform}: {where} pins "
                                  f"{earlier.package.url}, this entry pins {p.url}", entry.line,
                                  hint="keep one entry per package and platform (re-lock to be sure)")
            # an error of that platform only, whichever of the two entries' categories is built
            entry = replace(entry, categories=entry.categories | earlier.categories, error=error)
        kept.append(entry)
    return tuple(kept)


def _project(name: str) -> str:
    """A PyPI project name normalised as PEP 503 says (Six, six and SIX are one project)."""
    from .pypi_deps import normalise

    return normalise(name)


def _pin(package) -> tuple:
    return (package.version, getattr(package, "build", ""), package.url, package.sha256, getattr(package, "md5", None))


def _pip_entry(name, version, url, hash_value, platform, categories, line) -> LockEntry:
    """A pip entry; one that is not a sha256-pinned wheel carries its error until it is selected."""
    categories = frozenset(categories or {"main"})
    placeholder = LockedWheel(name=name, version=version, url=url, sha256="", platform=platform)
    try:
        _md5, sha256 = _hashes(hash_value, name, line)
    except LockReadError:
        sha256 = ""  # e.g. a git commit id where a sha256 belongs: reported as "not pinned" below
    try:
        return LockEntry(_wheel(name, version, url, sha256, platform, categories, line), categories, line)
    except LockReadError as exc:
        return LockEntry(placeholder, categories, line, exc)


def _wheel(name: str, version: str, url: str, sha256: str, platform: str, categories, line) -> LockedWheel:
    """A pip entry, which must be a wheel pinned by sha256 (a git URL or an sdist is not)."""
    if not _PROJECT_NAME.fullmatch(name):  # first: every message below shows it
        raise LockReadError(f"pip package name {_shown(name)} is not a Python project name (letters, digits, '.', "
                            "'-', '_', starting and ending with a letter or digit)", line,
                            hint="re-lock (hb lock, conda-lock or pixi); a hand-edited entry must keep a project's "
                                 "own name")
    base, _, fragment = url.partition("#")
    if not sha256 and fragment.startswith("sha256="):
        sha256 = fragment[7:].lower()
    if not base.startswith(("https://", "http://", "file://")):
        raise LockReadError(f"pip package {name} is not a wheel from an index: {url} is a local path or a VCS "
                            "URL (installing it would build it from source)", line,
                            hint=f"lock it as a wheel from an index (hb lock, or conda-lock with a PyPI source); if it "
                                 f"is your project's own source (pixi's `path = \".\"`, editable), build the "
                                 f"environment without it, conda_env(leave_out = [\"{name}\"]), and add your code "
                                 "to the image another way")
    if fragment and not fragment.startswith("sha256="):
        raise LockReadError(f"pip package {name}: URL {url!r} has a fragment other than #sha256=<hex>", line,
                            hint="lock the wheel's plain URL (the sha256 may follow as #sha256=<hex>)")
    if not sha256 or not HEX64.fullmatch(sha256):
        raise LockReadError(f"pip package {name} is not pinned: {url} has no sha256", line,
                            hint="lock it as a wheel from an index (hb lock, or conda-lock with a PyPI source)")
    _check_url(base, name, line)
    if not decoded_filename(base).endswith(".whl"):
        raise LockReadError(f"pip package {name} is a source distribution ({base.rsplit('/', 1)[-1]}): hb installs "
                            "wheels only (a build would run the package's own code)", line,
                            hint="pin a version that has a wheel for this platform")
    _check_wheel_is_entry(name, version, decoded_filename(base), line)
    return LockedWheel(name=name, version=version, url=base, sha256=sha256, platform=platform,
                       category=min(categories or {"main"}))


# a PEP 508 project name; a version as a wheel file name may spell it (PEP 440, no whitespace)
_PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION_TEXT = re.compile(r"[A-Za-z0-9_.!+\-]+")


def _check_wheel_is_entry(name: str, version: str, filename: str, line) -> None:
    """A pip entry must describe the wheel it pins, as a conda entry its archive (_check_file_is_entry):
    its name (a PEP 508 name, checked first by _wheel) the wheel file's project once normalised, its
    version the file's. The
    entry's name and version are what the SBOM, the provenance and `hb attest verify --lock` report,
    and the name reaches the stage (the `headers` directory) and messages: a `requests 2.31.0` entry
    pinning evil-6.6-py3-none-any.whl, or a name with `/` or an escape sequence, was accepted."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    from .archive import valid_wheel_filename

    hint = "re-lock (hb lock, conda-lock or pixi); a hand-edited entry must keep name, version and URL together"
    if not valid_wheel_filename(filename):
        raise LockReadError(f"pip package {name:.100}: {filename!r} is not a wheel file name "
                            "(name-version[-build]-python-abi-platform.whl, ASCII letters, digits, '_', '.', '+', '!')",
                            line, hint=hint)
    try:
        project, file_version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise LockReadError(f"pip package {name:.100}: {filename!r} is not a wheel file name: {exc}", line,
                            hint=hint) from None
    try:
        same_version = bool(_VERSION_TEXT.fullmatch(version)) and Version(version) == file_version
    except InvalidVersion:
        same_version = False
    if canonicalize_name(name) != project or not same_version:
        raise LockReadError(f"pip package {name:.100} {_shown(version)}: the lock entry's URL names the wheel {filename}, "
                            f"of {project} {file_version}: the entry does not describe the package it pins", line,
                            hint=hint)


# ----- explicit --------------------------------------------------------------------------------------
_PIP_LINE = re.compile(r"^#\s*pip\s+(?P<name>[A-Za-z0-9_.\-]+)\s*@\s*(?P<url>\S+)$")


def _read_explicit(text: str) -> AdoptedLock:
    platform, input_hash, entries, explicit = None, None, [], False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if body.startswith("platform:"):
                platform = body[9:].strip()
            elif body.startswith("input_hash:"):
                input_hash = body[11:].strip()
            elif _PIP_LINE.match(line):
                match = _PIP_LINE.match(line)
                entries.append((number, "pip", match["name"], match["url"]))
            elif body.lower().startswith("no url for:"):  # conda's export of a package of no channel
                raise LockReadError(f"{body[11:].strip()[:120] or 'a package'}: the lock has no URL for it (a "
                                    "'# no URL for:' line), so it cannot be fetched; installing the rest would "
                                    "leave it out", number,
                                    hint="build the package into a channel (conda_channel) and export again, or "
                                         "remove it from the environment")
            continue
        if line == "@EXPLICIT":
            explicit = True
            continue
        if not explicit:
            raise LockReadError(f"{line[:60]!r} comes before the @EXPLICIT line", number)
        entries.append((number, "conda", None, line))
    if platform is None:
        raise LockReadError("an explicit lock needs a '# platform: <subdir>' line", 1,
                            hint="conda-lock writes one; add e.g. '# platform: linux-64' at the top")
    out = []
    for number, manager, name, url in entries:
        if manager == "pip":
            version = decoded_filename(url.split("#", 1)[0]).split("-")[1:2]
            out.append(_pip_entry(name, version[0] if version else "", url, None, platform, {"main"}, number))
            continue
        base, _, fragment = url.partition("#")
        fragment = fragment.lower().removeprefix("sha256:")
        md5, sha256 = (fragment, "") if HEX32.fullmatch(fragment) else (None, fragment)
        filename = decoded_filename(base)
        _check_conda_url(base, filename, number)
        if sha256 and not HEX64.fullmatch(sha256):
            raise LockReadError(f"{filename}: the fragment #{fragment} is neither an md5 nor a sha256", number)
        if not md5 and not sha256:
            raise LockReadError(f"{filename} is not pinned (no #<md5> or #sha256:<hex> fragment)", number,
                                hint="export with hashes (`conda list --explicit --md5`, then allow_md5 = True), "
                                     "or lock with conda-lock, whose conda-lock.yml pins sha256")
        stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
        parts = stem.rsplit("-", 2)
        if len(parts) != 3 or stem == filename:
            raise LockReadError(f"{filename} is not a conda package file name (name-version-build.conda)", number)
        out.append(LockEntry(LockedPackage(name=parts[0], version=parts[1], build=parts[2], url=base, sha256=sha256,
                                           md5=md5, platform=platform), frozenset({"main"}), number))
    metadata = LockMetadata({platform: input_hash} if input_hash else {}, (platform,))
    return AdoptedLock("explicit", metadata, _no_conflicting_duplicates(out))


# ----- pixi ----------------------------------------------------------------------------------------
def _read_pixi(path: pathlib.Path, text: str, environment: str) -> AdoptedLock:
    from rattler import LockFile
    from rattler.lock import CondaLockedSourcePackage

    try:
        lock = LockFile.from_path(str(path))
    except Exception as exc:  # rattler's parse errors, which say where: "... at line 12 column 3"
        where = re.search(r"\bat line (\d+)", str(exc))
        raise LockReadError(f"not a pixi lock file rattler can read: {exc}", int(where.group(1)) if where else 1) from None
    environments = dict(lock.environments())
    if environment not in environments:
        raise LockReadError(f"it has no environment {environment!r}", 1,
                            hint=f"set conda_env(environment = ...) to one of {', '.join(sorted(environments))}")
    env = environments[environment]
    listed = (_pixi_listing_lines(text, environment) if re.search(r"^environments:", text, re.MULTILINE)
              else _pixi_entry_lines(text))
    entries, platforms = [], []
    for platform in env.platforms():
        subdir = str(platform)
        platforms.append(subdir)

        def line_of(kind: str, location: str) -> int | None:
            return listed.get((subdir, kind, location)) or listed.get((None, kind, location))

        for record in env.conda_repodata_records_for_platform(platform) or []:
            url, line = str(record.url), line_of("conda", str(record.url))
            _check_conda_url(url, record.name.normalized, line)
            package = LockedPackage(
                name=record.name.normalized, version=str(record.version), build=str(record.build), url=url,
                sha256=record.sha256.hex() if record.sha256 else "", md5=record.md5.hex() if record.md5 else None,
                platform=subdir, size=record.size or None)
            _check_file_is_entry(package, line)
            entries.append(LockEntry(package, frozenset({"main"}), line))
        for package in env.packages(platform) or []:
            # a package pixi builds from source (pixi-build, `- conda: .`): no archive to fetch and pin
            if isinstance(package, CondaLockedSourcePackage):
                location, line = str(package.location), line_of("conda", str(package.location))
                error = LockReadError(
                    f"conda package {package.name} is a source package (built by pixi from {location}): hb "
                    "installs built packages only, each from a URL pinned by sha256", line,
                    hint=f"build it into a channel (a conda_channel target) and lock it from there, "
                         f"or leave it out of this environment: conda_env(leave_out = [\"{package.name}\"])")
                entries.append(LockEntry(LockedPackage(
                    name=str(package.name), version=str(package.version), build="", url=location, sha256="",
                    md5=None, platform=subdir), frozenset({"main"}), line, error))
        for package in env.pypi_packages_for_platform(platform) or []:
            location = str(package.location)
            try:
                sha256 = package.hashes.sha256.hex() if package.hashes.sha256 else ""
            except AttributeError:  # a path or git package: no hashes at all
                sha256 = ""
            entries.append(_pip_entry(package.name, str(package.version), location, {"sha256": sha256} if sha256
                                      else None, subdir, {"main"}, line_of("pypi", location)))
    return AdoptedLock("pixi", LockMetadata({}, tuple(platforms)), _no_conflicting_duplicates(entries))


def _pixi_listing_lines(text: str, environment: str) -> dict[tuple[str | None, str, str], int]:
    """Where `environment` lists each package for each platform: {(platform, "conda" | "pypi",
    location): line}, from pixi's own layout (environments: / <name>: / packages: / <platform>: /
    - conda: <location>). Any other `- conda:` / `- pypi:` line is kept under platform None (its
    first line), the answer where the layout is not pixi's usual one."""
    found: dict[tuple[str | None, str, str], int] = {}
    in_envs = in_env = in_packages = False
    platform = None
    for number, line in enumerate(text.splitlines(), 1):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if not body or body.startswith("#"):
            continue
        if body.startswith("- ") and ": " in body:
            kind, _, location = body[2:].partition(": ")
            if kind in ("conda", "pypi"):
                location = location.strip().strip("'\"")
                if in_packages and platform is not None and indent == 6:
                    found.setdefault((platform, kind, location), number)
                found.setdefault((None, kind, location), number)
            continue
        key = body.split(":", 1)[0].strip()
        if indent == 0:
            in_envs, in_env, in_packages, platform = key == "environments", False, False, None
        elif indent == 2 and in_envs:
            in_env, in_packages, platform = key == environment, False, None
        elif indent == 4 and in_env:
            in_packages, platform = key == "packages", None
        elif indent == 6 and in_packages:
            platform = key
    return found


def _pixi_entry_lines(text: str) -> dict[tuple[str | None, str, str], int]:
    """pixi.lock versions 2 and 3, in conda-lock's layout (one `- platform:` entry per package and
    platform; version 3 calls pip `pypi`): {(platform, "conda" | "pypi", url): the line of its url}."""
    found: dict[tuple[str | None, str, str], int] = {}
    entry: dict[str, str] = {}

    def done() -> None:
        if "url" in entry:
            kind = "pypi" if entry.get("manager") in ("pip", "pypi") else "conda"
            found.setdefault((entry.get("platform"), kind, entry["url"]), int(entry["line"]))
        entry.clear()

    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith(("- ", "  ")) or line.startswith("- "):
            done()  # a new entry, or a top-level key
        body = line[2:]
        if not line.startswith(("- ", "  ")) or body.startswith((" ", "-")):
            continue
        key, _, value = body.partition(":")
        value = value.strip().strip("'\"")
        if key in ("platform", "manager"):
            entry[key] = value
        elif key == "url":
            entry.update(url=value, line=str(number))
    done()
    return found


# ----- selection -------------------------------------------------------------------------------------------
def _left_out(entry: LockEntry, leave_out: frozenset[str]) -> bool:
    """Whether a name of `leave_out` names this entry: a conda package by its name (conda-forge has both
    typing-extensions and typing_extensions), a PyPI project by its PEP 503 name (Six, six, SIX). A bare
    name names both kinds; `conda:NAME` and `pypi:NAME` one (a lock may pin orjson from both)."""
    p = entry.package
    wheel = isinstance(p, LockedWheel)
    for name in leave_out:
        kind, _, bare = name.rpartition(":")
        if kind not in ("", "pypi" if wheel else "conda"):
            continue
        if (_project(bare) == _project(p.name)) if wheel else (bare.lower() == p.name.lower()):
            return True
    return False


def unknown_names(lock: AdoptedLock, platform: str, names) -> list[str]:
    """The names of `names` that name no package of `platform` in the lock (any category)."""
    listed = [e for e in lock.entries if e.package.platform == platform]
    return [name for name in names if not any(_left_out(e, frozenset([name])) for e in listed)]


def select(lock: AdoptedLock, platform: str, categories=("main",),
           leave_out: frozenset[str] = frozenset()) -> tuple[list[LockEntry], list[LockEntry]]:
    """(conda entries, wheel entries) of `platform` in the chosen categories (conda-lock install takes
    `main` only), one per package name: an entry listed once per category is merged. The packages
    `leave_out` names are left out, usable or not (a pixi project's own editable source, `pypi: .`)."""
    wanted = set(categories)
    conda: dict[str, LockEntry] = {}
    wheels: dict[str, LockEntry] = {}
    for entry in lock.entries:
        p = entry.package
        if p.platform != platform or not (entry.categories & wanted):
            continue
        if leave_out and _left_out(entry, leave_out):
            continue
        if entry.error is not None:
            raise entry.error
        if isinstance(p, LockedWheel):  # one project however its name is spelled (Six, six, SIX)
            wheels.setdefault(_project(p.name), entry)
        else:
            conda.setdefault(p.name, entry)
    return [conda[n] for n in sorted(conda)], sorted(wheels.values(), key=lambda e: e.package.name)
