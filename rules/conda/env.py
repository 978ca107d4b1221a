"""conda_env: from a committed lock only (hb build never solves), one fetch action per package keyed
by its sha256, then one stage action that installs them into the final prefix path as a tree."""

from __future__ import annotations

from dataclasses import dataclass

from hermetic_build.api import AnalysisError, DefaultInfo, File, Location, Provider, attr, rule

from . import fetch, stage, wheels  # noqa: F401 - registering action kinds
from .archive import DEFAULT_MAX_UNPACK_RATIO, MAX_PREFIX_LENGTH, path_problem
from .lock import CondaLockInfo, check_fresh
from .lockfile import LockedPackage, LockedWheel, packages_for, read_lockfile
from .lockread import LockReadError, unknown_names


@dataclass(frozen=True)
class CondaEnvInfo(Provider):
    """A staged environment: its tree (the prefix's contents) and what went into it."""

    tree: File
    prefix: str
    platform: str
    packages: tuple[LockedPackage, ...]
    archives: tuple[File, ...]
    lockfile: File
    content_hash: str = ""  # the lock's content hash for this platform (conda-lock's)
    cuda: str = ""  # the __cuda version of a GPU variant's lock, or ""
    wheels: tuple[LockedWheel, ...] = ()  # PyPI wheels installed after the conda packages


def prefix_problem(prefix) -> str | None:
    """Why `prefix` cannot be where an environment lives (it becomes the paths of image layers and
    replaces placeholders in package files), or None."""
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix == "/":
        return "it must be an absolute path below /"
    if len(prefix.encode()) > MAX_PREFIX_LENGTH:
        return f"it is longer than {MAX_PREFIX_LENGTH} bytes, conda's limit (the length of its placeholders)"
    why = path_problem(prefix[1:])
    return f"{why} (write it normalised, like /opt/env)" if why and "component" in why else why


