"""PyPI wheels of an environment: one fetch action per wheel keyed by its sha256 (the URL is a location,
not part of the key), and the first check of its bytes.

The check reads the zip's central directory only (names, sizes, file types), never decompresses a
member in hb's process: the install, which does, runs in the sandboxed stage worker, which repeats
these checks and adds its own (stage_worker.py)."""

from __future__ import annotations

import re
import stat
import zipfile

from hermetic_build.api import ActionFailed, register_action_kind

from .archive import DEFAULT_MAX_UNPACK_RATIO
from .fetch import fetch_pinned

MIN_UNPACK_LIMIT = 64 << 20
MAX_MEMBERS = 200_000
# name-version(-build)?-python-abi-platform.whl, one path component
WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+"
                        r"-[A-Za-z0-9_.]+\.whl$")


def valid_filename(filename: str) -> bool:
    return bool(WHEEL_NAME.match(filename)) and "/" not in filename and ".." not in filename


def member_problem(name: str) -> str | None:
    """Why a zip member name is not a safe relative path, or None."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return "is not a relative POSIX path"
    if any(ord(c) < 32 for c in name):
        return "has a control character"
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' component"
    return None


def check_wheel(path, filename: str, max_ratio: int = DEFAULT_MAX_UNPACK_RATIO) -> None:
    """Raise ActionFailed unless `path` is a zip whose members are safe relative paths, regular files
    or directories only, unique, within the unpack limit, with a .dist-info/RECORD."""
    where = f"wheel {filename}"
    if not valid_filename(filename):
        raise ActionFailed(f"{where}: not a wheel file name (name-version-python-abi-platform.whl)")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ActionFailed(f"{where} is not a zip archive: {exc}") from None
    import os

    compressed = os.path.getsize(path)
    limit = max(MIN_UNPACK_LIMIT, max_ratio * compressed)
    if len(infos) > MAX_MEMBERS:
        raise ActionFailed(f"{where} has {len(infos)} members (at most {MAX_MEMBERS})")
    seen, total, records = set(), 0, []
    for info in infos:
        problem = member_problem(info.filename)
        if problem:
            raise ActionFailed(f"{where}: member {info.filename!r} {problem}")
        key = info.filename.rstrip("/")
        if key in seen:
            raise ActionFailed(f"{where}: member {key!r} appears twice")
        seen.add(key)
        mode = info.external_attr >> 16
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
            raise ActionFailed(f"{where}: member {key!r} is not a regular file or directory (mode {oct(mode)})")
        total += info.file_size
        if key.endswith(".dist-info/RECORD") and key.count("/") == 1:
            records.append(key)
    if total > limit:
        raise ActionFailed(f"{where} expands to {total} bytes, more than {limit} (max_unpack_ratio {max_ratio} x "
                           f"{compressed} compressed bytes)",
                           hint="raise conda_env(max_unpack_ratio = N) or [conda] max_unpack_ratio in hermetic.toml")
    if len(records) != 1:
        raise ActionFailed(f"{where} has {len(records)} .dist-info/RECORD files (a wheel has exactly one)")


def declare_fetch(ctx, lock_path: str, wheel, platform: str, ratio: int):
    """The fetch action of one locked wheel; returns its output File."""
    if len(wheel.sha256) != 64:
        ctx.fail(f"{lock_path}: {wheel.name} has no sha256; hb fetches only wheels pinned by sha256")
    if not valid_filename(wheel.filename):
        ctx.fail(f"{lock_path}: {wheel.name}: {wheel.url} does not name a wheel file (only wheels are installed)",
                 hint="hb installs wheels only; lock a version with a wheel for this platform")
    out = ctx.declare_file(f"wheels/{wheel.filename}")
    ctx.actions.declare(
        mnemonic="WheelFetch", kind="wheel.fetch", inputs=[], outputs=[out],
        params={"sha256": wheel.sha256, "filename": wheel.filename,
                **({"max_unpack_ratio": ratio} if ratio != DEFAULT_MAX_UNPACK_RATIO else {})},
        hints={"urls": [wheel.url]}, platform=platform, description=f"WheelFetch {wheel.filename}",
    )
    return out


def _fetch(execution) -> None:
    ratio = execution.params.get("max_unpack_ratio", DEFAULT_MAX_UNPACK_RATIO)
    fetch_pinned(execution, check=lambda path, filename: check_wheel(path, filename, ratio))


register_action_kind("wheel.fetch", "1", _fetch, local_only=True)  # network
