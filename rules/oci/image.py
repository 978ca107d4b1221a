"""oci_image: base layers + per-package environment layers + app layers + config -> an OCI image
layout at hb-out/<package>/<name>/, with a manifest digest that depends only on its inputs.

oci_docker_archive: the same image as a tarball `docker load` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from hermetic_build.api import (
    ActionFailed,
    DefaultInfo,
    File,
    MissingBlob,
    Provider,
    attr,
    loads_bounded,
    register_action_kind,
    rule,
    small_blob,
    walk_tree,
)

from .layers import DEFAULT_MAX_LAYERS, OciLayersInfo, declare_layers
from .layout import (
    MAX_JSON_BYTES,
    OCI_CONFIG,
    OCI_MANIFEST,
    LayoutError,
    canonical,
    epoch_rfc3339,
    read_layout,
    sha256_of,
    write_docker_archive,
    write_layout,
)
from .publish import default_repo_tags, load_image, push_image

CUDA_ENV_DRIVER_CAPABILITIES = "compute,utility"
# conda platform -> OCI platform
PLATFORMS = {
    "linux-64": {"architecture": "amd64", "os": "linux"},
    "linux-aarch64": {"architecture": "arm64", "os": "linux"},
    "linux-ppc64le": {"architecture": "ppc64le", "os": "linux"},
}


@dataclass(frozen=True)
class OciBaseInfo(Provider):
    """A base image: its layer sets in order and, for a pulled image, its config (Env, Cmd, history)."""

    layers: tuple[OciLayersInfo, ...]
    config: File | None = None
    reference: str = ""  # e.g. registry/repo@sha256:... for the base.name/base.digest annotations
    manifest_digest: str = ""
    packages: tuple = ()  # sbom.SbomPackage of what the base holds (its layer_set counts in `layers`)
    lockfiles: tuple[File, ...] = ()  # the lock files that pin them


@dataclass(frozen=True)
class OciImageInfo(Provider):
    layout: File
    ref_name: str
    repo_tags: tuple[str, ...]
    # what the SBOM and provenance need: each layer set's layers.json in image order, the packages
    # (sbom.SbomPackage) with the index of the set holding them, the base image by reference and digest
    layer_indexes: tuple[File, ...] = ()
    packages: tuple = ()
    base_reference: str = ""
    base_digest: str = ""
    lockfiles: tuple[File, ...] = ()  # the lock files the packages come from (source files)


def required_dep(ctx, attr_name: str, provider, what: str):
    """(the target `attr_name` names, its `provider`), or an analysis error saying it is not a `what`."""
    dep = ctx.dep(attr_name)
    info = dep.get(provider) if dep is not None else None
    if info is None:
        ctx.fail(f"{attr_name} = {getattr(ctx.attr, attr_name)} is not {what}")
    return dep, info


def _oci_image_impl(ctx):
    from rules.conda.env import CondaEnvInfo  # the one rule family images know how to layer

    from .sbom import conda_packages

    layer_sets: list[OciLayersInfo] = []
    packages = []
    lockfiles: list[File] = []
    base_config = None
    base = None
    annotations = {}
    base_dep = ctx.dep("base")
    if base_dep is not None:
        base = base_dep.get(OciBaseInfo)
        if base is None:
            ctx.fail(f"base = {base_dep.label} is not a base image",
                     hint="use a deb_base, oci_pull or oci_layout_base target (or leave base out for scratch)")
        packages += base.packages
        lockfiles += base.lockfiles
        layer_sets.extend(base.layers)
        base_config = base.config
        if base.reference:
            annotations["org.opencontainers.image.base.name"] = base.reference
        if base.manifest_digest:
            annotations["org.opencontainers.image.base.digest"] = base.manifest_digest
    platform = ctx.attr.platform or None
    env_vars: dict[str, str] = {}
    labels: dict[str, str] = {}
    env_dep = ctx.dep("env")
    if env_dep is not None:
        env = env_dep.get(CondaEnvInfo)
        if env is None:
            ctx.fail(f"env = {env_dep.label} is not a conda_env target")
        platform = platform or env.platform
        packages += conda_packages(env, len(layer_sets))
        lockfiles.append(env.lockfile)
        layer_sets.append(declare_layers(ctx, env.tree, root=env.prefix, split="conda-packages", platform=env.platform,
                                         max_layers=ctx.attr.max_layers, compression=ctx.attr.compression,
                                         name="env-layers"))
        env_vars.update({"PATH": f"{env.prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "CONDA_PREFIX": env.prefix})
        annotations["dev.hermetic-build.lock.file"] = env.lockfile.path
        if env.content_hash:
            annotations["dev.hermetic-build.lock.content-hash"] = env.content_hash
            labels["dev.hermetic-build.lock.content-hash"] = env.content_hash
        if env.cuda:
            env_vars.update({"NVIDIA_VISIBLE_DEVICES": "all",
                             "NVIDIA_DRIVER_CAPABILITIES": CUDA_ENV_DRIVER_CAPABILITIES,
                             "NVIDIA_REQUIRE_CUDA": f"cuda>={env.cuda}",
                             "CUDA_VERSION": env.cuda})
            labels["com.nvidia.cuda.version"] = env.cuda
            labels["dev.hermetic-build.cuda"] = env.cuda
    for dep in ctx.deps("layers"):
        info = dep.get(OciLayersInfo)
        if info is None:
            ctx.fail(f"layers: {dep.label} provides no layers", hint="use oci_files targets")
        layer_sets.append(info)
    if not layer_sets:
        ctx.fail("an image needs at least one layer: set base, env or layers")
    platform = platform or "linux-64"
    if platform not in PLATFORMS:
        ctx.fail(f"platform {platform!r} has no OCI image platform", hint=f"use one of {', '.join(PLATFORMS)}")
    env_vars.update(ctx.attr.env_vars)
    labels.update(ctx.attr.labels)
    annotations.update({
        "org.opencontainers.image.created": epoch_rfc3339(ctx.settings.source_date_epoch),
        "org.opencontainers.image.title": str(ctx.label),
        "org.opencontainers.image.ref.name": ctx.attr.tag,
    })
    annotations.update(ctx.attr.annotations)
    config = {k: v for k, v in {
        "Env": [f"{k}={v}" for k, v in env_vars.items()],
        "Entrypoint": list(ctx.attr.entrypoint) or None,
        "Cmd": list(ctx.attr.cmd) or None,
        "WorkingDir": ctx.attr.workdir or None,
        "User": ctx.attr.user or None,
        "Labels": dict(sorted(labels.items())) or None,
    }.items() if v is not None}
    layout = ctx.declare_directory(".")
    inputs = [f for s in layer_sets for f in (s.index, s.blobs)] + ([base_config] if base_config else [])
    ctx.actions.declare(
        mnemonic="OciImage", kind="oci.image", inputs=inputs, outputs=[layout], platform=platform,
        params={"layer_sets": [{"index": s.index.path, "blobs": s.blobs.path} for s in layer_sets],
                "base_config": base_config.path if base_config else "", "config": config,
                "annotations": dict(sorted(annotations.items())), "platform": PLATFORMS[platform],
                "ref_name": ctx.attr.tag, "epoch": ctx.settings.source_date_epoch, "owner": str(ctx.label)},
        description=f"OciImage {ctx.label}",
    )
    repo_tags = tuple(default_repo_tags(ctx.label, {"repo_tags": ctx.attr.repo_tags, "tag": ctx.attr.tag}))
    return [DefaultInfo(files=(layout,)),
            OciImageInfo(layout, ctx.attr.tag, repo_tags, tuple(s.index for s in layer_sets), tuple(packages),
                         base.reference if base else "", base.manifest_digest if base else "",
                         tuple(f for f in lockfiles if f.is_source))]


def _merge_env(base: list[str], ours: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in base + ours:
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def _input_entry(execution, path: str, kind: str):
    entry = execution.input_entries.get(path)
    if entry is None or entry.kind != kind:
        raise ActionFailed(f"{execution.action.owner}: input {path} is not a generated {kind}")
    return entry


def _input_bytes(execution, path: str) -> bytes:
    """A generated input file's content, read from the store (verified)."""
    entry = _input_entry(execution, path, "file")
    return small_blob(execution.store, entry.digest, MAX_JSON_BYTES, path)  # missing: its producer runs again


