"""Listing a workspace's packages and matching glob() patterns: plain directory walks, with no
Starlark, so the no-op check (noop.py) can re-run them without loading the evaluator."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .workspace import BUILD_FILE, OUTPUT_DIR, Workspace


@dataclass(frozen=True)
class GlobCall:
    package: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    result: tuple[str, ...]


def _pattern_regex(pattern: str) -> re.Pattern:
    """Bazel glob semantics: `*` and `?` stay inside one path segment, `**` spans segments."""
    out = []
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        piece = "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in segment)
        out.append(piece if last else piece + "/")
    return re.compile("^" + "".join(out) + "$")


def run_glob(workspace: Workspace, package: str, include, exclude) -> list[str]:
    """Files of `package` (not of its subpackages, not hb-out) matching the patterns, sorted."""
    base = workspace.package_dir(package)
    inc = [_pattern_regex(p) for p in include]
    exc = [_pattern_regex(p) for p in exclude]
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(
            d for d in dirnames
            if not (rel_dir == "" and package == "" and d == OUTPUT_DIR)
            and not d.startswith(".")
            and not os.path.isfile(os.path.join(dirpath, d, BUILD_FILE))
        )
        for name in filenames:
            rel = rel_dir + name
            if any(r.match(rel) for r in inc) and not any(r.match(rel) for r in exc):
                found.append(rel)
    return sorted(found)


def all_packages(workspace: Workspace, under: str = "") -> list[str]:
    """Every package at or below `under`, sorted (skips hb-out, hidden dirs, nested workspaces)."""
    base = workspace.package_dir(under)
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, workspace.root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not (rel == "" and d == OUTPUT_DIR)
            and not os.path.isfile(os.path.join(dirpath, d, "hermetic.toml"))
        )
        if BUILD_FILE in filenames:
            found.append(rel)
    return sorted(found)


def glob_fingerprint(workspace: Workspace, globs) -> bool:
    """True when every recorded glob still returns the same files."""
    return all(tuple(run_glob(workspace, g.package, g.include, g.exclude)) == g.result for g in globs)
