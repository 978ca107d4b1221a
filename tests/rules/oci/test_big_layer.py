"""End-to-end: a layer of many 1 MiB gzip blocks (one file larger than a block, blocks spanning
file boundaries) built by `hb build`, checked by the real tools: skopeo (blob digests), umoci
(diff_ids), gzip -t; rebuilt in a fresh cache to the same digests."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess

import pytest
from support import Workspace, require_tool

pytestmark = pytest.mark.slow


def _workspace(root, cache) -> Workspace:
    ws = Workspace(root, cache)
    root.mkdir()
    ws.write("hermetic.toml", "")
    rng = random.Random(3)
    big = b"".join(rng.randbytes(4096) if rng.random() < 0.4 else b"repeated line of text\n" * 200
                   for _ in range(700))  # ~3.5 MiB, partly compressible
    (root / "big.bin").write_bytes(big)
    ws.write("small.txt", "small\n")
    ws.write("BUILD.hermetic", 'oci_files(name = "files", srcs = ["big.bin", "small.txt"], prefix = "/data")\n'
                               'oci_image(name = "img", layers = [":files"])\n')
    return ws


def _manifest(layout):
    index = json.loads((layout / "index.json").read_text())
    return json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())


def test_multi_block_layer_is_accepted_by_skopeo_umoci_and_gzip(tmp_path):
    ws = _workspace(tmp_path / "ws", tmp_path / "cache")
    ws.hb("build", "//:img", timeout=600)
    layout = ws.root / "hb-out/img"
    (layer,) = _manifest(layout)["layers"]
    blob = layout / "blobs/sha256" / layer["digest"].split(":")[1]
    assert layer["size"] > 1 << 20  # more than one compressed block's worth
    subprocess.run(["gzip", "-t", str(blob)], check=True)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"].split(":")[1]
    subprocess.run([require_tool("skopeo"), "copy", f"oci:{layout}:latest", f"oci:{tmp_path / 'copy'}:latest"],
                   check=True, capture_output=True)
    bundle = tmp_path / "bundle"
    subprocess.run([require_tool("umoci"), "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
                   check=True, capture_output=True)
    assert (bundle / "rootfs/data/big.bin").read_bytes() == (ws.root / "big.bin").read_bytes()
    assert (bundle / "rootfs/data/small.txt").read_text() == "small\n"
    # a fresh cache elsewhere: the same layer and manifest digests
    again = _workspace(tmp_path / "ws2", tmp_path / "cache2")
    again.hb("build", "//:img", timeout=600)
    assert _manifest(again.root / "hb-out/img") == _manifest(layout)