def _run_image(execution) -> None:
    """The inputs are not staged: the layer indexes and the base config are read from the store, and
    each layer blob is written once, straight to its place in the layout (a copy in the kernel for a
    blob this process has just hashed, verified otherwise), with its digest noted for the collector."""
    params = execution.params
    store = execution.store
    layout = execution.path(execution.action.outputs[0])
    layout.mkdir(parents=True, exist_ok=True)
    blobs_dir = layout / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    base = (loads_bounded(_input_bytes(execution, params["base_config"]), params["base_config"])
            if params["base_config"] else {})
    created = epoch_rfc3339(params["epoch"])
    descriptors, diff_ids, history = [], [], list(base.get("history", []))
    for layer_set in params["layer_sets"]:
        blobs = dict(walk_tree(store, _input_entry(execution, layer_set["blobs"], "dir").digest))
        for layer in loads_bounded(_input_bytes(execution, layer_set["index"]), layer_set["index"])["layers"]:
            hex_ = layer["digest"].split(":", 1)[1]
            dest = blobs_dir / hex_
            if not dest.exists():
                blob = blobs.get(hex_)
                if blob is None or blob.kind != "file":
                    raise ActionFailed(f"{execution.action.owner}: layer {layer['digest']} is listed in "
                                       f"{layer_set['index']} but not in {layer_set['blobs']}")
                if not store.fetch_file(blob.digest, dest, mode=blob.mode & 0o777):
                    raise MissingBlob(blob.digest)
                execution.note_written(dest, blob.digest)
            descriptors.append({"mediaType": layer["mediaType"], "digest": layer["digest"], "size": layer["size"]})
            diff_ids.append(layer["diff_id"])
            if not layer.get("from_base"):
                history.append({"created": created, "created_by": f"hb {params['owner']}: {layer.get('name', 'layer')}",
                                **({"comment": " ".join(layer["packages"])} if layer.get("packages") else {})})
    base_cfg = base.get("config", {})
    ours = params["config"]
    config = {k: v for k, v in base_cfg.items() if k in ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels",
                                                          "ExposedPorts", "StopSignal", "Volumes")}
    config["Env"] = _merge_env(base_cfg.get("Env") or [], ours.get("Env", []))
    if "Entrypoint" in ours:
        config["Entrypoint"] = ours["Entrypoint"]
        config.pop("Cmd", None)  # as in a Dockerfile: a new entrypoint drops the base's cmd
    for key in ("Cmd", "WorkingDir", "User"):
        if key in ours:
            config[key] = ours[key]
    if "Labels" in ours:
        config["Labels"] = {**(base_cfg.get("Labels") or {}), **ours["Labels"]}
    image_config = {
        **params["platform"], "created": created, "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history,
    }
    config_bytes = canonical(image_config)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256_of(config_bytes), "size": len(config_bytes)},
                "layers": descriptors, "annotations": params["annotations"]}
    digest = write_layout(layout, canonical(manifest), config_bytes, params["platform"], params["ref_name"])
    execution.stdout += f"manifest {digest}, {len(descriptors)} layers\n".encode()


