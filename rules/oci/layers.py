"""The layer action: a directory tree (a staged environment, a base rootfs) -> tar layers.

The action reads the tree straight from the CAS (no copy into a sandbox). Every layer is also cached
on its own, by the digest of exactly the entries it holds: when one package of an environment is
bumped, or a GPU environment shares packages with a CPU one, the unchanged layers are not written
again, they are taken from the cache byte for byte.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from hermetic_build.api import File, Provider, loads_bounded, register_action_kind

from .split import FINAL_LAYER, LayerGroup, env_groups, layer_entries, tree_entries
from .tarlayer import FORMAT_VERSION, LayerBlob, compressor_identity, write_layer

DEFAULT_MAX_LAYERS = 100  # overlayfs and Docker stop near 125 layers


@dataclass(frozen=True)
class OciLayersInfo(Provider):
    """Layers in image order: `index` (layers.json: diff_id, digest, size, packages per layer) and
    `blobs` (a directory of the compressed layers, named by their sha256 hex)."""

    index: File
    blobs: File


def declare_layers(ctx, tree: File, *, root: str, split: str, platform: str, max_layers: int = DEFAULT_MAX_LAYERS,
                   compression: str = "gzip", level: int | None = None, name: str = "layers") -> OciLayersInfo:
    """Declare the action turning `tree` into layers; split = "conda-packages" or "single"."""
    level = level if level is not None else (6 if compression == "gzip" else 3)
    index = ctx.declare_file(f"{name}.json", internal=True)
    blobs = ctx.declare_directory(f"{name}", internal=True)
    ctx.actions.declare(
        mnemonic="OciLayers", kind="oci.layers", inputs=[tree], outputs=[index, blobs], platform=platform,
        params={"root": root.strip("/"), "split": split, "max_layers": max_layers, "compression": compression,
                "level": level, "epoch": ctx.settings.source_date_epoch, "tree": tree.path,
                "compressor": compressor_identity(compression)},  # the bytes depend on the libraries' versions
        description=f"OciLayers {ctx.label} ({split}, {compression})",
    )
    return OciLayersInfo(index, blobs)


# canonical_json's bytes (sorted keys, no spaces, UTF-8) without its walk looking for floats: the key is
# built here from strings and ints only, and a layer has thousands of entries
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _group_key(entries, params) -> str:
    encoded = [[path, e.kind, e.mode, str(e.digest) if e.digest and e.kind == "file" else (e.target or "")]
               for path, e in entries]
    return blake3(_KEY_ENCODER.encode({"v": FORMAT_VERSION, "compression": params["compression"],
                                       "compressor": compressor_identity(params["compression"]),
                                       "level": int(params["level"]), "epoch": int(params["epoch"]),
                                       "entries": encoded}).encode()).hexdigest()


def _run_layers(execution) -> None:
    params = execution.params
    store = execution.store
    tree_file = next(f for f in execution.action.inputs if f.path == params["tree"])
    entries = tree_entries(store, execution.input_tree(tree_file))
    if params["split"] == "conda-packages":
        groups = env_groups(store, entries, params["max_layers"])
    else:
        paths = tuple(sorted(p for p, e in entries.items()))
        groups = [LayerGroup("rootfs", (), paths, sum(e.digest.size for e in entries.values() if e.kind == "file"))]
    index_out, blobs_out = (execution.path(f) for f in execution.action.outputs)
    blobs_out.mkdir(parents=True, exist_ok=True)
    tmp = execution.sandbox_dir / "tmp"

    def build(i_group):
        i, group = i_group
        layer_items = layer_entries(group.paths, entries, params["root"])
        key = _group_key(layer_items, params)
        alias = f"oci-layer/{FORMAT_VERSION}:{key}"
        meta_path = tmp / f"meta-{i}.json"
        if execution.recall_alias(alias, meta_path):
            blob = LayerBlob.from_json(loads_bounded(meta_path.read_bytes(), f"the cached layer record {alias}"))
            dest = blobs_out / blob.digest.split(":", 1)[1]
            if dest.exists():
                return blob, True
            if store.fetch_file(blob.blake3, dest):  # verified as it is copied
                execution.note_written(dest, blob.blake3)
                return blob, True
        part = tmp / f"layer-{i}.part"
        blob = write_layer(store.open_blob, layer_items, part, epoch=params["epoch"],
                           compression=params["compression"], level=params["level"])
        dest = blobs_out / blob.digest.split(":", 1)[1]
        os.replace(part, dest)
        # its BLAKE3 was computed from the bytes as they were written: the collector need not read it again
        execution.note_written(dest, blob.blake3)
        # not fsynced: it is only read through the alias, which treats a lost or torn blob as a miss
        meta = store.put_blob(json.dumps(blob.to_json(), sort_keys=True).encode(), fsync=False)
        return blob, (alias, meta)

    workers = min(len(groups), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # largest first: no big layer left alone at the end
        largest_first = sorted(range(len(groups)), key=lambda i: -groups[i].size)
        futures = {i: pool.submit(build, (i, groups[i])) for i in largest_first}
        results = [futures[i].result() for i in range(len(groups))]
    layers, reused = [], 0
    for group, (blob, cached) in zip(groups, results):
        if cached is True:
            reused += 1
        else:
            execution.remember_alias(*cached)
        layers.append({**blob.to_json(), "name": group.name, "packages": list(group.packages),
                       "files": len(group.paths), "content_size": group.size})
    index_out.write_text(json.dumps({"layers": layers}, sort_keys=True, indent=1) + "\n")
    execution.stdout += (f"{len(layers)} layers ({reused} reused from the layer cache); "
                         f"{sum(layer['size'] for layer in layers)} bytes\n").encode()


def read_layers(path) -> list[dict]:
    return loads_bounded(Path(path).read_bytes(), str(path))["layers"]


# 2: parallel gzip (FORMAT_VERSION 2); 3: small packages bucketed by name; 4: libdeflate (FORMAT_VERSION 3);
# 5: a wheel's RECORD read row by row as csv wrote it and its METADATA header as the stage checked it
# (split.py): layers made by a reader that a line separator or a body's Name could mislead are not reused
register_action_kind("oci.layers", "5", _run_layers, stage_inputs=False)

__all__ = ["DEFAULT_MAX_LAYERS", "FINAL_LAYER", "OciLayersInfo", "declare_layers", "read_layers"]
