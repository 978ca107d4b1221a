"""Solving with py-rattler, with exactly the declared virtual packages."""

from __future__ import annotations

import contextlib
import pathlib
import resource
from dataclasses import dataclass

from hermetic_build.api import AnalysisError

from .spec import parse_virtual_package

DEFAULT_REPODATA_TIMEOUT_S = 600
DEFAULT_MAX_REPODATA_MB = 4096


@dataclass(frozen=True)
class RepodataLimits:
    """Bounds on what the channels' servers may cost a solve: each request (a repodata file, a shard)
    ends within timeout_s, body included (py-rattler's client has no other timeout: a server sending
    a byte now and then held `hb lock` for ever), and no file rattler writes into its repodata cache
    grows past max_file_bytes (an endless repodata.json filled the disk at ~150 MB/s)."""

    timeout_s: int = DEFAULT_REPODATA_TIMEOUT_S
    max_file_bytes: int = DEFAULT_MAX_REPODATA_MB << 20
    where: str = "[conda] in hermetic.toml"  # where the limits were set, for the hint


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """RLIMIT_FSIZE of this process lowered to `limit` (a write past it fails with EFBIG: Python ignores
    SIGXFSZ), restored afterwards. Only the soft limit changes, so it can be raised back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    lowered = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= lowered:
        yield
        return
    resource.setrlimit(resource.RLIMIT_FSIZE, (lowered, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def solve(channels: list[str], specs: list[str], platform: str, virtual_packages: list[str],
          cache_dir: pathlib.Path, locked: list[tuple[str, str, str]] = (), where: str = "",
          limits: RepodataLimits = RepodataLimits()):
    """Solve `specs` for `platform`; `locked` (name, version, build) are preferred where possible."""
    import rattler
    from rattler import BuildString, GenericVirtualPackage, PackageName, Version
    from rattler.networking import Client

    vpkgs = []
    for item in virtual_packages:
        name, version = parse_virtual_package(item)
        vpkgs.append(GenericVirtualPackage(PackageName(name), Version(version), BuildString("0")))
    # the default client's middlewares (retries, credentials, OCI, GCS, S3), with a timeout
    gateway = rattler.Gateway(cache_dir=str(cache_dir), client=Client.default_client(timeout=limits.timeout_s))

    async def run():
        locked_records = []
        if locked:
            query = await gateway.query(channels, [platform, "noarch"], [name for name, _, _ in locked], recursive=False)
            wanted = set(locked)
            for records in query:
                locked_records.extend(r for r in records
                                      if (r.name.normalized, str(r.version), str(r.build)) in wanted)
        return await rattler.solve(sources=channels, specs=specs, gateway=gateway, platforms=[platform, "noarch"],
                                   virtual_packages=vpkgs, locked_packages=locked_records)

    try:
        import asyncio

        with _file_size_limit(limits.max_file_bytes):
            return asyncio.run(run())
    except Exception as exc:  # rattler's SolverError / gateway errors carry the explanation
        if type(exc).__name__ not in ("SolverError", "FetchRepoDataError", "GatewayError", "ChannelError",
                                      "InvalidMatchSpecError", "ParseMatchSpecError", "IoError"):
            raise
        text = str(exc)
        hint = "check the dependency specs and the channels"
        if "File too large" in text:
            hint = (f"a channel served a repodata file over {limits.max_file_bytes >> 20} MiB: if the channel is "
                    f"yours and that is right, raise max_repodata_mb ({limits.where})")
        elif "timed out" in text:
            hint = (f"a channel's server did not answer a request within {limits.timeout_s} s: if it is slow but "
                    f"right, raise repodata_timeout_s ({limits.where})")
        raise AnalysisError(f"{where}cannot solve the environment for {platform}:\n{text}", hint=hint) from None
