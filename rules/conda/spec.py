"""environment.yml, through conda-lock's own parser, and the content hash conda-lock writes."""

from __future__ import annotations

import pathlib
import re
import tempfile
from collections import Counter
from dataclasses import dataclass

from blake3 import blake3

from hermetic_build.api import AnalysisError, Location, public_url

from .yamlload import safe_loader

# conda-lock's parser maps PyPI names to conda names for the conda `pip` it adds to an environment
# with a pip section; hb ships its own small mapping (offline), the same one pypi.py uses the other way.
PYPI_MAPPING = pathlib.Path(__file__).resolve().with_name("pypi_mapping.json")
_PIP_REFUSED = re.compile(r"^\s*(-|\.|/|[A-Za-z][A-Za-z0-9+.-]*://)|@|\s--|^[^;]*/")  # last: a relative path


# pip's own index options as a line of a pip: section (`conda env create` passes them to pip)
_INDEX_OPTION = re.compile(r"^(--index-url|--extra-index-url|-i|--find-links|-f)(?:=|\s+)(\S+)$")
# options that ask for wheels, which is all hb takes: without effect here (pip applies them to the whole file)
_WHEEL_ONLY_OPTIONS = re.compile(r"(^|\s)(--only-binary(?:=|\s+)\S+|--prefer-binary)(?=\s|$)")
# an editable install of local source (`-e .`, the project's own checkout): not locked, as conda-lock skips it
EDITABLE = re.compile(r"^(-e|--editable)(?:=|\s*)(\S.*)$")
# a cheap look at the bytes before any YAML is parsed: most environment files name no index,
# requirements file or editable install
_MENTIONS_PIP_OPTIONS = re.compile(rb"index-url|find-links|pip-repositories|allow-pypi-requests"
                                   rb"|^[ \t]*-[ \t]+[\"']?(-i|-f|-r|--requirement|-e|--editable)", re.M)
# a line's platform selector (`... # [linux]`): conda-lock's pattern (conda_lock.src_parser.selectors)
_SELECTOR = re.compile(r"(.+?)\s*(#.*)\[([^\[\]]+)\](?(2)[^\(\)]*)$")


def line_selector(raw_line: str) -> str | None:
    """The platform selector of an environment file's line (`- --extra-index-url URL  # [linux]`), as
    conda-lock reads it, or None. In YAML it is a comment: the line's value does not hold it."""
    line = raw_line.rstrip("\r\n")
    if line.lstrip().startswith("#"):
        return None
    match = _SELECTOR.match(line)
    return match.group(3) if match else None


# the selectors conda-lock evaluates (conda_lock.src_parser.selectors: each platform's set); any
# other bracket at the end of a line reads as a selector that keeps the line on no platform
KNOWN_SELECTORS = frozenset({"linux", "linux64", "aarch64", "ppc64le", "unix", "osx", "osx64", "arm64", "win",
                             "win64"})


def unknown_selector(selector: str, line: str, at: Location) -> AnalysisError:
    """The error for a pip: line hb rewrites or reads itself (an index line, `-r FILE`) that ends in a
    bracket conda-lock would take for a selector keeping it on no platform (`# mirror [internal]`)."""
    return AnalysisError(f"`# [{selector}]` at the end of this line reads as a platform selector that conda-lock "
                         f"keeps on no platform: {line!r} would apply nowhere", location=at,
                         hint=f"selectors: {', '.join(sorted(KNOWN_SELECTORS))}; a comment that does not end in "
                              "[brackets] is not one")


def selector_applies(selector: str | None, platform: str) -> bool:
    """Whether a line with `selector` (None: none) is kept for `platform`, as conda-lock decides."""
    if selector is None:
        return True
    from conda_lock.src_parser.selectors import filter_platform_selectors

    import logging

    logging.getLogger("conda_lock").setLevel(logging.ERROR)  # it logs every filtered selector line
    try:
        return bool(list(filter_platform_selectors(f"x  # [{selector}]", platform)))
    except KeyError:  # a platform conda-lock has no selectors for: only lines without one apply
        return False


