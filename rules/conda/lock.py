"""conda_lock and `hb lock`: one py-rattler solve per platform with exactly the declared virtual
packages, then (for a `pip:` section) one uv resolution per platform against the locked python (uv
processes overlapping the solves, see uv_run.py; the wheels' dependencies from pypi_deps.py),
written as conda-lock's unified conda-lock.yml plus explicit conda-<platform>.lock files."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING


from hermetic_build.api import (
    AnalysisError,
    DefaultInfo,
    File,
    Label,
    Location,
    LockOutcome,
    Provider,
    attr,
    resolve_source,
    rule,
)

from . import lockfile as lf
from .channel import CondaChannelInfo
from .lockkey import inputs_digest, inputs_keys, recorded_fresh, virtual_packages_key
from .spec import (content_hashes, decode_text, environment_pip_indexes, explain_staleness, input_fingerprints,
                   read_environment, requirement_files)
from .yamlload import safe_loader

if TYPE_CHECKING:  # imported where a lock runs: a build that only reads locks never loads them
    from . import pypi, uv_run


@dataclass(frozen=True)
class CondaLockInfo(Provider):
    lockfile: File
    environment: File
    platforms: tuple[str, ...]
    channels: tuple[str, ...]
    virtual_packages: tuple[tuple[str, tuple[str, ...]], ...]
    lock_label: str
    cuda: str = ""  # the __cuda version the lock was solved with (a GPU variant), or ""
    # (label, channel directory) of each conda_channel target the environment names: packages of the
    # lock that one of them builds are taken from it by sha256, whatever URL the lock records
    channel_dirs: tuple[tuple[str, File], ...] = ()
    extra_environments: tuple[File, ...] = ()  # merged on top of `environment` (conda-lock -f a -f b)
    pip_indexes: tuple[str, ...] = ()  # uv's index options (pypi.pip_index_args); () for PyPI alone
    requirement_files: tuple[File, ...] = ()  # the requirements files pip: sections name (`-r FILE`)

    def virtual_packages_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.virtual_packages}


def _platforms(attrs, settings) -> tuple[str, ...]:
    return tuple(attrs["platforms"]) or tuple(settings.platforms)


def _with_cuda(virtual_packages: dict, platforms, cuda: str) -> dict[str, list[str]]:
    """A GPU variant: __cuda=<version> on every linux platform, in addition to the declared ones."""
    out = {k: list(v) for k, v in virtual_packages.items()}
    if cuda:
        for platform in platforms:
            if platform.startswith("linux-"):
                out[platform] = [v for v in out.get(platform, []) if not v.startswith("__cuda")] + [f"__cuda={cuda}"]
    return out


def _conda_lock_impl(ctx):
    environment = ctx.files("environment")[0]
    lockfile = File(f"{ctx.label.package}/{ctx.attr.lockfile}" if ctx.label.package else ctx.attr.lockfile)
    platforms = _platforms({"platforms": ctx.attr.platforms}, ctx.settings)
    for platform in ctx.attr.virtual_packages:
        if platform not in platforms:
            ctx.fail(f"virtual_packages names platform {platform!r}, which is not in platforms {list(platforms)}")
    if ctx.attr.cuda and not any(p.startswith("linux-") for p in platforms):
        ctx.fail(f"cuda = {ctx.attr.cuda!r} needs a linux platform to lock for (platforms: {list(platforms)})")
    virtual = _with_cuda(ctx.attr.virtual_packages, platforms, ctx.attr.cuda)
    channel_dirs = []
    for dep in ctx.deps(CHANNEL_TARGETS):
        if CondaChannelInfo not in dep:
            ctx.fail(f"the channels of {environment.path} name {dep.label}, which is not a conda_channel target",
                     hint="a channel is a URL (https://conda.anaconda.org/conda-forge) or the label of a conda_channel")
        channel_dirs.append((str(dep.label), dep[CondaChannelInfo].directory))
    extra = tuple(ctx.files("extra_environments")) if ctx.attr.extra_environments else ()
    written, requirements = _written_pip_sources(ctx, (environment, *extra))
    try:
        from .pypi import pip_index_args

        indexes = pip_index_args(ctx.attr.pip_index_url, ctx.attr.pip_extra_index_urls, written)
    except ValueError as exc:
        ctx.fail(str(exc), hint='e.g. pip_extra_index_urls = ["https://download.pytorch.org/whl/cu121"]')
    return [
        DefaultInfo(files=(lockfile,)),
        CondaLockInfo(lockfile, environment, platforms, tuple(ctx.attr.channels),
                      virtual_packages_key(virtual), str(ctx.label), ctx.attr.cuda,
                      channel_dirs=tuple(channel_dirs), extra_environments=extra, pip_indexes=indexes,
                      requirement_files=requirements),
    ]


def _written_pip_sources(ctx, files):
    """(the pip indexes, the requirements files (`-r FILE`)) the environment files name, both read
    with ctx.read_source (tracked: editing one re-analyses); a file that does not exist names none
    here (the lock reports it)."""
    def read(file: File) -> str | None:  # a link out of the workspace is refused by read_source
        if not os.path.lexists(ctx.workspace_root / file.path):
            return None
        return decode_text(ctx.read_source(file), file.path)

    try:
        texts = [(text, file.path) for file in files if (text := read(file)) is not None]
        requirements = requirement_files(texts, lambda rel: read(File(rel)))
        return environment_pip_indexes(texts, requirements), tuple(File(rel) for rel in requirements)
    except AnalysisError as exc:
        raise AnalysisError(f"{ctx.label}: {exc.message}", location=exc.location, hint=exc.hint) from None


def indexes_problem(custom_metadata: dict | None, indexes: tuple[str, ...]) -> str | None:
    """Why a lock's pip entries were resolved from other indexes than `indexes` now names, or None
    (conda-lock's content hash covers environment.yml, not these attributes)."""
    from .pypi import PIP_INDEXES_KEY

    recorded = (custom_metadata or {}).get(PIP_INDEXES_KEY, "")
    current = " ".join(indexes)
    if recorded == current:
        return None
    return (f"the pip indexes changed (locked with {recorded or 'PyPI alone'}, "
            f"the target now says {current or 'PyPI alone'})")


CHANNEL_TARGETS = "channel targets"  # the source_deps name of the conda_channel targets a lock's channels name


def is_channel_label(channel: str) -> bool:
    return channel.startswith(("//", ":"))


def _channel_targets(ctx) -> dict[str, list[str]]:
    """The conda_channel targets among the channels: the `channels` attribute, else environment.yml's
    own `channels:` list. They are dependencies of the lock (query and graph show them), and conda_env
    takes their packages from them."""
    import yaml  # here: most builds never read YAML (PyYAML's import compiles its regexes)
    channels = list(ctx.attr.channels)
    if not channels and ctx.attr.environment is not None:
        data = ctx.read_source(ctx.source_path(ctx.attr.environment))
        try:
            parsed = yaml.load(data, Loader=safe_loader()) if data is not None else None
        except (yaml.YAMLError, RecursionError):
            parsed = None  # the implementation reports the file's errors, at file:line
        found = parsed.get("channels") if isinstance(parsed, dict) else None
        channels = [c for c in found if isinstance(c, str)] if isinstance(found, list) else []
    return {CHANNEL_TARGETS: [c.strip() for c in channels if is_channel_label(c.strip())]}


def check_fresh(info: CondaLockInfo, lock, platform: str, workspace_root: pathlib.Path, where: str,
                memo=None) -> None:
    """Raise if the committed lock no longer matches its environment spec (hb build never solves).
    A lock `hb lock` wrote vouches for its content hash with its inputs key (lockkey.py): the same
    inputs, and it is fresh without conda-lock. Otherwise the spec's content hashes come from
    conda-lock (its parser and hash); with `memo` (a rule context's memo) they are kept under the
    inputs' digest, so that an analysis re-run for another reason does not import conda-lock again
    for the same environment files."""
    files = [(resolve_source(workspace_root, info.environment.path), info.environment.path),
             *((resolve_source(workspace_root, f.path), f.path) for f in info.extra_environments)]
    requirement_paths = [(resolve_source(workspace_root, f.path), f.path) for f in info.requirement_files]
    why = indexes_problem(lock.metadata.custom_metadata, info.pip_indexes)
    if why and any(isinstance(e.package, lf.LockedWheel) and e.package.platform == platform for e in lock.entries):
        raise AnalysisError(f"{where}{info.lockfile.path} is stale for {platform}: {why}",
                            hint=f"run `hb lock {info.lock_label}` and commit the updated lock files")
    digest = inputs_digest(info.platforms, info.channels, info.virtual_packages, [*files, *requirement_paths])
    if recorded_fresh(lock.metadata, platform, digest):
        return

    def spec():
        return read_environment(files[0][0], info.platforms, info.channels, shown_path=files[0][1],
                                extra=tuple(files[1:]), read_requirement=_source_reader(workspace_root))

    def current_hashes() -> dict[str, str]:
        return content_hashes(spec(), info.virtual_packages_dict())

    key = digest if memo is not None else None
    current = memo("conda.content-hash", key, current_hashes) if key is not None else current_hashes()
    recorded = (lock.metadata.content_hash or {}).get(platform)
    if recorded != current.get(platform):
        env = spec()
        reasons = explain_staleness(lock.metadata.custom_metadata,
                                    input_fingerprints(env, info.virtual_packages_dict()), platform)
        raise AnalysisError(
            f"{where}{info.lockfile.path} is stale for {platform}: " + "; ".join(reasons),
            hint=f"run `hb lock {info.lock_label}` and commit the updated lock files")


def _source_reader(workspace_root):
    """read_environment's reader of requirements files: workspace sources (resolve_source refuses a
    link out of the workspace); None where one does not exist."""
    from .requirements_file import read_text

    def read(rel: str) -> str | None:
        return read_text(resolve_source(workspace_root, rel), rel)
    return read


def _lock(request) -> LockOutcome:
    from . import uv_run
    if request.check:
        return _lock_or_check(request, None)
    # the uv runs the last lock of this target made start now, before conda-lock is imported and the
    # environment read and solved; they are used only for the same inputs (uv_run.py)
    speculation = uv_run.Speculation(request.state_dir(), str(request.label), request.state_dir() / "uv-cache",
                                     uv_limits(request.settings))
    try:
        return _lock_or_check(request, speculation)
    finally:
        speculation.close()


def _lock_or_check(request, speculation) -> LockOutcome:
    from . import pypi
    from .solve import solve
    attrs = request.attrs
    platforms = _platforms(attrs, request.settings)
    virtual_packages = _with_cuda(attrs["virtual_packages"], platforms, attrs["cuda"])
    env_label = attrs["environment"]
    env_rel = _rel(env_label)
    env_path = request.workspace.source_file(env_rel)  # refuses a link out of the workspace
    shown = env_rel
    extra = tuple((request.workspace.source_file(_rel(label)), _rel(label))
                  for label in attrs.get("extra_environments") or ())
    read_requirement = _source_reader(request.workspace.root)
    texts = []
    for path, file_shown in ((env_path, shown), *extra):
        try:
            texts.append((decode_text(path.read_bytes(), file_shown), file_shown))
        except FileNotFoundError:
            pass  # read_environment says so
    named = requirement_files(texts, read_requirement)  # `-r FILE`: inputs of the lock too
    files = ((env_path, shown), *extra, *((resolve_source(request.workspace.root, rel), rel) for rel in named))
    # the inputs' digest before conda-lock reads them and again before the lock is written: a file
    # edited meanwhile gets no inputs key (lockkey.py)
    digest = inputs_digest(platforms, attrs["channels"], virtual_packages_key(virtual_packages), files)
    spec = read_environment(env_path, platforms, attrs["channels"], shown_path=shown, extra=extra,
                            read_requirement=read_requirement)
    if not request.check:
        for at, what in spec.warnings:
            request.reporter.warn(f"{at}: {what}")
    lock_path = request.source_path(attrs["lockfile"])
    from .lockread import LockReadError

    try:
        existing = lf.read_lockfile(lock_path) if lock_path.exists() else None
    except LockReadError as exc:
        if request.check:
            return LockOutcome(stale=(f"{request.relpath(lock_path)} cannot be read: {exc.message}",))
        existing = None  # re-locked from scratch (--update has nothing to keep)
    hashes = content_hashes(spec, virtual_packages)
    fingerprints = input_fingerprints(spec, virtual_packages)
    try:
        indexes = pypi.pip_index_args(attrs.get("pip_index_url") or "", attrs.get("pip_extra_index_urls") or (),
                                      spec.pip_indexes)
    except ValueError as exc:
        raise AnalysisError(f"{request.label}: {exc}") from None

    if request.check:
        if existing is None:
            return LockOutcome(stale=(f"{request.relpath(lock_path)} does not exist",))
        stale = []
        why = indexes_problem(existing.metadata.custom_metadata, indexes)
        if why and any(isinstance(e.package, lf.LockedWheel) for e in existing.entries):
            stale.append(why)
        for platform in platforms:
            if (existing.metadata.content_hash or {}).get(platform) != hashes[platform]:
                stale += [f"{platform}: {r}" for r in
                          explain_staleness(existing.metadata.custom_metadata, fingerprints, platform)]
        if sorted(existing.metadata.platforms) != sorted(platforms):
            stale.append("the list of platforms changed")
        return LockOutcome(stale=tuple(dict.fromkeys(stale)))

    channel_urls = _channel_urls(request, spec.channels)
    limits = repodata_limits(request.settings)
    packages = []
    # uv runs as a process: each platform's resolution starts as soon as its conda solve is done and
    # runs while the next platform is solved
    pip_jobs: list[_PipJob] = []
    try:
        for platform in platforms:
            locked, preferences = [], {}
            if existing is not None and request.update:
                keep, keep_pip = lf.packages_for(existing, platform)
                locked = [(p.name, p.version, p.build) for p in keep if p.name not in request.update]
                updated = {pypi.normalise(n) for n in request.update}
                preferences = {w.name: w.version for w in keep_pip if pypi.normalise(w.name) not in updated}
            request.reporter.info(f"solving {request.label} for {platform}")
            specs = spec.match_specs(platform, dict(zip(spec.channels, channel_urls)))  # `chan::pkg` kept
            records = solve(channel_urls, specs, platform, virtual_packages.get(platform, []),
                            request.state_dir() / "repodata", locked, where=f"{request.label}: ", limits=limits)
            _check_records(records, platform, f"{request.label}: ")
            packages.extend(lf.locked_dependency(r, platform) for r in records)
            requirements = spec.pip_requirements(platform)
            if requirements:
                request.reporter.info(f"resolving the pip requirements of {request.label} for {platform} with uv")
                platform_indexes = pypi.pip_index_args(attrs.get("pip_index_url") or "",
                                                       attrs.get("pip_extra_index_urls") or (), spec.pip_indexes,
                                                       platform)  # (checked above, for every platform)
                pip_jobs.append(_start_pip(request, speculation, requirements, records, platform,
                                           virtual_packages.get(platform, []), preferences, platform_indexes))
        packages.extend(_finish_pip(request, pip_jobs))
        speculation.record([job.run.inputs for job in pip_jobs if job.run is not None])
    finally:
        for job in pip_jobs:  # after an error: no uv process outlives the lock
            if job.run is not None:
                job.run.cancel()
    unchanged = digest is not None and digest == inputs_digest(platforms, attrs["channels"],
                                                               virtual_packages_key(virtual_packages), files)
    lockfile = lf.make_lockfile(packages, hashes, spec.lock_spec.channels, platforms,
                                [shown, *(s for _, s in extra)],
                                {**fingerprints, **(inputs_keys(digest, hashes) if unchanged else {}),
                                 **({pypi.PIP_INDEXES_KEY: " ".join(indexes)} if indexes else {})})
    rendered = lf.render_lockfile(lockfile)
    _read_back(rendered, packages, platforms, f"{request.label}: ")
    request.write_source(lock_path, rendered)
    written = [request.relpath(lock_path)]
    if attrs["explicit"]:
        for platform in platforms:
            path = request.source_path(explicit_name(attrs["lockfile"], platform))
            request.write_source(path, lf.render_explicit(lockfile, platform).encode())
            written.append(request.relpath(path))
    return LockOutcome(written=tuple(written))


# the scheme of a locked package's URL, for the scheme of the channel that listed it: a channel's
# repodata names its packages' base URL (CEP 15 `info.base_url`, e.g. a CDN), so any host, but an
# http(s) channel never a local file, another protocol or (from https) plain http
_PACKAGE_SCHEMES = {"https": ("https",), "http": ("https", "http"), "file": ("https", "http", "file")}


def _check_records(records, platform: str, where: str) -> None:
    """Every solved record must be an entry the lock reader of `hb build` takes (lockread.conda_entry:
    name, version and build those of its file name, one clean file name, sha256 and md5 hex), with a
    URL of a scheme its channel may name. What a channel serves is outside data: a record failing
    this is an error naming the channel, before anything is written (it was written into the lock,
    and `hb build` then refused the lock, or fetched a file:// URL an http channel chose)."""
    from urllib.parse import urlsplit

    from .lockread import LockReadError, conda_entry

    for record in records:
        channel, url = str(record.channel or ""), str(record.url)
        try:
            if record.md5 is None:
                raise LockReadError(f"{record.file_name!r} has no md5 (conda-lock.yml records one per package)")
            conda_entry(record.name.normalized, str(record.version), str(record.build), url, record.md5.hex(),
                        record.sha256.hex() if record.sha256 else None, platform)
            allowed = _PACKAGE_SCHEMES.get(urlsplit(channel).scheme, ("https",))
            if urlsplit(url).scheme not in allowed:
                raise LockReadError(f"{record.file_name!r} is served from {url!r}: a package of this channel must "
                                    f"be an {' or '.join(allowed)} URL")
        except LockReadError as exc:
            raise AnalysisError(f"{where}the channel {channel!r} lists a package for {platform} that cannot be "
                                f"locked: {exc.message}",
                                hint="the channel's repodata is wrong or hostile: fix or drop the channel "
                                     "(nothing was written)") from None


def _read_back(rendered: bytes, packages, platforms, where: str) -> None:
    """The lock about to be written, read with `hb build`'s own reader (lockread), must give back
    every entry as it was made (name, version, build, URL, sha256): a lock `hb lock` writes is one
    `hb build` reads, the same, whatever strings the channels and the index put into it."""
    import tempfile

    from .lockread import LockReadError, read_lock, select

    with tempfile.TemporaryDirectory(prefix="hb-lock-") as tmp:
        path = pathlib.Path(tmp) / "conda-lock.yml"
        path.write_bytes(rendered)
        read = set()
        try:
            lock = read_lock(path)
            for platform in platforms:
                conda, wheels = select(lock, platform)
                read |= {(platform, "conda", e.package.name, e.package.version, e.package.build, e.package.url,
                          e.package.sha256) for e in conda}
                read |= {(platform, "pip", e.package.name, e.package.version, "", e.package.url,
                          e.package.sha256) for e in wheels}
        except LockReadError as exc:
            raise AnalysisError(f"{where}the lock made from the channels and the index would not be read by "
                                f"`hb build`: {exc.message} (line {exc.line})",
                                hint="an entry comes from a wrong or hostile channel or index (nothing was "
                                     "written)") from None
    made = {(p.platform, p.manager, p.name, p.version, p.build or "" if p.manager == "conda" else "", p.url,
             p.hash.sha256) for p in packages}
    if read != made:
        first = sorted(made ^ read, key=repr)[0]
        raise AnalysisError(f"{where}the lock made from the channels and the index reads back otherwise than "
                            f"written: {first!r} (nothing was written)")


def repodata_limits(settings):
    """solve.RepodataLimits from hermetic.toml's [conda] repodata_timeout_s and max_repodata_mb."""
    from .solve import DEFAULT_MAX_REPODATA_MB, DEFAULT_REPODATA_TIMEOUT_S, RepodataLimits

    timeout_s, max_mb = _positive_settings(settings, repodata_timeout_s=DEFAULT_REPODATA_TIMEOUT_S,
                                           max_repodata_mb=DEFAULT_MAX_REPODATA_MB)
    return RepodataLimits(timeout_s, max_mb << 20, "[conda] in hermetic.toml")


def uv_limits(settings):
    """uv_run.UvLimits from hermetic.toml's [conda] uv_timeout_s and uv_max_memory_mb."""
    from .uv_run import DEFAULT_UV_MAX_MEMORY_MB, DEFAULT_UV_TIMEOUT_S, UvLimits

    timeout_s, max_mb = _positive_settings(settings, uv_timeout_s=DEFAULT_UV_TIMEOUT_S,
                                           uv_max_memory_mb=DEFAULT_UV_MAX_MEMORY_MB)
    return UvLimits(timeout_s, max_mb, "[conda] uv_timeout_s, uv_max_memory_mb in hermetic.toml")


def _positive_settings(settings, **defaults: int) -> tuple[int, ...]:
    """The values of hermetic.toml's [conda] keys named in `defaults` (each its default where unset), in
    that order; AnalysisError for one that is not a positive integer."""
    section = settings.extra.get("conda", {})
    values = []
    for key, default in defaults.items():
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AnalysisError(f"[conda] {key} in hermetic.toml must be a positive integer, not {value!r}",
                                hint=f"the default is {default}")
        values.append(value)
    return tuple(values)


def _rel(label) -> str:
    return f"{label.package}/{label.name}" if label.package else label.name


@dataclass(frozen=True)
class _PipJob:
    platform: str
    target: pypi.WheelTarget
    provided: dict
    requirements: tuple  # the pip: lines of the platform
    remaining: tuple  # those uv resolves (the others a conda package provides)
    run: uv_run.UvRun | None  # None where conda provides every requirement


def _start_pip(request, speculation, requirements, records, platform: str, virtual_packages, preferences,
               indexes: tuple[str, ...] = ()) -> _PipJob:
    """Start (or take over the early run of) the uv resolution of one platform's pip requirements
    against its solved conda side."""
    from . import pypi, uv_run
    where = f"{request.label}: "
    python = next((r for r in records if r.name.normalized == "python"), None)
    if python is None:
        first = requirements[0]
        raise AnalysisError(f"{where}the pip section needs a conda `python` in the environment for {platform}",
                            location=Location(first.path, first.line), hint="add `- python 3.11.*` to dependencies")
    target = pypi.wheel_target(platform, virtual_packages, str(python.version), where)
    provided = pypi.conda_provided(records)
    remaining = pypi.without_conda_provided(requirements, provided, target, where)
    run = None
    if remaining:
        inputs = pypi.uv_inputs(remaining, target, provided, preferences, indexes)
        run = speculation.take(inputs) or uv_run.UvRun(inputs, request.state_dir() / "uv-cache",
                                                       uv_limits(request.settings))
    return _PipJob(platform, target, provided, tuple(requirements), tuple(remaining), run)


def _finish_pip(request, jobs: list[_PipJob]):
    """conda-lock `manager: pip` entries of every platform, with their dependencies read from the
    wheels' metadata (fetched once for all platforms); errors in platform order."""
    from . import pypi, pypi_deps
    where = f"{request.label}: "
    resolved = [(job, pypi.resolved_wheels(job.run.result(), list(job.remaining), job.target, job.provided, where,
                                           job.run.inputs.indexes)
                 if job.run is not None else []) for job in jobs]
    cache = pypi_deps.MetadataCache(request.state_dir() / "pypi-metadata")
    metadata = pypi_deps.fetch_metadata([w for _, wheels in resolved for w in wheels], cache, where)
    out = []
    for job, wheels in resolved:
        env = pypi_deps.marker_environment(job.platform, job.target.python_version)
        present = {w.name for w in wheels} | set(job.provided)
        deps = pypi_deps.platform_dependencies({w.name: metadata[w.sha256] for w in wheels},
                                               pypi.root_extras(list(job.requirements)), env, present)
        out.extend(pypi.locked_wheel_dependency(dataclasses.replace(w, dependencies=tuple(deps[w.name].items())),
                                                job.platform) for w in wheels)
    return out


def explicit_name(lockfile: str, platform: str) -> str:
    """conda-<platform>.lock beside conda-lock.yml; <stem>.<platform>.lock beside any other name."""
    if lockfile == "conda-lock.yml":
        return f"conda-{platform}.lock"
    stem = lockfile[:-4] if lockfile.endswith((".yml", ".yaml")) else lockfile
    stem = stem[:-1] if stem.endswith(".") else stem
    return f"{stem}.{platform}.lock"


def _channel_urls(request, channels) -> list[str]:
    """Channel URLs to solve against; `//pkg:name` labels of conda_channel targets are built first."""
    urls = []
    for channel in channels:
        if is_channel_label(channel):
            label = Label.parse(channel, request.label.package)
            outputs = request.build([label])[str(label)]
            urls.append(outputs[0].as_uri())
        else:
            urls.append(channel)
    return urls


conda_lock = rule(
    "conda_lock",
    _conda_lock_impl,
    attrs={
        "environment": attr.label(default="environment.yml", allow_files=True, doc="the environment.yml"),
        "platforms": attr.string_list(doc="platforms to lock (default: the workspace's platforms)"),
        "channels": attr.string_list(doc="channels (URLs or conda_channel labels); default: the file's own"),
        "virtual_packages": attr.string_list_dict(
            doc="platform -> virtual packages (e.g. ['__glibc=2.17', '__cuda=12.4']); exactly these are used"),
        "cuda": attr.string(doc="GPU variant: solve with the __cuda virtual package at this version (e.g. '12.4') "
                            "on linux platforms, so CUDA builds win; images of it get the NVIDIA runtime settings"),
        "extra_environments": attr.label_list(
            allow_files=True, doc="more environment files merged on top of `environment`, as "
                                  "`conda-lock -f environment.yml -f environment.gpu.yml` (e.g. a GPU variant's extra pip "
                                  "packages)"),
        "lockfile": attr.string(default="conda-lock.yml", doc="the unified lock file to write, in this package"),
        "explicit": attr.bool(default=True, doc="also write explicit conda-<platform>.lock files"),
        "pip_index_url": attr.string(doc="the index uv resolves the pip: section from instead of PyPI (a PEP 503 "
                                     "simple index URL; credentials from your netrc)"),
        "pip_extra_index_urls": attr.string_list(doc="indexes uv also resolves from, before the main one (e.g. "
                                                 "https://download.pytorch.org/whl/cu121); a project found on "
                                                 "one of them is taken from that index only (uv's first-index)"),
    },
    doc="Lock an environment.yml per platform (`hb lock`). `hb build` reads the committed lock only.",
    lock=_lock,
    source_deps=_channel_targets,
)
