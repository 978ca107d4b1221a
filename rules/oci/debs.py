"""deb_base: a small base image from Debian packages pinned by sha256, so images run without Docker Hub.

`hb lock` asks apt (`apt-get download --print-uris`) for the URL, size and sha256 of each listed
package and writes them to a JSON lock in the source tree. `hb build` fetches each .deb by sha256 (one
cached action each), unpacks them in order with a deterministic extractor (no maintainer scripts, no
device nodes, hard links as copies), adds the declared symlinks and directories, and makes the result
one layer.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hermetic_build.api import ActionFailed, DefaultInfo, LockOutcome, attr, register_action_kind, rule

from .image import OciBaseInfo
from .layers import declare_layers

LOCK_VERSION = 1
_URI_LINE = re.compile(r"^'(?P<url>[^']+)' (?P<filename>\S+) (?P<size>\d+) SHA256:(?P<sha256>[0-9a-f]{64})$")


# ----- lock ---------------------------------------------------------------------------------------
def _read_lock(data: bytes, shown: str) -> dict:
    try:
        lock = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{shown} is not valid JSON: {exc}") from None
    if lock.get("version") != LOCK_VERSION or not isinstance(lock.get("packages"), list):
        raise ValueError(f"{shown} is not a deb_base lock (version {LOCK_VERSION})")
    for entry in lock["packages"]:
        for field in ("name", "filename", "url", "sha256", "size"):
            if field not in entry:
                raise ValueError(f"{shown}: package entry {entry.get('name', '?')} lacks {field!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise ValueError(f"{shown}: {entry['name']} has no valid sha256")
    return lock


def _lock(request) -> LockOutcome:
    attrs = request.attrs
    path = request.source_path(attrs["lock"])
    packages = list(attrs["packages"])
    if request.check:
        try:
            lock = _read_lock(path.read_bytes(), request.relpath(path))
        except FileNotFoundError:
            return LockOutcome(stale=(f"{request.relpath(path)} does not exist",))
        if lock.get("requested") != packages:
            return LockOutcome(stale=("the list of packages changed",))
        return LockOutcome()
    if shutil.which("apt-get") is None:
        raise ActionFailed(f"{request.label}: locking Debian packages needs apt-get, which is not installed here",
                           hint="run `hb lock` for deb_base targets on a Debian or Ubuntu machine and commit the lock")
    proc = _print_uris(packages)
    if proc.returncode != 0:
        # No (or old) system package lists, as on a fresh machine or container: ask apt with lists of
        # its own in hb's state directory, refreshed now; the system's apt state is left alone.
        request.reporter.info(f"{request.label}: apt has no usable package lists; fetching a private copy")
        proc = _print_uris(packages, request.state_dir() / "apt")
    if proc.returncode != 0:
        raise ActionFailed(f"{request.label}: apt-get download --print-uris failed:\n{proc.stderr.strip()}",
                           hint="check the package names, and that apt's sources (/etc/apt/sources.list*) answer")
    entries = []
    for line in proc.stdout.splitlines():
        match = _URI_LINE.match(line.strip())
        if match is None:
            continue
        filename = match["filename"]
        entries.append({"name": filename.split("_", 1)[0], "filename": filename, "url": match["url"],
                        "size": int(match["size"]), "sha256": match["sha256"]})
    by_name = {e["name"]: e for e in entries}
    missing = [p for p in packages if p.split(":")[0] not in by_name]
    if missing:
        raise ActionFailed(f"{request.label}: apt gave no sha256-pinned download for {', '.join(missing)}")
    lock = {"version": LOCK_VERSION, "requested": packages,
            "packages": [by_name[p.split(":")[0]] for p in packages]}
    request.write_source(path, (json.dumps(lock, indent=2, sort_keys=True) + "\n").encode())
    return LockOutcome(written=(request.relpath(path),))


def _print_uris(packages: list[str], private: Path | None = None) -> subprocess.CompletedProcess:
    options = []
    if private is not None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (private / sub).mkdir(parents=True, exist_ok=True)
        options = ["-o", f"Dir::State::Lists={private / 'lists'}", "-o", f"Dir::Cache={private / 'cache'}",
                   "-o", "Debug::NoLocking=1"]
        update = subprocess.run(["apt-get", "-q", *options, "update"], capture_output=True, text=True)
        if update.returncode != 0:
            return update
    with tempfile.TemporaryDirectory(prefix="hb-apt-") as tmp:
        return subprocess.run(["apt-get", *options, "download", "--print-uris", *packages], cwd=tmp,
                              capture_output=True, text=True)


# ----- analysis -------------------------------------------------------------------------------------
def _deb_base_impl(ctx):
    lock_file = ctx.source(ctx.attr.lock)
    try:
        data = ctx.read_source(lock_file)
    except Exception:  # noqa: BLE001 - a missing lock is the common first-run case
        ctx.fail(f"{lock_file.path} does not exist", hint=f"run `hb lock {ctx.label}` and commit it")
    try:
        lock = _read_lock(data, lock_file.path)
    except ValueError as exc:
        ctx.fail(str(exc), hint=f"run `hb lock {ctx.label}` to rewrite it")
    if lock.get("requested") != list(ctx.attr.packages):
        ctx.fail(f"{lock_file.path} is stale: it locks {lock.get('requested')}, the target lists "
                 f"{list(ctx.attr.packages)}", hint=f"run `hb lock {ctx.label}` and commit it")
    for name in [*ctx.attr.symlinks, *ctx.attr.directories]:
        parts = name.strip("/").split("/")
        if not name.strip("/") or any(part in ("", ".", "..") for part in parts) or "\0" in name:
            ctx.fail(f"{name!r} is not a path inside the image root (no empty, '.' or '..' components)")
    debs = []
    for entry in lock["packages"]:
        deb = ctx.declare_file(f"debs/{entry['filename']}", internal=True)
        ctx.actions.declare(mnemonic="DebFetch", kind="deb.fetch", inputs=[], outputs=[deb],
                            params={"sha256": entry["sha256"], "filename": entry["filename"]},
                            hints={"urls": [entry["url"]]}, description=f"DebFetch {entry['filename']}")
        debs.append(deb)
    rootfs = ctx.declare_directory("rootfs", internal=True)
    ctx.actions.declare(
        mnemonic="DebExtract", kind="deb.extract", inputs=debs, outputs=[rootfs],
        params={"debs": [d.path for d in debs], "symlinks": dict(sorted(ctx.attr.symlinks.items())),
                "directories": list(ctx.attr.directories), "exclude": list(ctx.attr.exclude)},
        description=f"DebExtract {ctx.label} ({len(debs)} packages)",
    )
    layers = declare_layers(ctx, rootfs, root="", split="single", platform=ctx.platform, name="layers")
    from .sbom import deb_package

    return [DefaultInfo(files=()),
            OciBaseInfo((layers,), packages=tuple(deb_package(e, 0) for e in lock["packages"]),
                        lockfiles=(lock_file,))]


# ----- actions ----------------------------------------------------------------------------------------
def _check_deb(path: Path, filename: str) -> None:
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ActionFailed(f"{filename} is not a Debian package (no ar header)")


def _fetch_deb(execution) -> None:
    from rules.conda.fetch import fetch_pinned

    fetch_pinned(execution, check=_check_deb)


WORKER = Path(__file__).resolve().with_name("deb_extract.py")
PARAMS_FILE = "../tmp/hb-deb-extract-params.json"  # relative to the execution root, inside or outside bwrap


def extract_debs(debs: list[Path], root: Path, exclude=()) -> list[str]:
    """Unpack debs in order into root, in this process (deb_extract.py's checks; for tests and tools)."""
    from .deb_extract import ExtractError
    from .deb_extract import extract_debs as extract

    try:
        return extract(debs, root, exclude)
    except ExtractError as exc:
        raise ActionFailed(str(exc)) from None


def _extract(execution) -> None:
    """Unpack in deb_extract.py inside the sandbox: the .debs may be hostile (their lock is in the repo)."""
    from rules.conda.stage import python_paths, worker_python

    params = execution.params
    sys_path, read_only = python_paths(extra=(str(WORKER),))
    worker_params = {"sys_path": sys_path, "debs": params["debs"], "out": execution.action.outputs[0].path,
                     "exclude": params["exclude"], "directories": params["directories"],
                     "symlinks": params["symlinks"]}
    (execution.execroot / PARAMS_FILE).write_text(json.dumps(worker_params))
    code = execution.run_command([worker_python(), "-I", str(WORKER), PARAMS_FILE], read_only=read_only)
    if code != 0:
        lines = bytes(execution.stderr).decode(errors="replace").strip().splitlines()
        last = next((line for line in reversed(lines) if line.startswith("extract: ")), None)
        raise ActionFailed(last[len("extract: "):] if last else f"unpacking the packages exited with status {code}")


register_action_kind("deb.fetch", "1", _fetch_deb, local_only=True)  # network
register_action_kind("deb.extract", "3", _extract)

deb_base = rule(
    "deb_base",
    _deb_base_impl,
    attrs={
        "packages": attr.string_list(mandatory=True, doc="Debian package names, unpacked in this order"),
        "lock": attr.string(default="debs.lock.json", doc="the lock `hb lock` writes (URL, size, sha256 per .deb)"),
        "symlinks": attr.string_dict(doc="path -> target, e.g. {'bin/sh': 'busybox'}"),
        "directories": attr.string_list(default=["tmp"], doc="empty directories to create (tmp gets mode 1777)"),
        "exclude": attr.string_list(default=["usr/share/doc/*", "usr/share/man/*", "usr/share/lintian/*"],
                                    doc="glob patterns of paths not to unpack"),
    },
    doc="A base image layer from Debian packages pinned by sha256 (`hb lock` refreshes the pins).",
    lock=_lock,
)