@dataclass(frozen=True)
class PipIndexes:
    """Where an environment's pip: section is resolved from, as its files say: conda-lock's
    `pip-repositories:` (extra indexes; with `allow-pypi-requests: false`, instead of PyPI) and
    pip's own `--index-url` / `-i` / `--extra-index-url` / `--find-links` lines in a pip: section."""

    index_url: str = ""  # instead of PyPI; "" keeps PyPI
    extra_index_urls: tuple[str, ...] = ()
    index_url_at: Location | None = None  # where index_url was written
    find_links: tuple[str, ...] = ()  # pages of links to wheels (`--find-links`, e.g. PyG's per-CUDA wheels)
    # (option, URL, selector): --extra-index-url / --find-links lines with a platform selector
    # (`# [linux]`), which apply only where conda-lock keeps such a line (for_platform)
    selected: tuple[tuple[str, str, str], ...] = ()

    def for_platform(self, platform: str) -> PipIndexes:
        """What applies to `platform`: the lines without a selector and those whose selector keeps them."""
        kept = [(option, url) for option, url, selector in self.selected if selector_applies(selector, platform)]
        return PipIndexes(self.index_url,
                          tuple(u for u in dict.fromkeys([*self.extra_index_urls,
                                                          *(u for o, u in kept if o == "--extra-index-url")])
                                if u != self.index_url),
                          self.index_url_at,
                          tuple(dict.fromkeys([*self.find_links, *(u for o, u in kept if o == "--find-links")])))


def decode_text(data: bytes, shown: str, what: str = "") -> str:
    """An environment or requirements file's text as conda and pip read it: UTF-8 (a byte-order mark
    dropped: Notepad writes one), or UTF-16 or UTF-32 with a byte-order mark (what `conda env export >`
    writes in Windows PowerShell 5.1). Anything else is an error at the file, never a traceback."""
    import codecs

    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            break
    else:
        encoding = "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1 if encoding == "utf-8" else None
        raise AnalysisError(f"{what or shown} is not {encoding.removesuffix('-sig').upper()} text: {exc.reason} at "
                            f"byte {exc.start}", location=Location(shown, line),
                            hint="save it as UTF-8 (conda and pip read UTF-8, or UTF-16 with a byte-order "
                                 "mark)") from None


