"""Base images pinned by digest: an image in a registry (oci_pull, fetched by hb's own registry client
into the CAS) or an OCI image layout in the workspace (oci_layout_base). Every blob is checked against
its sha256 before it is used; the base's config (Env, Cmd, history) carries over into the image."""

from __future__ import annotations

import hashlib
import json
import os
import re

from hermetic_build.api import (
    ActionFailed,
    DefaultInfo,
    RegistryClient,
    RegistryError,
    RegistryRef,
    attr,
    register_action_kind,
    rule,
)

from .image import OciBaseInfo
from .layers import OciLayersInfo
from .layout import OCI_INDEX, LayoutError, read_layout

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_PLATFORM = {"architecture": "amd64", "os": "linux"}


def _declare_import(ctx, kind: str, inputs, params: dict, description: str, hints: dict | None = None):
    index = ctx.declare_file("layers.json", internal=True)
    blobs = ctx.declare_directory("layers", internal=True)
    config = ctx.declare_file("config.json", internal=True)
    ctx.actions.declare(mnemonic="OciBaseImport", kind=kind, inputs=inputs, outputs=[index, blobs, config],
                        params=params, description=description, hints=hints)
    return OciLayersInfo(index, blobs), config


def _write_outputs(execution, manifest: bytes, config: bytes, fetch_layer) -> None:
    """fetch_layer(descriptor, dest) writes one layer blob; its sha256 is checked here."""
    index_out, blobs_out, config_out = (execution.path(f) for f in execution.action.outputs)
    blobs_out.mkdir(parents=True, exist_ok=True)
    m = json.loads(manifest)
    if "sha256:" + hashlib.sha256(config).hexdigest() != m["config"]["digest"]:
        raise ActionFailed("the base image's config does not match its digest")
    diff_ids = json.loads(config).get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(m["layers"]):
        raise ActionFailed(f"the base image has {len(m['layers'])} layers but {len(diff_ids)} diff_ids")
    layers = []
    for descriptor, diff_id in zip(m["layers"], diff_ids):
        digest = descriptor["digest"]
        if not _DIGEST.match(digest):
            raise ActionFailed(f"base layer digest {digest!r} is not sha256")
        dest = blobs_out / digest.split(":", 1)[1]
        fetch_layer(descriptor, dest)
        sha = hashlib.sha256()
        with open(dest, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        if "sha256:" + sha.hexdigest() != digest or os.path.getsize(dest) != descriptor["size"]:
            raise ActionFailed(f"base layer {digest} does not match its digest; nothing was stored")
        layers.append({"digest": digest, "diff_id": diff_id, "size": descriptor["size"],
                       "mediaType": descriptor["mediaType"], "from_base": True, "name": "base"})
    index_out.write_text(json.dumps({"layers": layers}, sort_keys=True, indent=1) + "\n")
    config_out.write_bytes(config)


# ----- a registry image pinned by digest --------------------------------------------------------------
def _oci_pull_impl(ctx):
    try:
        ref = RegistryRef.parse(ctx.attr.image)
    except ValueError as exc:
        ctx.fail(f"image = {ctx.attr.image!r}: {exc}")
    if not ref.reference or not _DIGEST.match(ref.reference):
        ctx.fail(f"image = {ctx.attr.image!r} is not pinned by digest",
                 hint="write it as host/repository@sha256:<64 hex> (e.g. from `skopeo inspect`)")
    # where to find it is a hint, not part of the key: the same digest from a mirror is the same image
    layers, config = _declare_import(ctx, "oci.pull", [], {"digest": ref.reference, "repository": ref.repository},
                                     f"OciPull {ctx.attr.image}", hints={"host": ref.host, "secure": ref.secure})
    return [DefaultInfo(files=()), OciBaseInfo((layers,), config, f"{ref.host}/{ref.repository}", ref.reference)]


def _pull(execution) -> None:
    params, hints = execution.params, execution.hints
    client = RegistryClient(hints["host"], secure=hints["secure"], cafile=os.environ.get("HB_REGISTRY_CA"))
    repo = params["repository"]
    try:
        got = client.get_manifest(repo, params["digest"])  # checked against the digest by the client
        if got is None:
            raise ActionFailed(f"{hints['host']}/{repo}@{params['digest']} does not exist")
        manifest, _ = got
        parsed = json.loads(manifest)
        if parsed.get("mediaType") == OCI_INDEX or "manifests" in parsed:
            entry = next((m for m in parsed["manifests"]
                          if {k: m.get("platform", {}).get(k) for k in _PLATFORM} == _PLATFORM), None)
            if entry is None:
                raise ActionFailed(f"{params['digest']} is an index without a linux/amd64 image")
            manifest, _ = client.get_manifest(repo, entry["digest"])
        config = client.get_blob(repo, json.loads(manifest)["config"]["digest"])

        def fetch(descriptor, dest):
            with open(dest, "wb") as out:
                client.get_blob(repo, descriptor["digest"], stream_to=lambda resp: _copy(resp, out))

        _write_outputs(execution, manifest, config or b"", fetch)
    except RegistryError as exc:
        raise ActionFailed(f"pulling {hints['host']}/{repo}@{params['digest']}: {exc}") from None


def _copy(response, out) -> bool:
    while chunk := response.read(1 << 20):
        out.write(chunk)
    return True


# ----- an OCI layout in the workspace -----------------------------------------------------------------
def _layout_base_impl(ctx):
    files = ctx.files("srcs")
    index = [f for f in files if f.basename == "index.json"]
    if len(index) != 1:
        ctx.fail(f"srcs must hold exactly one OCI layout (found {len(index)} index.json files)",
                 hint='srcs = glob(["my-base/**"])')
    if not _DIGEST.match(ctx.attr.digest):
        ctx.fail(f"digest = {ctx.attr.digest!r} is not a sha256 digest", hint="pin the base by its manifest digest")
    root = index[0].path.rsplit("/", 1)[0] if "/" in index[0].path else ""
    layers, config = _declare_import(ctx, "oci.layout_import", files, {"layout": root, "digest": ctx.attr.digest},
                                     f"OciLayoutImport {ctx.label}")
    return [DefaultInfo(files=()), OciBaseInfo((layers,), config, "", ctx.attr.digest)]


def _layout_import(execution) -> None:
    params = execution.params
    try:
        image = read_layout(execution.execroot / params["layout"], digest=params["digest"])
    except LayoutError as exc:
        raise ActionFailed(f"{exc} (the base is pinned to {params['digest']})") from None

    def fetch(descriptor, dest):
        source = image.blob(descriptor["digest"])
        if not source.exists():
            raise ActionFailed(f"layout {params['layout']}: layer {descriptor['digest']} is missing")
        os.link(source, dest)

    _write_outputs(execution, image.manifest, image.config, fetch)


register_action_kind("oci.pull", "1", _pull, local_only=True)  # network
register_action_kind("oci.layout_import", "1", _layout_import, local_only=True)  # a local layout

oci_pull = rule(
    "oci_pull",
    _oci_pull_impl,
    attrs={"image": attr.string(mandatory=True, doc="host/repository@sha256:<digest> (a tag alone is refused)")},
    doc="A base image from a registry, pinned by digest, pulled into the cache by hb's registry client.",
)

oci_layout_base = rule(
    "oci_layout_base",
    _layout_base_impl,
    attrs={
        "srcs": attr.label_list(mandatory=True, allow_files=True, doc='the layout\'s files: glob(["dir/**"])'),
        "digest": attr.string(mandatory=True, doc="the manifest digest the base is pinned to"),
    },
    doc="A base image from an OCI image layout in the workspace, pinned by manifest digest.",
)
