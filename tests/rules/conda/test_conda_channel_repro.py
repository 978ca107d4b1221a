"""conda_channel is bit-reproducible: two builds of the example channel, in two directories with
two empty caches, give byte-identical packages and repodata, and the normalised packages still pass
rattler's own reading of an archive and install."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time

import pytest
from support import REPO, Workspace

pytestmark = pytest.mark.slow


def _build_channel(base):
    root = base / "ws"
    root.mkdir(parents=True)
    (root / "hermetic.toml").write_text("")
    shutil.copytree(REPO / "examples" / "channel", root / "channel")
    ws = Workspace(root, base / "cache")
    out = json.loads(ws.hb("build", "--json", "//channel:test-channel", timeout=600).stdout)
    return root / out["targets"]["//channel:test-channel"][0]["path"]


def _digests(channel):
    return {str(p.relative_to(channel)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(channel.rglob("*")) if p.is_file()}


def test_two_clean_builds_give_identical_packages(tmp_path, channel_dir):
    time.sleep(1.1)  # a different second than the session's channel build: time stamps would show
    again = _build_channel(tmp_path / "b")
    first, second = _digests(channel_dir), _digests(again)
    packages = [p for p in first if p.endswith(".conda") or p.endswith(".tar.bz2")]
    assert len(packages) == 11, packages
    assert first == second, {p for p in first if first[p] != second.get(p)}


def test_normalised_packages_are_valid_for_rattler(channel_dir, tmp_path):
    import rattler
    from rattler import Config, Subdir

    noarch = [p for p in sorted((channel_dir / "noarch").glob("*.conda")) if p.name.startswith("hb-vocab-2")]
    records = []
    for archive in [*noarch, *sorted((channel_dir / "linux-64").glob("libhb-*.conda"))]:
        record = asyncio.run(rattler.RepoDataRecord.from_package_archive(str(archive)))
        index = json.loads((channel_dir / archive.parent.name / "repodata.json").read_text())
        listed = {**index.get("packages", {}), **index.get("packages.conda", {})}[archive.name]
        assert listed["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert "indexed_timestamp" not in listed and listed["timestamp"] == 0
        records.append(record)
    prefix = tmp_path / "prefix"
    asyncio.run(rattler.install(records, target_prefix=str(prefix), cache_dir=str(tmp_path / "pkgs"),
                                platform=Subdir("linux-64"), show_progress=False,
                                config=Config.from_toml("allow-hard-links = false\nallow-ref-links = false")))
    assert (prefix / "share/hb-vocab/vocab.txt").read_text().splitlines()[-1] == "token2000"
    assert (prefix / "lib/libhb.so.1").is_file()