def index_url_problem(url) -> str | None:
    """Why `url` cannot be a pip index hb resolves from and records in a lock, or None: an
    http(s) URL without credentials (they would be committed and recorded in the lock; uv and
    hb's fetches take them from your netrc)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        return f"pip index {url!r} is not an http(s) URL"
    if public_url(url) != url:
        return (f"pip index {public_url(url)!r} is written with credentials: put them in your netrc "
                "(`machine HOST login USER password SECRET`), not in the BUILD or environment file")
    return None


def environment_pip_indexes(files, requirement_files: dict | None = None) -> PipIndexes:
    """The pip indexes environment files name ((text or bytes, shown path), ... in merge order),
    with those of the requirements files their pip: sections name (`-r FILE`; requirement_files,
    requirements_file.read_all). Errors name file and line. A file that is not valid YAML names none
    here: reading it as an environment (read_environment) reports why, at its line."""
    import yaml

    from . import requirements_file

    index_url, index_at, extras, find_links, selected = "", None, [], [], []

    def take_index(url: str, at: Location) -> None:
        nonlocal index_url, index_at
        if index_url and url != index_url:
            raise AnalysisError(f"the pip index is given twice: {index_url!r} at {index_at} and {url!r} here",
                                location=at, hint="keep one --index-url; add the others as --extra-index-url")
        index_url, index_at = url, index_at or at

    for data, shown in files:
        raw = data.encode() if isinstance(data, str) else data
        if not _MENTIONS_PIP_OPTIONS.search(raw):
            continue
        node = _compose(raw)
        if not isinstance(node, yaml.MappingNode):
            continue
        repositories, allow_pypi, allow_at = [], True, None
        for key, value in node.value:
            if key.value == "pip-repositories":  # conda-lock's key
                _require_strings(value, "pip-repositories", shown, example="https://download.pytorch.org/whl/cu121")
                repositories += [(item.value.strip(), _at(item, shown)) for item in value.value]
            elif key.value == "allow-pypi-requests":  # conda-lock's key
                if not (isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:bool"):
                    raise AnalysisError(f"'allow-pypi-requests' must be true or false, got {_shape(value)}",
                                        location=_at(value, shown))
                allow_pypi, allow_at = value.value.lower() in ("true", "yes", "on"), _at(value, shown)
        raw_lines = raw.decode("utf-8", errors="replace").splitlines()
        for line in _pip_line_nodes(node):
            options = [(*option, _at(line, shown))] if (option := index_option(line.value)) else []
            included = requirements_file.REQUIREMENT_FILE.match(line.value.strip())
            if included and requirement_files is not None:
                rel = requirements_file.reference_path(included.group(2), shown, _at(line, shown))
                options = requirements_file.flatten(rel, requirement_files)[1]
            # a selector on the line (`-r FILE  # [linux]`: on each index option of FILE too)
            selector = line_selector(raw_lines[line.start_mark.line]) if line.start_mark.line < len(raw_lines) else None
            for name, url, at in options:
                _check_index_url(url, at)
                if selector is not None and selector not in KNOWN_SELECTORS:
                    raise unknown_selector(selector, line.value.strip(), _at(line, shown))
                if selector is not None and name == "--index-url":
                    raise AnalysisError(f"the main pip index {url!r} is given for some platforms only "
                                        f"(`# [{selector}]`): hb resolves every platform from one main index",
                                        location=at, hint="write it as --extra-index-url with the selector, or "
                                                          "without the selector")
                if selector is not None:
                    selected.append((name, url, selector))
                elif name == "--extra-index-url":
                    extras.append(url)
                elif name == "--find-links":
                    find_links.append(url)
                else:
                    take_index(url, at)
        for url, at in repositories:
            _check_index_url(url, at)
        if not allow_pypi:
            if not repositories and not index_url:
                raise AnalysisError("'allow-pypi-requests: false' leaves no index to resolve the pip: section from",
                                    location=allow_at, hint="list the indexes under 'pip-repositories:'")
            if repositories and not index_url:
                take_index(repositories[0][0], repositories[0][1])
                repositories = repositories[1:]
        extras += [url for url, _ in repositories]
    return PipIndexes(index_url, tuple(u for u in dict.fromkeys(extras) if u != index_url), index_at,
                      tuple(dict.fromkeys(find_links)), tuple(dict.fromkeys(selected)))


def index_option(line: str) -> tuple[str, str] | None:
    """(option, URL) if a pip: line or a requirements file line is an index option, else None."""
    match = _INDEX_OPTION.match(line.strip())
    if match is None:
        return None
    option = {"-i": "--index-url", "-f": "--find-links"}.get(match.group(1), match.group(1))
    return option, match.group(2)


def _compose(raw: bytes):
    """An environment file's YAML node tree; None for a file that is not valid YAML (read_environment
    reports that at its line)."""
    import yaml

    try:
        return yaml.compose(raw.decode("utf-8", errors="replace"), Loader=safe_loader())
    except (yaml.YAMLError, RecursionError):
        return None


def _pip_line_nodes(raw) -> list:
    """The string nodes of the pip: sections of an environment file's `dependencies` (its bytes, or
    the node tree _compose made of them); [] for a file that is not valid YAML."""
    import yaml

    node = _compose(raw) if isinstance(raw, bytes) else raw
    out = []
    dependencies = [v for k, v in node.value if k.value == "dependencies"] if isinstance(node, yaml.MappingNode) else []
    for value in dependencies:
        for item in value.value if isinstance(value, yaml.SequenceNode) else ():
            for key, lines in item.value if isinstance(item, yaml.MappingNode) else ():
                for line in lines.value if key.value == "pip" and isinstance(lines, yaml.SequenceNode) else ():
                    if isinstance(line, yaml.ScalarNode) and line.tag == "tag:yaml.org,2002:str":
                        out.append(line)
    return out


def requirement_references(files) -> list[tuple[str, Location]]:
    """(workspace path, Location of the line) of each `-r FILE` line of the environment files' pip:
    sections ((text, shown path), ...)."""
    from . import requirements_file

    out = []
    for data, shown in files:
        raw = data.encode() if isinstance(data, str) else data
        if not requirements_file.MENTIONS_REQUIREMENT_FILES.search(raw):
            continue
        for line in _pip_line_nodes(raw):
            included = requirements_file.REQUIREMENT_FILE.match(line.value.strip())
            if included:
                at = _at(line, shown)
                out.append((requirements_file.reference_path(included.group(2), shown, at), at))
    return out


def requirement_files(files, read) -> dict:
    """Every requirements file the environment files ((text, shown path), ...) name with `-r`, and
    those they name: workspace path -> requirements_file.RequirementsFile. read(workspace path) ->
    its text, or None where it does not exist."""
    from . import requirements_file

    references = requirement_references(files)
    return requirements_file.read_all(references, read) if references else {}


def _check_index_url(url: str, at: Location) -> None:
    why = index_url_problem(url)
    if why:
        raise AnalysisError(why, location=at)


@dataclass(frozen=True)
class PipRequirement:
    """One line of an environment file's `pip:` section, as written, with where it was written."""

    text: str  # without --hash options
    name: str  # PEP 503-normalised
    path: str
    line: int
    hashes: tuple[str, ...] = ()  # sha256 hex of the files a requirements file's --hash options allow