def _conda_env_impl(ctx):
    why = prefix_problem(ctx.attr.prefix)
    if why:
        ctx.fail(f"prefix {ctx.attr.prefix!r}: {why}", hint='prefix = "/opt/env"')
    lock_dep = ctx.dep("lock")
    info = lock_dep.get(CondaLockInfo) if lock_dep is not None else None
    lock_file = info.lockfile if info is not None else ctx.files("lock")[0]
    platform = ctx.attr.platform or (info.platforms[0] if info else ctx.platform)
    import tempfile
    from pathlib import Path

    data = ctx.read_source(lock_file)
    with tempfile.TemporaryDirectory(prefix="hb-lock-") as tmp:
        path = Path(tmp) / Path(lock_file.path).name
        path.write_bytes(data)
        try:
            lock = read_lockfile(path, ctx.attr.environment or "default")
        except LockReadError as exc:  # the user's file and line, never the temporary copy
            raise AnalysisError(f"{ctx.label}: {exc.message}",
                                location=Location(lock_file.path, exc.line), hint=exc.hint) from None
    if info is not None:
        if platform not in info.platforms:
            ctx.fail(f"platform {platform!r} is not locked by {info.lock_label} (platforms: {list(info.platforms)})")
        ctx.read_source(info.environment)  # tracked: editing environment.yml re-checks staleness
        for extra in (*info.extra_environments, *info.requirement_files):
            ctx.read_source(extra)
        check_fresh(info, lock, platform, ctx.workspace_root, f"{ctx.label}: ", memo=ctx.memo)
    categories = tuple(ctx.attr.categories) or ("main",)
    leave_out = frozenset(ctx.attr.leave_out)
    unknown = unknown_names(lock, platform, sorted(leave_out))
    if unknown:
        ctx.fail(f"leave_out names {', '.join(map(repr, unknown))}, which {lock_file.path} does not list for "
                 f"platform {platform!r}", hint="name packages of the lock as it spells them (conda names; "
                 "PyPI names in any spelling PEP 503 makes equal), as NAME, conda:NAME or pypi:NAME")
    try:
        packages, pip = packages_for(lock, platform, categories, leave_out)
    except LockReadError as exc:  # an sdist or unpinned pip entry of this platform
        raise AnalysisError(f"{ctx.label}: {exc.message}",
                            location=Location(lock_file.path, exc.line), hint=exc.hint) from None
    if not packages:
        ctx.fail(f"{lock_file.path} has no conda packages for platform {platform!r}",
                 hint=f"platforms in the lock: {', '.join(lock.metadata.platforms)}")
    ratio = _max_unpack_ratio(ctx)
    limits = {"max_unpack_ratio": ratio} if ratio != DEFAULT_MAX_UNPACK_RATIO else {}
    archives = []
    for pkg in packages:
        if len(pkg.sha256) != 64 and not (ctx.attr.allow_md5 and pkg.md5):
            raise AnalysisError(
                f"{ctx.label}: {lock_file.path}: {pkg.name} ({pkg.filename}) is pinned by "
                f"{'md5 only' if pkg.md5 else 'no hash'}; hb fetches packages pinned by sha256",
                location=Location(lock_file.path, _line_of(lock, pkg)),
                hint="re-lock with `hb lock` or conda-lock's unified format (it records sha256), or set "
                     "allow_md5 = True on the conda_env to verify md5 (a weaker pin) and record the sha256"
                if pkg.md5 else "re-lock the environment")
        archive = ctx.declare_file(f"pkgs/{pkg.filename}")
        built = _built_by_channel(pkg, info.channel_dirs if info is not None else ())
        if built is not None:
            channel_label, directory, subdir = built
            ctx.actions.declare(
                mnemonic="CondaFromChannel", kind="conda.from_channel", inputs=[directory], outputs=[archive],
                params={"sha256": pkg.sha256, "filename": pkg.filename, "subdir": subdir,
                        "channel": directory.path, **limits},
                hints={"channel_label": channel_label, "lock_label": info.lock_label},
                platform=platform, description=f"CondaFromChannel {pkg.filename}",
            )
            archives.append(archive)
            continue
        ctx.actions.declare(
            mnemonic="CondaFetch", kind="conda.fetch", inputs=[], outputs=[archive],
            # max_unpack_ratio only when raised or lowered: the default keeps every existing fetch key
            params={**({"sha256": pkg.sha256} if pkg.sha256 else {"md5": pkg.md5}), "filename": pkg.filename,
                    **limits},
            # the size a lock records bounds the download; a hint: it is not part of the key
            hints={"urls": [pkg.url], **({"size": pkg.size} if pkg.size else {})},
            platform=platform, description=f"CondaFetch {pkg.filename}",
        )
        archives.append(archive)
    wheel_files = [wheels.declare_fetch(ctx, lock_file.path, wheel, platform, ratio) for wheel in pip]
    wheel_params = {}
    if pip:  # only with wheels: a conda-only stage keeps its key
        python = next((p for p in packages if p.name == "python"), None)
        if python is None:
            ctx.fail(f"{lock_file.path} has pip packages for {platform} but no conda python to install them into",
                     hint="add python to the environment's conda dependencies and run `hb lock`")
        wheel_params = {"python": ".".join(python.version.split(".")[:2]),
                        "wheels": [{"filename": w.filename, "url": w.url, "sha256": w.sha256, "name": w.name,
                                    "version": w.version} for w in pip],
                        **({"max_unpack_ratio": ratio} if ratio != DEFAULT_MAX_UNPACK_RATIO else {})}
    tree = ctx.declare_directory("env")
    ctx.actions.declare(
        mnemonic="CondaStage", kind="conda.stage", inputs=archives + wheel_files, outputs=[tree], platform=platform,
        params={"prefix": ctx.attr.prefix, "platform": platform,
                "packages": [{"filename": p.filename, "url": p.url, "name": p.name,
                              **({"sha256": p.sha256} if p.sha256 else {"md5": p.md5})}
                             for p in packages], **wheel_params},
        # where each package's lock entry is, for the stage's errors (not part of the key)
        hints={"lock": lock_file.path, "lock_lines": _lines_of(lock, packages)},
        description=f"CondaStage {ctx.label} ({platform}, {len(packages)} packages"
                    + (f", {len(pip)} wheels)" if pip else ")"),
    )
    return [DefaultInfo(files=(tree,)),
            CondaEnvInfo(tree, ctx.attr.prefix, platform, tuple(packages), tuple(archives), lock_file,
                         (lock.metadata.content_hash or {}).get(platform, ""), info.cuda if info else "",
                         tuple(pip))]


