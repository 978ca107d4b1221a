"""Checking a conda package archive before anything is extracted from it."""

from __future__ import annotations

import posixpath

from hermetic_build.api import ActionFailed


def check_archive(path, filename: str) -> None:
    """Refuse archives with absolute paths, '..' components, or links escaping the prefix."""
    from conda_package_streaming.package_streaming import stream_conda_component

    components = ("pkg", "info") if filename.endswith(".conda") else ("pkg",)
    for component in components:
        for _tar, member in stream_conda_component(str(path), component=component):
            name = member.name
            parts = name.split("/")
            if name.startswith("/") or ".." in parts:
                raise ActionFailed(f"{filename}: refusing archive entry {name!r} (absolute path or '..')")
            if member.issym() or member.islnk():
                target = member.linkname
                base = posixpath.dirname(name) if member.issym() else ""
                resolved = posixpath.normpath(posixpath.join(base, target))
                if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise ActionFailed(f"{filename}: refusing link {name!r} -> {target!r}, which escapes the prefix")
            elif not (member.isfile() or member.isdir()):
                raise ActionFailed(f"{filename}: refusing special file {name!r} (devices and fifos are not allowed)")