@dataclass(frozen=True)
class EnvironmentSpec:
    path: pathlib.Path
    lock_spec: object  # conda_lock.models.lock_spec.LockSpecification
    platforms: tuple[str, ...]
    pip: tuple[PipRequirement, ...] = ()  # every pip: line of every file, before platform selectors
    conda_pip_declared: bool = True  # False: the conda `pip` in lock_spec is conda-lock's addition
    # (platform, the user's own conda `pip` spec): conda-lock's merge lets the bare `pip` it adds for
    # a pip: section replace it
    user_pip: tuple = ()
    pip_indexes: PipIndexes = PipIndexes()  # what the files say (environment_pip_indexes)
    requirement_files: tuple[str, ...] = ()  # workspace paths of the requirements files pip: sections name
    # (where, what) hb lock warns about: what the files say that the lock leaves out (`-e PATH`, variables:)
    warnings: tuple[tuple[Location, str], ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.url for c in self.lock_spec.channels)

    def match_specs(self, platform: str, channel_urls: dict[str, str] | None = None) -> list[str]:
        """The conda specs of `platform` as MatchSpec strings. A spec that names its channel
        (`pytorch::pytorch`) keeps it: `channel_urls` ({channel as the file lists it: the URL solved
        against}) turns the name into the URL of the listed channel it names."""
        user_pip = dict(self.user_pip)
        specs = []
        for dep in self.lock_spec.dependencies.get(platform, []):
            if dep.manager != "conda" or (dep.name == "pip" and not self.conda_pip_declared):
                continue  # hb installs wheels itself: the conda `pip` conda-lock adds is not needed
            if dep.name == "pip" and platform in user_pip:
                dep = user_pip[platform]  # the user's pin, not the bare `pip` conda-lock adds after it
            specs.append(_spec_text(dep, channel_urls))
        return specs

    def pip_requirements(self, platform: str) -> list[PipRequirement]:
        """The pip: lines that apply to `platform` (conda-lock evaluated selectors and markers). Where
        several lines name one package (`torch ==2.1.0  # [linux]`, `torch ==2.0.1  # [osx]`), only
        those whose version conda-lock kept for the platform."""
        from packaging.requirements import Requirement
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.utils import canonicalize_name

        def specifier(version: str):
            try:
                return SpecifierSet("" if version in ("", "*") else version)
            except InvalidSpecifier:
                return version

        kept: dict[str, list] = {}
        for d in self.lock_spec.dependencies.get(platform, []):
            if d.manager == "pip":
                kept.setdefault(canonicalize_name(d.name), []).append(d.version or "")
        lines_per_name = Counter(r.name for r in self.pip)
        repeated = {name for name, n in lines_per_name.items() if n > 1}
        return [r for r in self.pip if r.name in kept
                and (r.name not in repeated
                     or Requirement(r.text).specifier in [specifier(v) for v in kept[r.name]])]


def _spec_text(dep, channel_urls: dict[str, str] | None) -> str:
    """A conda-lock dependency as a MatchSpec string: name, version (`*` where only a build is
    given: `libblas[build=*openblas]`), build, and `channel::` where the file named one."""
    version, build = getattr(dep, "version", "") or "", getattr(dep, "build", None)
    text = dep.name + (f" {version or '*'}" if version or build else "") + (f" {build}" if build else "")
    channel = getattr(dep, "conda_channel", None)
    if channel:
        text = f"{_channel_url(channel, channel_urls or {})}::{text}"
    return text


def _channel_url(name: str, channel_urls: dict[str, str]) -> str:
    """The URL of the listed channel a `name::` spec names (conda writes a URL channel by its last
    path components: `https://host/x/chan::pkg` is `x/chan::pkg`), or the name as it is."""
    for written, url in channel_urls.items():
        for candidate in (written.rstrip("/"), url.rstrip("/")):
            if candidate == name or candidate.endswith("/" + name):
                return url
    return name