def _line_of(lock, package) -> int | None:
    return next((e.line for e in lock.entries if e.package is package), None)


def _lines_of(lock, packages) -> dict[str, int | None]:
    """Each package's file name -> the line of its lock entry."""
    lines = {id(e.package): e.line for e in lock.entries}
    return {p.filename: lines.get(id(p)) for p in packages}


def _built_by_channel(pkg: LockedPackage, channel_dirs) -> tuple[str, File, str] | None:
    """(channel label, channel directory, subdir) when the lock's URL for `pkg` points into the
    output of a conda_channel target the environment names (file://<any checkout>/<its output
    path>/<subdir>/<filename>): the package is then taken from that channel by sha256."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(pkg.url)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    for label, directory in channel_dirs:
        _head, marker, tail = path.rpartition(f"/{directory.path}/")
        parts = tail.split("/")
        if marker and len(parts) == 2 and parts[1] == pkg.filename and parts[0] not in ("", ".", ".."):
            return label, directory, parts[0]
    return None


def _max_unpack_ratio(ctx) -> int:
    """The target's max_unpack_ratio, else hermetic.toml's [conda] max_unpack_ratio, else the default."""
    if ctx.attr.max_unpack_ratio:
        ratio, where = ctx.attr.max_unpack_ratio, "max_unpack_ratio"
    else:
        section = ctx.settings.extra.get("conda", {})
        ratio, where = section.get("max_unpack_ratio", DEFAULT_MAX_UNPACK_RATIO), "[conda] max_unpack_ratio in hermetic.toml"
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
        ctx.fail(f"{where} must be a positive integer (expanded bytes per compressed byte), not {ratio!r}",
                 hint=f"the default is {DEFAULT_MAX_UNPACK_RATIO}")
    return ratio


conda_env = rule(
    "conda_env",
    _conda_env_impl,
    attrs={
        "lock": attr.label(mandatory=True, allow_files=True,
                           doc="a conda_lock target, or a conda-lock.yml made by any tool (then it is the truth)"),
        "platform": attr.string(doc="the platform to stage (default: the lock's first platform)"),
        "prefix": attr.string(default="/opt/env", doc="the absolute path the environment will live at"),
        "categories": attr.string_list(doc="lock categories to install (default ['main'], as `conda-lock install`; "
                                       "add 'dev' or an extra's name)"),
        "allow_md5": attr.bool(doc="accept packages the lock pins by md5 only (explicit locks): the fetch verifies "
                               "the md5 and records the sha256 it computed"),
        "environment": attr.string(doc="the environment of a pixi.lock (default: 'default')"),
        "leave_out": attr.string_list(doc="packages of the lock not to install, e.g. a pixi project's own editable "
                                      "source (`pypi: .`), which hb cannot install from a lock: a name leaves out "
                                      "the conda package and the PyPI project of that name, `conda:NAME` or "
                                      "`pypi:NAME` only one; each must name a package the lock lists for the "
                                      "platform"),
        "max_unpack_ratio": attr.int(doc=f"refuse a package that expands to more than this many times its "
                                     f"compressed size (and over 64 MiB); default: [conda] max_unpack_ratio "
                                     f"in hermetic.toml, else {DEFAULT_MAX_UNPACK_RATIO}"),
    },
    doc="Fetch a locked environment's packages and wheels by sha256 and install them into a prefix tree.",
)
