"""PyPI wheels of an environment: one fetch action per wheel keyed by its sha256 (the URL is a location,
not part of the key), whose bytes are first checked (archive.check_wheel: the zip's central directory,
names, sizes, file types) in the sandboxed helper that checks conda archives, not in hb's process: the
install, which unpacks, runs in the sandboxed stage worker, which repeats these checks and adds its own
(stage_worker.py)."""

from __future__ import annotations

from hermetic_build.api import register_action_kind

from .archive import DEFAULT_MAX_UNPACK_RATIO, valid_wheel_filename
from .checker import check_archive_sandboxed, start_checkers
from .fetch import fetch_pinned


def declare_fetch(ctx, lock_path: str, wheel, platform: str, ratio: int):
    """The fetch action of one locked wheel; returns its output File."""
    if len(wheel.sha256) != 64:
        ctx.fail(f"{lock_path}: {wheel.name} has no sha256; hb fetches only wheels pinned by sha256")
    if not valid_wheel_filename(wheel.filename):
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
    start_checkers(execution)  # the check's helpers start while the wheel downloads
    # the zip is parsed in the sandboxed helper that checks conda archives (checker.py)
    fetch_pinned(execution, check=lambda path, filename: check_archive_sandboxed(execution, path, filename, ratio,
                                                                                 kind="wheel"))


register_action_kind("wheel.fetch", "1", _fetch, local_only=True)  # network
