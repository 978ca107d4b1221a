"""hb's records of locked packages; writing lock files with conda-lock's models, writer and renderer
(reading any lock hb adopts is lockread.py)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from urllib.parse import unquote

from hermetic_build.api import public_url


def url_filename(url: str) -> str:
    """The file a package URL names: its path's last component, without query or fragment (the lock
    reader refuses URLs that have either, so this is the URL's last component)."""
    return url.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1]


def decoded_filename(url: str) -> str:
    """url_filename percent-decoded: the name of the file a server serves (download.pytorch.org and
    S3 mirrors write `+` as `%2B`) and a file:// fetch opens; every later step uses this name."""
    return unquote(url_filename(url))


@dataclass(frozen=True)
class LockedPackage:
    """One conda package of one platform in a lock, as hb's fetch and stage need it."""

    name: str
    version: str
    build: str
    url: str
    sha256: str
    md5: str | None
    platform: str
    # bytes of the archive, where the lock records them (pixi locks do): the fetch stops past them
    size: int | None = None

    def __post_init__(self):
        # never a credential: the URL goes into the stage's key, conda-meta, the SBOM and provenance
        object.__setattr__(self, "url", public_url(self.url))

    @property
    def filename(self) -> str:
        return decoded_filename(self.url)


@dataclass(frozen=True)
class LockedWheel:
    """One PyPI wheel of one platform in a lock (a conda-lock `manager: pip` entry, a pixi PyPI
    package): fetched by sha256 like a conda package, installed after the conda packages."""

    name: str
    version: str
    url: str
    sha256: str
    platform: str
    category: str = "main"

    def __post_init__(self):
        object.__setattr__(self, "url", public_url(self.url))  # as LockedPackage

    @property
    def filename(self) -> str:
        return decoded_filename(self.url)


def read_lockfile(path: pathlib.Path, environment: str = "default"):
    """Any lock file hb adopts (conda-lock.yml, explicit, pixi.lock): lockread.AdoptedLock, or
    lockread.LockReadError(message, line)."""
    from .lockread import read_lock

    return read_lock(path, environment=environment)


def packages_for(lockfile, platform: str, categories=("main",),
                 leave_out: frozenset[str] = frozenset()) -> tuple[list[LockedPackage], list[LockedWheel]]:
    """(conda packages of `platform`, its PyPI wheels) in `categories`, each sorted by name, without
    the packages `leave_out` names."""
    from .lockread import select

    conda, wheels = select(lockfile, platform, categories, leave_out)
    return [e.package for e in conda], [e.package for e in wheels]



def locked_dependency(record, platform: str):
    """A conda-lock LockedDependency from a rattler RepoDataRecord."""
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency

    deps = {}
    for spec in record.depends:
        name, _, constraint = spec.partition(" ")
        deps[name] = constraint.strip() or "*"
    return LockedDependency(
        name=record.name.normalized, version=str(record.version), manager="conda", platform=platform,
        dependencies=deps, url=public_url(record.url),  # the lock names no credential
        hash=HashModel(md5=record.md5.hex() if record.md5 else None,
                       sha256=record.sha256.hex() if record.sha256 else None),
        build=str(record.build), categories={"main"},
    )


def make_lockfile(packages, content_hash: dict, channels, platforms, sources, custom_metadata: dict):
    from conda_lock.lockfile.v1.models import LockMeta
    from conda_lock.lockfile.v2prelim.models import Lockfile

    # a channel's credentials stay where the user wrote them (environment.yml, the BUILD file): the
    # committed lock names the channel without them
    channels = [c.model_copy(update={"url": public_url(c.url)}) if hasattr(c, "model_copy") else public_url(c)
                for c in channels]
    meta = LockMeta(content_hash=content_hash, channels=channels, platforms=list(platforms),
                    sources=list(sources), custom_metadata=custom_metadata)
    return Lockfile(package=sorted(packages, key=lambda d: (d.platform, d.name)), metadata=meta)


def render_lockfile(lockfile) -> bytes:
    """The conda-lock.yml conda-lock's own writer makes of `lockfile` (written into a private temporary
    directory and read back: the workspace's file is written by LockRequest.write_source, which never
    follows a link the checkout put there)."""
    import tempfile

    from conda_lock.lockfile import write_conda_lock_file

    with tempfile.TemporaryDirectory(prefix="hb-lock-") as tmp:
        path = pathlib.Path(tmp) / "conda-lock.yml"
        write_conda_lock_file(lockfile, path, metadata_choices=set(), include_help_text=True)
        return path.read_bytes()


def render_explicit(lockfile, platform: str) -> str:
    from conda_lock.conda_lock import render_lockfile_for_platform

    lines = render_lockfile_for_platform(lockfile=lockfile, include_dev_dependencies=True, extras=None,
                                         kind="explicit", platform=platform)
    return "\n".join(lines) + "\n"