def read_environment(path: pathlib.Path, platforms, channel_overrides=(), shown_path: str | None = None,
                     extra: tuple[tuple[pathlib.Path, str], ...] = (), read_requirement=None) -> EnvironmentSpec:
    """Parse an environment.yml (and `extra` files merged on top, as `conda-lock -f a.yml -f b.yml`
    does; (path, shown path) each); refuse what hb cannot lock, naming file and line.
    read_requirement(workspace path) -> text or None: how the requirements files that pip: sections
    name (`-r FILE`) are read (a workspace's resolve_source); without it, relative to the directory of
    `path` as to that of its shown path."""
    pip: list[PipRequirement] = []
    conda_pip = False
    texts = []
    plain = []  # whether conda-lock may read the file itself (UTF-8 without a byte-order mark)
    for file, file_shown in ((path, shown_path or str(path)), *extra):
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise AnalysisError(f"{file_shown} does not exist", location=Location(file_shown)) from None
        texts.append((decode_text(data, file_shown), file_shown))
        plain.append(texts[-1][0].encode() == data)
    shown = shown_path or str(path)
    requirements = requirement_files(texts, read_requirement or _reader_beside(path, shown))
    warnings: list[tuple[Location, str]] = []
    for text, file_shown in texts:
        file_pip, file_conda_pip = _check_environment_shape(text, file_shown, requirements, warnings)
        pip += file_pip
        conda_pip = conda_pip or file_conda_pip
    indexes = environment_pip_indexes(texts, requirements)
    import logging

    from conda_lock.src_parser import make_lock_spec

    logging.getLogger("conda_lock").setLevel(logging.ERROR)  # it logs every filtered selector line
    with tempfile.TemporaryDirectory(prefix="hb-env-") as scratch:
        # conda-lock's parser takes every pip: line for a requirement: it reads copies without the
        # index lines and with each `-r FILE` line replaced by that file's requirements
        sources = [_for_conda_lock(file, text, file_shown, pathlib.Path(scratch) / f"{n}.yml", requirements,
                                   is_plain)
                   for n, ((file, _), (text, file_shown), is_plain) in enumerate(zip(((path, shown), *extra), texts,
                                                                                     plain))]
        try:
            lock_spec = make_lock_spec(src_files=sources, channel_overrides=list(channel_overrides) or None,
                                       platform_overrides=list(platforms), mapping_url=str(PYPI_MAPPING))
        except Exception as exc:  # conda-lock raises plain exceptions for bad specs
            message = str(exc).replace(str(scratch), "")
            raise AnalysisError(f"cannot read {shown}: {message}", location=_spec_location(message, texts)
                                or Location(shown)) from None
    user_pip = _user_pip_specs(texts, platforms) if conda_pip and pip else ()
    return EnvironmentSpec(path, lock_spec, tuple(platforms), tuple(pip), conda_pip or not pip, user_pip, indexes,
                           tuple(requirements), tuple(warnings))


def _spec_location(message: str, texts) -> Location | None:
    """The line of the conda spec conda-lock's error names (`Failed to turn python='3.10' into a
    MatchSpec`), where one spec of the files is quoted in it."""
    import yaml

    for text, shown in texts:
        try:
            node = yaml.compose(text, Loader=safe_loader())
        except (yaml.YAMLError, RecursionError):
            continue
        for key, value in node.value if isinstance(node, yaml.MappingNode) else ():
            if key.value != "dependencies" or not isinstance(value, yaml.SequenceNode):
                continue
            for item in value.value:
                if isinstance(item, yaml.ScalarNode) and item.value.strip() and item.value.strip() in message:
                    return _at(item, shown)
    return None


def _reader_beside(path: pathlib.Path, shown: str):
    """read_environment's reader of requirements files where no workspace's is given: a workspace
    path is taken relative to the directory of the environment file's shown path."""
    import posixpath

    from .requirements_file import read_text

    def read(rel: str) -> str | None:
        return read_text(path.parent / posixpath.relpath(rel, posixpath.dirname(shown) or "."), rel)
    return read


def _for_conda_lock(path: pathlib.Path, text: str, shown: str, copy: pathlib.Path, requirements: dict,
                    plain: bool = True) -> pathlib.Path:
    """`path` itself where conda-lock's parser can read it as it is, else `copy`, written in UTF-8 with
    each pip: line that is not a plain requirement rewritten: index lines, local source and lines of
    only wheel options blanked, a requirement's wheel options dropped, and each `-r FILE` line replaced
    by that file's requirements (conda-lock then evaluates their markers per platform and hashes them).
    `plain`: the file is UTF-8 without a byte-order mark."""
    import json

    from . import requirements_file

    lines = text.splitlines(keepends=True)
    replaced: dict[int, list[str]] = {}  # first line -> what replaces it; the other lines of the node blanked
    for node in _pip_line_nodes(text.encode()) if b"pip" in text.encode() else ():
        kind, line = pip_line_kind(node.value)
        if kind == "requirement" and line == node.value.strip():
            continue
        first, last = node.start_mark.line, max(node.start_mark.line, node.end_mark.line - (node.end_mark.column == 0))
        indent = " " * max(0, _item_column(lines[first]))
        # the line's platform selector, on each line that replaces it (conda-lock filters by it)
        selector = line_selector(lines[first])
        if selector is not None and selector not in KNOWN_SELECTORS:
            raise unknown_selector(selector, node.value.strip(), _at(node, shown))
        keep = f"  # [{selector}]" if selector is not None else ""
        new = ["\n"]
        if kind == "file":
            rel = requirements_file.reference_path(requirements_file.REQUIREMENT_FILE.match(line).group(2), shown,
                                                   _at(node, shown))
            inline = requirements_file.flatten(rel, requirements)[0]
            new = [f"{indent}- {json.dumps(r.text)}{keep}\n" for r in inline] or ["\n"]
        elif kind == "requirement":
            new = [f"{indent}- {json.dumps(line)}{keep}\n"]
        replaced[first] = new
        for n in range(first + 1, last + 1):
            replaced[n] = ["\n"]
    if not replaced and plain:
        return path
    copy.write_text("".join(line for n, original in enumerate(lines) for line in replaced.get(n, [original])),
                    encoding="utf-8")
    return copy


