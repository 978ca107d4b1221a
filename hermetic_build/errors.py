"""One exception family per kind of failure, each with its own exit code.

Messages follow the shape `path:line: what is wrong`, then a hint, then the chain of targets.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

# an error shows outside strings (lock entries, channel records, servers' answers, a command's output):
# control characters are written as \x.. escapes wherever it is shown (redact.printable)
from .redact import printable


@dataclass(frozen=True)
class Location:
    """A place in a BUILD.hermetic or .bzl file (or another file hb reads, e.g. environment.yml)."""

    path: str
    line: int = 0
    column: int = 0  # shown only with a line

    def __str__(self) -> str:
        if not self.line:
            return self.path
        return f"{self.path}:{self.line}:{self.column}" if self.column else f"{self.path}:{self.line}"


class HbError(Exception):
    """Base of every error hb reports to a user."""

    exit_code = 1
    family = "error"

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        hint: str | None = None,
        chain: tuple[str, ...] = (),
        detail: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint
        self.chain = chain
        self.detail = detail

    def render(self) -> str:
        head = f"{self.location}: {self.message}" if self.location else self.message
        lines = [f"{self.family}: {head}"]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        for link in self.chain:
            lines.append(f"  required by {link}")
        if self.detail:
            lines.append(self.detail.rstrip())
        return printable("\n".join(lines))

    def __str__(self) -> str:
        return self.render()


class UsageError(HbError):
    exit_code = 2
    family = "usage error"


class BuildFileError(HbError):
    exit_code = 3
    family = "build file error"


class AnalysisError(HbError):
    exit_code = 4
    family = "analysis error"


class ActionFailed(HbError):
    exit_code = 5
    family = "action failed"


class IntegrityError(HbError):
    """Cache or download content does not match its digest, or the cache is unusable."""

    exit_code = 6
    family = "integrity error"


class RemoteError(HbError):
    exit_code = 7
    family = "remote cache error"


class RegistryPushError(RemoteError):
    """A registry or daemon refused or failed an image push/load (same exit code as remote errors)."""

    family = "registry error"


def did_you_mean(word: str, candidates) -> str | None:
    """A suggestion for a misspelt name, or None."""
    import difflib

    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {matches[0]}?" if matches else None


def no_space(exc: BaseException) -> bool:
    """Whether `exc` is a full disk or an exhausted quota: said in one line, not as a traceback."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
