"""Base images pinned by digest: an image in a registry (oci_pull, fetched by hb's own registry client
into the CAS) or an OCI image layout in the workspace (oci_layout_base). Every blob is checked against
its sha256 before it is used; the base's config (Env, Cmd, history) carries over into the image."""

from __future__ import annotations

import hashlib
import json
import os

from hermetic_build.api import (
    ActionFailed,
    DefaultInfo,
    RegistryClient,
    RegistryError,
    RegistryRef,
    attr,
    loads_bounded,
    register_action_kind,
    rule,
)

from .image import OciBaseInfo
from .layers import OciLayersInfo
from .layout import OCI_INDEX, SHA256_DIGEST, LayoutError, read_layout

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
    m = loads_bounded(manifest, "the base image's manifest")
    if "sha256:" + hashlib.sha256(config).hexdigest() != m["config"]["digest"]:
        raise ActionFailed("the base image's config does not match its digest")
    parsed_config = loads_bounded(config, "the base image's config")
    _check_config(parsed_config)
    diff_ids = parsed_config.get("rootfs", {}).get("diff_ids", [])
    if not isinstance(m.get("layers"), list) or not all(isinstance(d, dict) for d in m["layers"]):
        raise ActionFailed("the base image's manifest has no list of layer descriptors")
    if len(diff_ids) != len(m["layers"]):
        raise ActionFailed(f"the base image has {len(m['layers'])} layers but {len(diff_ids)} diff_ids")
    layers = []
    for descriptor, diff_id in zip(m["layers"], diff_ids):
        digest = descriptor["digest"]
        if not SHA256_DIGEST.match(digest):
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


_STRING_LISTS = ("Env", "Entrypoint", "Cmd")
_STRINGS = ("User", "WorkingDir", "StopSignal")


