"""Labels (`//pkg:name`, `:name`, `//pkg`) and target patterns (`//...`, `//pkg/...`, `//pkg:all`)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

_PACKAGE_RE = re.compile(r"^(?:[A-Za-z0-9_.+=,@~-]+(?:/[A-Za-z0-9_.+=,@~-]+)*)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+=,@~/ -]+$")


class LabelSyntaxError(ValueError):
    """A string that is not a valid label or pattern."""


class Label(NamedTuple):
    """`//package:name`. A named tuple: labels are hashed millions of times in big graphs, and
    tuple hashing runs in C (a frozen dataclass's generated __hash__ is ~4x slower)."""

    package: str
    name: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"

    @staticmethod
    def parse(text: str, current_package: str | None = None) -> "Label":
        """Parse an absolute label, or a relative one (`:name`, `name`) inside `current_package`."""
        return _parse_label(text, current_package)


@functools.lru_cache(maxsize=65536)
def _parse_label(text: str, current_package: str | None) -> Label:
    """Parse an absolute label, or a relative one (`:name`, `name`) inside `current_package`."""
    if not isinstance(text, str) or not text:
        raise LabelSyntaxError(f"empty label {text!r}")
    if text.startswith("//"):
        body = text[2:]
        if ":" in body:
            package, name = body.split(":", 1)
        else:
            package = body
            name = body.rsplit("/", 1)[-1] if body else ""
            if not name:
                raise LabelSyntaxError(f"label {text!r} names no target: write //:name")
    elif text.startswith("@"):
        raise LabelSyntaxError(f"external repositories are not supported: {text!r}")
    else:
        if current_package is None:
            raise LabelSyntaxError(f"relative label {text!r} needs a package: write //pkg:name")
        package = current_package
        name = text[1:] if text.startswith(":") else text
    _check(text, package, name)
    return Label(package, name)


@functools.lru_cache(maxsize=4096)
def _valid_package(package: str) -> bool:
    """A workspace-relative directory: no '.', '..' or '...' parts (a pattern's '...' is not one).
    Cached: every label of a BUILD file names its package again."""
    return bool(_PACKAGE_RE.match(package)) and not (package and any(
        p in (".", "..", "...") for p in package.split("/")))


def _check(text: str, package: str, name: str) -> None:
    if not _valid_package(package):
        raise LabelSyntaxError(f"invalid package name in label {text!r}")
    if not name or not _NAME_RE.match(name) or name.startswith("/") or name.endswith("/"):
        raise LabelSyntaxError(f"invalid target name in label {text!r}")
    if any(p in (".", "..", "") for p in name.split("/")):
        raise LabelSyntaxError(f"target name in {text!r} may not contain '.', '..' or empty path parts")


@dataclass(frozen=True)
class TargetPattern:
    """`//pkg:name` (exact), `//pkg:all` (every target of pkg) or `//pkg/...` (pkg and below)."""

    package: str
    name: str | None = None  # None: all targets
    recursive: bool = False

    def __str__(self) -> str:
        if self.recursive:
            return f"//{self.package}/..." if self.package else "//..."
        if self.name is None:
            return f"//{self.package}:all"
        return str(Label(self.package, self.name))

    def matches_package(self, package: str) -> bool:
        if self.recursive:
            return not self.package or package == self.package or package.startswith(self.package + "/")
        return package == self.package

    @staticmethod
    def parse(text: str, current_package: str = "") -> "TargetPattern":
        if text in ("//...", "..."):
            return TargetPattern("", None, True)
        if text.endswith("/..."):
            base = text[:-4]
            package = base[2:] if base.startswith("//") else base
            if not _valid_package(package):
                raise LabelSyntaxError(f"invalid package in pattern {text!r}")
            return TargetPattern(package, None, True)
        if text.endswith((":all", ":*")):
            base = text.rsplit(":", 1)[0]
            package = base[2:] if base.startswith("//") else (current_package if base == "" else base)
            if not _valid_package(package):
                raise LabelSyntaxError(f"invalid package in pattern {text!r}")
            return TargetPattern(package, None, False)
        label = Label.parse(text, current_package)
        return TargetPattern(label.package, label.name, False)