def _item_column(line: str) -> int:
    """The column of the `-` of a block sequence item's line."""
    return len(line) - len(line.lstrip(" "))


def _user_pip_specs(files, platforms) -> tuple:
    """((platform, the conda `pip` spec the files ((text, shown path), ...) give for it), ...), the last
    file's winning, with the platform selectors applied as conda-lock applies them."""
    import yaml
    from conda_lock.src_parser.conda_common import conda_spec_to_versioned_dep
    from conda_lock.src_parser.selectors import filter_platform_selectors

    found = {}
    for text, _shown in files:
        for platform in platforms:
            doc = yaml.load("\n".join(filter_platform_selectors(text, platform=platform)),
                            Loader=safe_loader()) or {}
            for item in doc.get("dependencies") or ():
                if isinstance(item, str) and _conda_name(item) == "pip":
                    found[platform] = conda_spec_to_versioned_dep(item, "main")
    return tuple(sorted(found.items()))


def _conda_name(spec: str) -> str:
    """The package name a conda spec string starts with ('pip=23.1' -> 'pip')."""
    return re.split(r"[\s=<>!~\[]", spec.strip(), maxsplit=1)[0]


def _check_environment_shape(text: str, shown: str, requirement_files: dict,
                             warnings: list) -> tuple[list[PipRequirement], bool]:
    """Check the shape conda-lock expects before it sees the file, so that a wrong shape is an
    error at `file:line` (a YAML syntax error: `file:line:column`) instead of a Python exception
    from deep inside conda-lock."""
    import yaml  # here: most builds never read YAML (PyYAML's import compiles its regexes)
    try:  # libyaml's composer: it bounds nesting (the pure-Python one recursed into a RecursionError)
        node = yaml.compose(text, Loader=safe_loader())
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AnalysisError(f"invalid YAML: {problem}",
                            location=_yaml_error_location(exc, text, shown)) from None
    except RecursionError:  # PyYAML without libyaml: its composer recurses once per level
        raise AnalysisError("invalid YAML: nested too deeply", location=Location(shown)) from None
    pip: list[PipRequirement] = []
    conda_pip = False
    if node is None or not isinstance(node, yaml.MappingNode):
        raise AnalysisError("an environment file must be a mapping with 'dependencies'",
                            location=_at(node, shown) if node is not None else Location(shown))
    seen: dict[str, Location] = {}
    for key, _ in node.value:  # conda's YAML reader (ruamel) refuses a key given twice; PyYAML keeps the last
        if isinstance(key, yaml.ScalarNode) and key.value in seen:
            raise AnalysisError(f"{key.value!r} is given twice (first at {seen[key.value]}): conda refuses such a "
                                "file, and hb and conda-lock would each read another of them",
                                location=_at(key, shown), hint="merge them into one")
        seen[getattr(key, "value", "")] = _at(key, shown)
    for key, value in node.value:
        if key.value == "variables":
            warnings.append((_at(key, shown), "'variables:' are set by `conda activate`, which an image never "
                                              "runs: hb does not apply them (set them with oci_image(env_vars = "
                                              "{...}) or env_run(env_vars = {...}))"))
        if key.value in ("channels", "platforms"):
            _require_strings(value, key.value, shown, example="conda-forge" if key.value == "channels" else "linux-64")
        elif key.value == "dependencies":
            if not isinstance(value, yaml.SequenceNode):
                raise AnalysisError(f"'dependencies' must be a list of package specs, got {_shape(value)}",
                                    location=_at(value, shown), hint="write one spec per line: '  - numpy >=1.26'")
            for item in value.value:
                if isinstance(item, yaml.MappingNode):
                    pip += _pip_section(item, shown, requirement_files, warnings, text.splitlines())
                    continue
                _require_string(item, "each dependency", shown, example="numpy >=1.26")
                if item.value.strip().startswith("-"):  # `- -e .`, `- --extra-index-url ...` among conda specs
                    raise AnalysisError(
                        f"{item.value.strip()!r} is a pip option, not a conda package spec",
                        location=_at(item, shown),
                        hint="conda specs are package names ('numpy >=1.26'); pip options belong under "
                             "'- pip:', where hb takes index options and requirements files and leaves local "
                             "source (-e .) out of the lock")
                conda_pip = conda_pip or _conda_name(item.value) == "pip"
    if "dependencies" not in [key.value for key, _ in node.value]:
        raise AnalysisError("an environment file must have 'dependencies' (a list of package specs)",
                            location=_at(node, shown),
                            hint="add 'dependencies:' with one spec per line: '  - numpy >=1.26'")
    return pip, conda_pip