oci_image = rule(
    "oci_image",
    _oci_image_impl,
    attrs={
        "base": attr.label(doc="base image: a deb_base, oci_pull or oci_layout_base target; none = scratch"),
        "env": attr.label(doc="a conda_env target: one layer per package, then one for the environment's metadata"),
        "layers": attr.label_list(doc="more layers on top (oci_files targets)"),
        "entrypoint": attr.string_list(),
        "cmd": attr.string_list(),
        "env_vars": attr.string_dict(doc="environment variables (PATH and CONDA_PREFIX are set for an env)"),
        "workdir": attr.string(),
        "user": attr.string(doc="user[:group] the container runs as, e.g. '1000:1000'"),
        "labels": attr.string_dict(doc="image config labels"),
        "annotations": attr.string_dict(doc="manifest annotations (org.opencontainers.image.* and yours)"),
        "platform": attr.string(doc="conda platform of the image (default: the env's)"),
        "tag": attr.string(default="latest", doc="the ref name in index.json"),
        "repo_tags": attr.string_list(doc="names for docker load (default: <package>/<name>:<tag>)"),
        "max_layers": attr.int(default=DEFAULT_MAX_LAYERS, doc="layer budget for the environment's packages"),
        "compression": attr.string(default="gzip", values=("gzip", "zstd")),
    },
    doc="An OCI image layout built without a daemon; reproducible bit for bit.",
    publish={"push": push_image, "load": load_image},
)


def _docker_archive_impl(ctx):
    image = ctx.dep("image").get(OciImageInfo) if ctx.dep("image") is not None else None
    if image is None:
        ctx.fail(f"image = {ctx.attr.image} is not an oci_image target")
    out = ctx.declare_file(f"{ctx.label.name}.tar")
    repo_tags = list(ctx.attr.repo_tags) or list(image.repo_tags)
    ctx.actions.declare(mnemonic="DockerArchive", kind="oci.docker_archive", inputs=[image.layout], outputs=[out],
                        params={"layout": image.layout.path, "ref_name": image.ref_name, "repo_tags": repo_tags,
                                "epoch": ctx.settings.source_date_epoch},
                        description=f"DockerArchive {ctx.label}")
    return [DefaultInfo(files=(out,))]


def _run_docker_archive(execution) -> None:
    params = execution.params
    try:
        image = read_layout(execution.declared_input(params["layout"]), params["ref_name"])
    except LayoutError as exc:
        raise ActionFailed(str(exc)) from None
    write_docker_archive(image, execution.path(execution.action.outputs[0]), params["repo_tags"], params["epoch"])


oci_docker_archive = rule(
    "oci_docker_archive",
    _docker_archive_impl,
    attrs={
        "image": attr.label(mandatory=True, doc="an oci_image target"),
        "repo_tags": attr.string_list(doc="names the image gets in the daemon (default: the image's repo_tags)"),
    },
    doc="The image as a tarball for `docker load` / `podman load`.",
)

register_action_kind("oci.image", "1", _run_image, stage_inputs=False)
register_action_kind("oci.docker_archive", "1", _run_docker_archive)
