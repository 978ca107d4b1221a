"""The inputs key: a digest of everything conda-lock's content hash of an environment is computed
from, without conda-lock.

`hb lock` records, per platform, `hb.inputs.<platform>` in the lock's custom metadata: a digest of
these inputs and of the content hash it wrote for that platform. `hb build` computes the same digest
from the inputs it sees and the content hash the lock records: equal, the inputs are byte for byte
those the recorded hash was computed from (by the same conda-lock and the same hb), so the lock is
fresh and conda-lock (0.5 s to import) is not needed. Anything else (no key, another input, another
recorded hash) falls back to conda-lock's own hash. The key vouches for nothing the recorded content
hash does not: whoever can write the lock can write either."""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping

from blake3 import blake3

from .spec import PYPI_MAPPING

CONTENT_HASH_MEMO = 1  # bump when what content_hashes depends on, or what read_environment accepts, changes in hb
KEY_PREFIX = "hb.inputs."


def virtual_packages_key(virtual_packages: Mapping[str, Iterable[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """platform -> virtual packages as CondaLockInfo keeps them (sorted by platform): the one form
    `hb lock` and the analysis feed inputs_digest."""
    return tuple(sorted((platform, tuple(items)) for platform, items in virtual_packages.items()))


# conda-lock writes a channel URL's user, password or token as ${VAR} where the value equals an
# environment variable's (models/channel.py): its content hash then depends on the environment, which
# the digest does not cover. Inputs that could hold such a URL (credentials before a host, a /t/ token
# path, a $ anywhere) get no digest, so they are always checked by conda-lock itself.
_MAY_USE_ENVIRONMENT = re.compile(rb"\$|://[^\s/'\"]*@|/t/")


def inputs_digest(platforms, channels, virtual_packages, files) -> str | None:
    """A digest of everything content_hashes reads: the environment files ((real path, shown path)
    each: the bytes and the path they are shown as), platforms, channels, virtual packages (as
    virtual_packages_key gives them), hb's PyPI mapping and the installed conda-lock (its version);
    None where something cannot be read, or where a channel may name credentials that conda-lock
    would match against the environment (_MAY_USE_ENVIRONMENT)."""
    if any(_MAY_USE_ENVIRONMENT.search(str(channel).encode()) for channel in channels):
        return None
    try:
        parts = [CONTENT_HASH_MEMO, conda_lock_version(), list(platforms), list(channels),
                 [[platform, list(items)] for platform, items in virtual_packages],
                 blake3(PYPI_MAPPING.read_bytes()).hexdigest()]
        for path, shown in files:
            data = pathlib.Path(path).read_bytes()
            if _MAY_USE_ENVIRONMENT.search(data):
                return None
            parts.append([shown, blake3(data).hexdigest()])
    except OSError:
        return None
    return blake3(json.dumps(parts).encode()).hexdigest()


def inputs_key(digest: str, platform: str, content_hash: str) -> str:
    """The key recorded for `platform`: the inputs' digest and the content hash recorded for it."""
    return blake3(json.dumps([digest, platform, content_hash]).encode()).hexdigest()


def inputs_keys(digest: str, content_hashes: Mapping[str, str]) -> dict[str, str]:
    """The custom metadata entries `hb lock` writes: one `hb.inputs.<platform>` per platform."""
    return {f"{KEY_PREFIX}{platform}": inputs_key(digest, platform, content_hash)
            for platform, content_hash in content_hashes.items()}


def recorded_fresh(metadata, platform: str, digest: str | None) -> bool:
    """Whether the lock's `hb.inputs.<platform>` vouches that its recorded content hash for
    `platform` was computed from the inputs of `digest`."""
    recorded_hash = (metadata.content_hash or {}).get(platform)
    recorded_key = (metadata.custom_metadata or {}).get(f"{KEY_PREFIX}{platform}")
    if digest is None or not isinstance(recorded_hash, str) or not isinstance(recorded_key, str):
        return False
    return recorded_key == inputs_key(digest, platform, recorded_hash)


def conda_lock_version() -> str:
    """conda-lock's installed version, from its .dist-info directory's name, without importing it
    (importlib.metadata takes 0.1 s to find it; importing conda-lock, the work this saves, 0.5 s).
    Not where it is installed: a lock written on one machine is recognised on another with the same
    conda-lock. A conda-lock with no .dist-info beside it (a source checkout on sys.path) is named by
    its path."""
    import importlib.util

    spec = importlib.util.find_spec("conda_lock")
    if spec is None or not spec.origin:
        raise OSError("conda-lock is not installed")
    site = os.path.dirname(os.path.dirname(spec.origin))
    found = sorted(n for n in os.listdir(site) if n.startswith("conda_lock-") and n.endswith(".dist-info"))
    return ",".join(found) if found else spec.origin
