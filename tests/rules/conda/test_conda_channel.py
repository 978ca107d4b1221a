"""The test channel, built by hb's conda_channel rule from examples/channel/recipes."""

import json

import rattler.package_streaming as ps


def _names(channel_dir, subdir):
    repodata = json.loads((channel_dir / subdir / "repodata.json").read_text())
    packages = {**repodata.get("packages", {}), **repodata.get("packages.conda", {})}
    return sorted((p["name"], p["version"], p["build"]) for p in packages.values())


def test_channel_has_every_kind_of_package(channel_dir):
    linux = _names(channel_dir, "linux-64")
    noarch = _names(channel_dir, "noarch")
    osx = _names(channel_dir, "osx-arm64")
    assert {n for n, _, _ in linux} == {"libhb", "hb-hello", "python", "hb-accel"}
    assert sorted(b.split("_")[0] for n, _, b in linux if n == "hb-accel") == ["cpu", "cuda12"]
    assert [(n, v) for n, v, _ in noarch if n == "hb-vocab"] == [("hb-vocab", "1.0.0"), ("hb-vocab", "2.0.0")]
    assert {n for n, _, _ in noarch} == {"hb-config", "hb-vocab", "nlp-tok"}
    assert {n for n, _, _ in osx} == {"python", "hb-accel"}


def test_binary_and_text_prefix_placeholders(channel_dir, tmp_path):
    libhb = next((channel_dir / "linux-64").glob("libhb-*.conda"))
    ps.extract(str(libhb), str(tmp_path / "libhb"))
    paths = json.loads((tmp_path / "libhb" / "info" / "paths.json").read_text())["paths"]
    so = next(p for p in paths if p["_path"] == "lib/libhb.so.1")
    assert so["file_mode"] == "binary" and "placehold" in so["prefix_placeholder"]
    config = next((channel_dir / "noarch").glob("hb-config-*.conda"))
    ps.extract(str(config), str(tmp_path / "config"))
    entry = json.loads((tmp_path / "config" / "info" / "paths.json").read_text())["paths"][0]
    assert entry["file_mode"] == "text" and entry["_path"] == "etc/hb/config.txt"


def test_cuda_build_requires_cuda(channel_dir):
    repodata = json.loads((channel_dir / "linux-64" / "repodata.json").read_text())
    packages = {**repodata.get("packages", {}), **repodata.get("packages.conda", {})}
    cuda = next(p for p in packages.values() if p["build"].startswith("cuda12"))
    cpu = next(p for p in packages.values() if p["build"].startswith("cpu"))
    assert "__cuda >=12" in cuda["depends"] and cuda["build_number"] > cpu["build_number"]
