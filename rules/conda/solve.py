"""Solving with py-rattler, with exactly the declared virtual packages."""

from __future__ import annotations

import pathlib

from hermetic_build.api import AnalysisError

from .spec import parse_virtual_package


def solve(channels: list[str], specs: list[str], platform: str, virtual_packages: list[str],
          cache_dir: pathlib.Path, locked: list[tuple[str, str, str]] = (), where: str = ""):
    """Solve `specs` for `platform`; `locked` (name, version, build) are preferred where possible."""
    import rattler
    from rattler import BuildString, GenericVirtualPackage, PackageName, Version

    vpkgs = []
    for item in virtual_packages:
        name, version = parse_virtual_package(item)
        vpkgs.append(GenericVirtualPackage(PackageName(name), Version(version), BuildString("0")))
    gateway = rattler.Gateway(cache_dir=str(cache_dir))

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

        return asyncio.run(run())
    except Exception as exc:  # rattler's SolverError / gateway errors carry the explanation
        if type(exc).__name__ not in ("SolverError", "FetchRepoDataError", "GatewayError", "ChannelError",
                                      "InvalidMatchSpecError", "ParseMatchSpecError", "IoError"):
            raise
        raise AnalysisError(f"{where}cannot solve the environment for {platform}:\n{exc}",
                            hint="check the dependency specs and the channels") from None
