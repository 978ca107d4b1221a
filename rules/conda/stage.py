"""Staging: install fetched packages into the final prefix path with py-rattler, then normalise the
result so two stages of the same lock give the same tree digest."""

from __future__ import annotations

import asyncio
import json
import os
import time


from hermetic_build.api import ActionFailed, register_action_kind

# conda-meta fields that record where this machine happened to keep things
_MACHINE_FIELDS = ("extracted_package_dir", "package_tarball_full_path")


def _stage(execution) -> None:
    import rattler
    from rattler import Config, Subdir

    params = execution.params
    prefix = params["prefix"]
    out = execution.execroot / execution.action.outputs[0].path
    cache = execution.sandbox_dir / "tmp" / "pkgs"
    cache.mkdir(parents=True, exist_ok=True)
    packages = params["packages"]
    archives = {f.basename: execution.execroot / f.path for f in execution.action.inputs}

    async def install():
        records = [await rattler.RepoDataRecord.from_package_archive(str(archives[p["filename"]])) for p in packages]
        await rattler.install(
            records, target_prefix=str(out), cache_dir=str(cache), alternative_target_prefix=prefix,
            platform=Subdir(params["platform"]), execute_link_scripts=False, show_progress=False,
            config=Config.from_toml("allow-hard-links = false\nallow-ref-links = false"),
        )

    started = time.monotonic()
    try:
        asyncio.run(install())
    except Exception as exc:  # rattler's install errors name the package
        raise ActionFailed(f"installing into {prefix} failed: {type(exc).__name__}: {exc}") from None
    execution.stdout += f"rattler.install: {len(packages)} packages in {time.monotonic() - started:.2f}s\n".encode()
    normalise_prefix(out, {p["filename"]: p for p in packages})
    check_links(out)


def normalise_prefix(root, locked: dict[str, dict]) -> None:
    """Remove what depends on this machine or this moment; record the lock's URLs."""
    tag = root / "CACHEDIR.TAG"
    if tag.exists():
        tag.unlink()
    meta = root / "conda-meta"
    for path in sorted(meta.glob("*.json")):
        record = json.loads(path.read_text())
        for field in _MACHINE_FIELDS:
            record.pop(field, None)
        link = record.get("link")
        if isinstance(link, dict):
            link.pop("source", None)
        entry = locked.get(record.get("fn"))
        if entry is not None:
            record["url"] = entry["url"]
            record["channel"] = entry["url"].rsplit("/", 2)[0] if "/" in entry["url"] else ""
        # sorted keys, no indentation: json's C encoder (indent=2 cost 0.5 s for 30 packages)
        path.write_text(json.dumps(record, sort_keys=True) + "\n")
        os.chmod(path, 0o644)
    history = meta / "history"
    if history.exists():
        history.write_text("")
        os.chmod(history, 0o644)


def check_links(root) -> None:
    """No symlink in the installed prefix may point outside it."""
    root_real = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.readlink(path)
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
                if target.startswith("/") or not (resolved == root_real or resolved.startswith(root_real + os.sep)):
                    rel = os.path.relpath(path, root)
                    raise ActionFailed(f"installed link {rel} -> {target} escapes the prefix")


register_action_kind("conda.stage", "2", _stage)