def is_local_editable(line: str) -> bool:
    """`-e .`, `--editable=../pkg`: local source (not `-e git+https://...`, a dependency by URL)."""
    match = EDITABLE.match(line.strip())
    return match is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", match.group(2)) is None


def is_local_source(line: str) -> bool:
    """A pip line that names source in the checkout, editable or not (`-e .`, `./pkg`,
    `submodules/simple-knn`): pip builds it from there; no lock pins it."""
    line = line.strip()
    if is_local_editable(line):
        return True
    if line.startswith("-") or "://" in line or "@" in line:
        return False
    target = line.split(";")[0].strip()
    return bool(target) and (target.startswith((".", "/", "~")) or ("/" in target and not re.search(r"\s", target)))


def local_source_warning(line: str) -> str:
    return (f"local source {line.strip()!r} (an editable install or a path) is not locked: install it from your "
            "checkout into the environment, or build it as a wheel or conda package to have it in an image "
            "(conda-lock leaves editable installs out too)")


def pip_line_kind(line: str) -> tuple[str, str]:
    """What a pip: line or requirements file line is: ("index", the line), ("file", the line) for
    `-r FILE`, ("local", the line) for local source, ("ignored", "") for a line of only
    --only-binary / --prefer-binary (hb takes wheels only), else ("requirement", the line without those
    options)."""
    from . import requirements_file

    line = line.strip()
    if index_option(line) is not None:
        return "index", line
    if requirements_file.REQUIREMENT_FILE.match(line):
        return "file", line
    if is_local_source(line):
        return "local", line
    requirement = _WHEEL_ONLY_OPTIONS.sub(" ", line).strip()
    return ("requirement", requirement) if requirement else ("ignored", "")


def _pip_section(item, shown: str, requirement_files: dict, warnings: list,
                 lines: list[str] = ()) -> list[PipRequirement]:
    """`- pip: [requirement, ...]`: PyPI requirements by name and version only (wheels, see README),
    index options (environment_pip_indexes), `-r FILE` (the requirements of requirement_files) and
    local source (`-e .`, a path: the project's own checkout), which no lock pins: left out, as
    conda-lock leaves editable installs out (with a warning; `hb lock` prints one, from `warnings`)."""
    import yaml

    from . import requirements_file

    keys = [k.value for k, _ in item.value]
    if keys != ["pip"]:
        raise AnalysisError(f"a mapping in 'dependencies' must be a 'pip:' section, got {keys}",
                            location=_at(item, shown), hint="write '  - pip:' followed by PyPI requirements")
    value = item.value[0][1]
    if isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null":
        return []  # `- pip:` and nothing under it, which conda-lock skips too
    if not isinstance(value, yaml.SequenceNode):
        raise AnalysisError(f"'pip' must be a list of PyPI requirements, got {_shape(value)}",
                            location=_at(value, shown), hint="write one per line: '      - tokenizers ==0.21.*'")
    out = []
    for node in value.value:
        _require_string(node, "each pip requirement", shown, example="tokenizers ==0.21.*")
        # a selector is read from the line a pip: line starts on (as conda-lock filters lines): one on a
        # later line of a value written over several lines would be ignored by hb, and conda-lock would
        # drop that line alone
        last = node.end_mark.line - (node.end_mark.column == 0)  # as _for_conda_lock blanks them
        for n in range(node.start_mark.line + 1, min(last + 1, len(lines))):
            if line_selector(lines[n]) is not None:
                raise AnalysisError(f"the platform selector `# [{line_selector(lines[n])}]` is on a continuation of "
                                    f"the pip: line {node.value.strip()!r}, which hb and conda-lock read from its "
                                    "first line", location=Location(shown, n + 1),
                                    hint="write the pip: line on one line, with its selector at its end")
        kind, text = pip_line_kind(node.value)
        if kind == "local":
            warnings.append((_at(node, shown), local_source_warning(text)))
        elif kind == "file":
            rel = requirements_file.reference_path(requirements_file.REQUIREMENT_FILE.match(text).group(2), shown,
                                                   _at(node, shown))
            requirements, _, local = requirements_file.flatten(rel, requirement_files)
            out += requirements
            warnings += [(at, local_source_warning(line)) for at, line in local]
        elif kind == "requirement":
            out.append(pip_requirement(text, _at(node, shown)))
    return out