def _check_config(config) -> None:
    """The base config's fields that images and `env_run` read, in the shapes the OCI image spec
    gives them, checked once here: the image's bytes are outside bytes, and a wrong shape would
    otherwise fail later, in another action, with a traceback."""
    if not isinstance(config, dict):
        raise ActionFailed("the base image's config is not a JSON object")
    rootfs = config.get("rootfs", {})
    diff_ids = rootfs.get("diff_ids", []) if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and SHA256_DIGEST.match(d) for d in diff_ids):
        raise ActionFailed("the base image's config: rootfs.diff_ids must be a list of sha256 digests")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ActionFailed("the base image's config: 'config' must be an object")
    for key in _STRING_LISTS:
        value = inner.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ActionFailed(f"the base image's config: config.{key} must be a list of strings")
    for key in _STRINGS:
        if inner.get(key) is not None and not isinstance(inner[key], str):
            raise ActionFailed(f"the base image's config: config.{key} must be a string")
    labels = inner.get("Labels")
    if labels is not None and not (isinstance(labels, dict)
                                   and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise ActionFailed("the base image's config: config.Labels must map strings to strings")


# ----- a registry image pinned by digest --------------------------------------------------------------
def _oci_pull_impl(ctx):
    try:
        ref = RegistryRef.parse(ctx.attr.image)
    except ValueError as exc:
        ctx.fail(f"image = {ctx.attr.image!r}: {exc}")
    if not ref.reference or not SHA256_DIGEST.match(ref.reference):
        ctx.fail(f"image = {ctx.attr.image!r} is not pinned by digest",
                 hint="write it as host/repository@sha256:<64 hex> (e.g. from `skopeo inspect`)")
    # where to find it is a hint, not part of the key: the same digest from a mirror is the same image
    layers, config = _declare_import(ctx, "oci.pull", [], {"digest": ref.reference, "repository": ref.repository},
                                     f"OciPull {ctx.attr.image}", hints={"host": ref.host, "secure": ref.secure})
    return [DefaultInfo(files=()), OciBaseInfo((layers,), config, f"{ref.host}/{ref.repository}", ref.reference)]


def _pull(execution) -> None:
    params, hints = execution.params, execution.hints
    # the host comes from a BUILD file: only a login for that host, never the environment's credentials
    client = RegistryClient(hints["host"], secure=hints["secure"], cafile=os.environ.get("HB_REGISTRY_CA"),
                            environment_credentials=False)
    repo = params["repository"]
    try:
        got = client.get_manifest(repo, params["digest"])  # checked against the digest by the client
        if got is None:
            raise ActionFailed(f"{hints['host']}/{repo}@{params['digest']} does not exist")
        manifest, _ = got
        parsed = loads_bounded(manifest, f"{hints['host']}/{repo}@{params['digest']}")
        if parsed.get("mediaType") == OCI_INDEX or "manifests" in parsed:
            entry = next((m for m in parsed["manifests"]
                          if {k: m.get("platform", {}).get(k) for k in _PLATFORM} == _PLATFORM), None)
            if entry is None:
                raise ActionFailed(f"{params['digest']} is an index without a linux/amd64 image")
            # the index is pinned, so what it names must be pinned too: a tag here would let the
            # registry answer with any manifest (get_manifest checks content against a digest only)
            manifest = _pinned_manifest(client, repo, entry.get("digest"))
        config_digest = loads_bounded(manifest, f"{hints['host']}/{repo}@{params['digest']}")["config"]["digest"]
        if not isinstance(config_digest, str) or not SHA256_DIGEST.match(config_digest):
            raise ActionFailed(f"the base image's config digest {str(config_digest)[:100]!r} is not sha256")
        config = client.get_blob(repo, config_digest)

        def fetch(descriptor, dest):
            size = descriptor.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ActionFailed(f"base layer {descriptor['digest']} has no valid size in its manifest")
            with open(dest, "wb") as out:
                client.get_blob(repo, descriptor["digest"], stream_to=lambda resp: _copy(resp, out, size), size=size)

        _write_outputs(execution, manifest, config or b"", fetch)
    except RegistryError as exc:
        raise ActionFailed(f"pulling {hints['host']}/{repo}@{params['digest']}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON of the wrong shape
        raise ActionFailed(f"{hints['host']}/{repo}@{params['digest']} is not a readable image: "
                           f"{type(exc).__name__}: {exc}") from None


def _pinned_manifest(client, repo: str, digest) -> bytes:
    if not isinstance(digest, str) or not SHA256_DIGEST.match(digest):
        raise ActionFailed(f"the pinned index names its linux/amd64 manifest by {str(digest)[:100]!r}, not by a "
                           "sha256 digest")
    got = client.get_manifest(repo, digest)  # checked against the digest by the client
    if got is None:
        raise ActionFailed(f"the manifest {digest} that the pinned index names does not exist")
    return got[0]


def _copy(response, out, size: int) -> bool:
    """The layer's bytes, at most its descriptor's size + 1 (one more byte than the manifest says is
    enough to know the blob is not that layer; an endless body must not fill the disk)."""
    written = 0
    while written <= size and (chunk := response.read(min(1 << 20, size + 1 - written))):
        out.write(chunk)
        written += len(chunk)
    return True


# ----- an OCI layout in the workspace -----------------------------------------------------------------
def _layout_base_impl(ctx):
    files = ctx.files("srcs")
    index = [f for f in files if f.basename == "index.json"]
    if len(index) != 1:
        ctx.fail(f"srcs must hold exactly one OCI layout (found {len(index)} index.json files)",
                 hint='srcs = glob(["my-base/**"])')
    if not SHA256_DIGEST.match(ctx.attr.digest):
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
        try:
            source = image.blob(descriptor["digest"])
        except LayoutError as exc:
            raise ActionFailed(str(exc)) from None
        if not source.is_file():
            raise ActionFailed(f"layout {params['layout']}: layer {descriptor['digest']} is missing")
        os.link(source, dest)

    try:
        _write_outputs(execution, image.manifest, image.config, fetch)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON of the wrong shape
        raise ActionFailed(f"layout {params['layout']}: not a readable image: {type(exc).__name__}: {exc}") from None


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
