"""pip requirements files that an environment file's pip: section names (`- -r requirements.txt`, as
`conda env create` reads them): found, read and parsed as pip reads them (comments, `\\` line
continuations, a nested `-r` relative to the file that names it), each requirement kept with its
file and line. What a pip: line may be, a requirements file line may be: a PyPI requirement, an index
option or another `-r`; anything else is refused at its line."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from hermetic_build.api import AnalysisError, Location

REQUIREMENT_FILE = re.compile(r"^(-r|--requirement)(?:=|\s+)(\S+)$")
# a cheap look at an environment file's bytes before any YAML is parsed
MENTIONS_REQUIREMENT_FILES = re.compile(rb"""^[ \t]*-[ \t]+["']?(-r|--requirement)[ \t=]""", re.M)
MAX_DEPTH = 8  # files naming files
MAX_BYTES = 4 << 20  # one requirements file
_COMMENT = re.compile(r"(^|\s+)#.*$")  # pip's
_HASH_OPTION = re.compile(r"\s--hash(?:=|\s+)(\S+)")  # pip-compile --generate-hashes writes them
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class RequirementsFile:
    """One requirements file as written: its own lines, not those of the files it names."""

    path: str  # its workspace path
    requirements: tuple  # spec.PipRequirement, in order
    index_options: tuple  # (option, URL, Location): --index-url / --extra-index-url lines
    local: tuple  # (Location, line) of each line naming local source (`-e .`, a path: not locked, spec._pip_section)
    includes: tuple  # (workspace path, Location of its -r line), in order


def read_text(path, shown: str) -> str | None:
    """A requirements file's text; None if it does not exist. A FIFO or device (a checkout can hold
    one) is refused before it is read, so it cannot hang `hb lock`; so is a file over MAX_BYTES."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    # fstat before a file object is made of fd: open() refuses a directory with IsADirectoryError
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AnalysisError(f"requirements file {shown} is not a regular file", location=Location(shown))
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise AnalysisError(f"requirements file {shown} is larger than {MAX_BYTES >> 20} MiB", location=Location(shown))
    from .spec import decode_text

    return decode_text(data, shown, f"requirements file {shown}")


def reference_path(ref: str, naming: str, at: Location) -> str:
    """The workspace path of `-r ref` written in the file whose workspace path is `naming`."""
    if not ref or ref.startswith(("/", "~")) or "://" in ref or "\\" in ref or "\x00" in ref:
        raise AnalysisError(f"requirements file {ref!r} must be a path relative to {naming}", location=at)
    rel = posixpath.normpath(posixpath.join(posixpath.dirname(naming), ref))
    if rel in (".", "..") or rel.startswith("../"):
        raise AnalysisError(f"requirements file {ref!r} is outside the workspace", location=at)
    return rel


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(number of its first line, text) of each line pip reads: continuations joined, comments and
    blank lines dropped."""
    out, parts, start = [], [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not parts:
            start = number
        if line.endswith("\\") and not _COMMENT.match(line):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = _COMMENT.sub("", "".join(parts)).strip()
        parts = []
        if joined:
            out.append((start, joined))
    if parts and (joined := _COMMENT.sub("", "".join(parts)).strip()):
        out.append((start, joined))
    return out


def parse(text: str, path: str) -> RequirementsFile:
    from .spec import index_option, pip_line_kind

    requirements, options, includes, local = [], [], [], []
    for number, line in logical_lines(text):
        at = Location(path, number)
        kind, line = pip_line_kind(line)
        if kind == "file":
            includes.append((reference_path(REQUIREMENT_FILE.match(line).group(2), path, at), at))
        elif kind == "index":
            options.append((*index_option(line), at))
        elif kind == "local":
            local.append((at, line))
        elif kind == "requirement":
            requirements.append(_requirement_with_hashes(line, at))
    return RequirementsFile(path, tuple(requirements), tuple(options), tuple(local), tuple(includes))


def _requirement_with_hashes(line: str, at: Location):
    """A requirement line, its `--hash=sha256:...` options taken out into PipRequirement.hashes: the
    wheel the lock pins for it must be one of them (pypi.resolved_wheels)."""
    import dataclasses

    from .spec import pip_requirement

    hashes = _HASH_OPTION.findall(" " + line)
    requirement = pip_requirement(_HASH_OPTION.sub("", " " + line).strip(), at)
    for value in hashes:
        if not _SHA256.fullmatch(value):
            raise AnalysisError(f"--hash {value!r} is not sha256:<64 hex digits>", location=at,
                                hint="hb pins wheels by sha256 (pip-compile --generate-hashes writes those)")
    return dataclasses.replace(requirement, hashes=tuple(value[7:] for value in hashes))


def read_all(references, read) -> dict[str, RequirementsFile]:
    """Every requirements file `references` ((workspace path, Location of the -r line), ...) name,
    and those they name, by workspace path. read(path) -> its text, or None where it does not exist."""
    found: dict[str, RequirementsFile] = {}

    def visit(path: str, at: Location, chain: tuple[str, ...]) -> None:
        if path in chain:
            raise AnalysisError(f"requirements file {path} names itself through {' -> '.join(chain)}", location=at)
        if len(chain) >= MAX_DEPTH:
            raise AnalysisError(f"requirements files nest more than {MAX_DEPTH} deep at {path}", location=at)
        if path in found:
            return
        text = read(path)
        if text is None:
            raise AnalysisError(f"requirements file {path} does not exist", location=at)
        if len(text) > MAX_BYTES:
            raise AnalysisError(f"requirements file {path} is larger than {MAX_BYTES >> 20} MiB", location=at)
        found[path] = parse(text, path)
        for included, where in found[path].includes:
            visit(included, where, (*chain, path))

    for path, at in references:
        visit(path, at, ())
    return found


def flatten(path: str, files: dict[str, RequirementsFile]) -> tuple[list, list, list]:
    """(requirements, index options, local source lines) of the file at `path` with those of the files
    it names (read_all refused cycles)."""
    file = files[path]
    requirements, options, local = list(file.requirements), list(file.index_options), list(file.local)
    for included, _ in file.includes:
        more, more_options, more_local = flatten(included, files)
        requirements += more
        options += more_options
        local += more_local
    return requirements, options, local