def pip_requirement(text: str, at: Location) -> PipRequirement:
    """A pip: line or requirements file line that is a PyPI requirement, or an error at `at`."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if _PIP_REFUSED.search(text):
        raise AnalysisError(
            f"pip requirement {text!r} is not a PyPI name with a version: hb locks wheels from the index only",
            location=at,
            hint="URLs (git+https://..., name @ https://...) and pip options are refused (they are not "
                 "pinned by a hash or they run a build); publish the package as a wheel or a conda package. "
                 "Taken, one a line: index options (`--index-url URL`, `-i URL`, `--extra-index-url URL`, "
                 "`--find-links URL`), requirements files (`-r FILE`); local source (`-e .`, a path) is left "
                 "out with a warning")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise AnalysisError(f"invalid pip requirement {text!r}: {exc}", location=at) from None
    return PipRequirement(text, canonicalize_name(requirement.name), at.path, at.line)


def _require_strings(node, what: str, shown: str, example: str) -> None:
    import yaml
    if not isinstance(node, yaml.SequenceNode):
        raise AnalysisError(f"'{what}' must be a list of strings, got {_shape(node)}", location=_at(node, shown),
                            hint=f"write one per line: '  - {example}'")
    for item in node.value:
        _require_string(item, f"each entry of '{what}'", shown, example)


def _require_string(node, what: str, shown: str, example: str) -> None:
    import yaml
    if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" and node.value.strip()):
        raise AnalysisError(f"{what} must be a non-empty string such as {example!r}, got {_shape(node)}",
                            location=_at(node, shown))


def _shape(node) -> str:
    import yaml
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
    import yaml
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

    hashes = dict(compute_content_hashes(spec.lock_spec, virtual_package_repo(virtual_packages, spec.platforms)))
    for platform, value in hashes.items():  # --hash pins of requirements files, which conda-lock does not see
        pins = sorted((r.name, sorted(r.hashes)) for r in spec.pip_requirements(platform) if r.hashes)
        if pins:
            hashes[platform] = blake3(repr([value, pins]).encode()).hexdigest()
    return hashes


def input_fingerprints(spec: EnvironmentSpec, virtual_packages: dict[str, list[str]]) -> dict[str, str]:
    """Per-input digests stored in the lock's custom metadata, so a stale lock can say what changed."""
    def h(value) -> str:
        return blake3(repr(value).encode()).hexdigest()[:16]

    out = {"hb.channels": h(spec.channels), "hb.platforms": h(sorted(spec.platforms))}
    for platform in spec.platforms:
        out[f"hb.dependencies.{platform}"] = h(sorted(spec.match_specs(platform)))
        out[f"hb.virtual_packages.{platform}"] = h(sorted(virtual_packages.get(platform, ())))
        pip = sorted(r.text + "".join(f" --hash=sha256:{h}" for h in sorted(r.hashes))
                     for r in spec.pip_requirements(platform))
        if pip:  # only when there is a pip section: locks without one keep their fingerprints
            out[f"hb.pip.{platform}"] = h(pip)
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
        elif key.startswith("hb.pip."):
            reasons.append(f"the pip requirements for {key.split('.', 2)[2]} changed")
        elif key.startswith("hb.virtual_packages."):
            reasons.append(f"the virtual packages for {key.split('.', 2)[2]} changed")
    for key in sorted(recorded):  # a pip section that was removed leaves no current fingerprint
        if key.startswith("hb.pip.") and key not in current and (not platform or key.endswith(f".{platform}")):
            reasons.append(f"the pip requirements for {key.split('.', 2)[2]} changed")
    return reasons or ["its content hash no longer matches the environment spec"]
