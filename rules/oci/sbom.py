"""oci_sbom: the software bill of materials of an oci_image, as SPDX 2.3 JSON and CycloneDX 1.6 JSON,
made with the maintained libraries (spdx-tools, cyclonedx-python-lib). The tests validate what they
write with the libraries' own validators (spdx-tools' validate_full_spdx_document, CycloneDX's JSON
schema through cyclonedx-python-lib); the build does not validate again (jsonschema, the compiled
CycloneDX schema, spdx-tools' validators and its writer's deep copy of the document cost ~0.1 CPU s
of the ~0.4 the SBOMs and provenance added to the example's build) on a document whose shape only this
module decides. Every conda package (pkg:conda), PyPI wheel (pkg:pypi) and Debian package (pkg:deb)
with the sha256 its lock records, the base image by digest, and the relationships image CONTAINS
layer CONTAINS package. Reproducible: the only time in it is source_date_epoch, identifiers are
derived from the image's manifest digest, everything is sorted."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from urllib.parse import unquote

from hermetic_build.api import ActionFailed, DefaultInfo, MissingBlob, attr, lookup_tree, register_action_kind, rule

from . import sbom_helper
from .sbom_documents import SbomModel, SbomPackage, cyclonedx_json, spdx_json  # noqa: F401 - the module's API

SPDX_FILE = "sbom.spdx.json"
CYCLONEDX_FILE = "sbom.cdx.json"


def conda_packages(env, layer_set: int) -> list[SbomPackage]:
    out = []
    for p in env.packages:
        subdir = p.url.rsplit("/", 2)[-2] if p.url.count("/") >= 2 else ""
        out.append(SbomPackage("conda", p.name, p.version, p.sha256, p.url, layer_set, build=p.build, subdir=subdir))
    for w in getattr(env, "wheels", ()):  # PyPI wheels staged into the environment
        out.append(SbomPackage("pypi", w.name, w.version, w.sha256, w.url, layer_set))
    return out


def deb_package(entry: dict, layer_set: int) -> SbomPackage:
    """A deb_base lock entry; version and architecture come from the Debian file name name_version_arch.deb."""
    parts = unquote(entry["filename"]).removesuffix(".deb").split("_")
    version, arch = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
    return SbomPackage("deb", entry["name"], version, entry["sha256"], entry["url"], layer_set, arch=arch)


# ----- analysis -------------------------------------------------------------------------------------------
def _oci_sbom_impl(ctx):
    from rules.conda.env import CondaEnvInfo

    from .image import OciImageInfo, required_dep

    if (ctx.attr.image is None) == (ctx.attr.env is None):
        ctx.fail("set exactly one of image (an oci_image) and env (a conda_env)")
    if ctx.attr.env is not None:
        dep, env = required_dep(ctx, "env", CondaEnvInfo, "a conda_env target")
        out = ctx.declare_directory(".")
        ctx.actions.declare(
            mnemonic="EnvSbom", kind="oci.sbom", inputs=[env.tree], outputs=[out],
            params={"tree": env.tree.path, "image": str(dep.label), "base": "", "base_digest": "",
                    "epoch": ctx.settings.source_date_epoch,
                    "packages": [asdict(p) for p in sorted(conda_packages(env, 0), key=lambda p: (p.type, p.name))]},
            description=f"EnvSbom {dep.label}",
        )
        return [DefaultInfo(files=(out,))]
    dep, image = required_dep(ctx, "image", OciImageInfo, "an oci_image target")
    out = ctx.declare_directory(".")
    ctx.actions.declare(
        mnemonic="OciSbom", kind="oci.sbom", inputs=[image.layout, *image.layer_indexes], outputs=[out],
        params={"layout": image.layout.path, "layer_indexes": [f.path for f in image.layer_indexes],
                "ref_name": image.ref_name, "image": str(dep.label), "base": image.base_reference,
                "base_digest": image.base_digest, "epoch": ctx.settings.source_date_epoch,
                "packages": [asdict(p) for p in sorted(image.packages, key=lambda p: (p.type, p.name, p.version))]},
        description=f"OciSbom {dep.label}",
    )
    return [DefaultInfo(files=(out,))]


# ----- execution ------------------------------------------------------------------------------------------
def _blob_of(execution, tree_file, path: str) -> bytes:
    try:
        entry = lookup_tree(execution.store, execution.input_tree(tree_file), path)
        data = execution.store.get_blob(entry.digest) if entry is not None and entry.kind == "file" else None
    except MissingBlob:
        data = None
    if data is None:
        raise ActionFailed(f"{tree_file.path}/{path} is missing from the image layout")
    return data


def image_layers(execution) -> tuple[str, list[dict]]:
    """(manifest digest, the manifest's layer descriptors) of the layout's ref_name."""
    params = execution.params
    layout = next(f for f in execution.action.inputs if f.path == params["layout"])
    index = json.loads(_blob_of(execution, layout, "index.json"))
    found = [m for m in index.get("manifests", [])
             if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == params["ref_name"]]
    if len(found) != 1:
        raise ActionFailed(f"{layout.path}/index.json has no single manifest named {params['ref_name']!r}")
    digest = found[0]["digest"]
    manifest = json.loads(_blob_of(execution, layout, f"blobs/sha256/{digest.split(':', 1)[1]}"))
    return digest, manifest["layers"]


def read_layer_sets(execution) -> list[list[dict]]:
    """Each layer set's layers.json entries (digest, packages), in image order."""
    sets = []
    for path in execution.params["layer_indexes"]:
        digest = execution.input_entries[path].digest
        data = execution.store.get_blob(digest)
        if data is None:
            raise MissingBlob(digest)
        sets.append(json.loads(data)["layers"])
    return sets


def _run_sbom(execution) -> None:
    params = execution.params
    packages = [SbomPackage(**p) for p in params["packages"]]
    if "tree" in params:  # an environment: it CONTAINS its packages, no layers
        manifest_digest, descriptors = "blake3:" + execution.input_entries[params["tree"]].digest.hash, []
        contains = {}
    else:
        manifest_digest, descriptors = image_layers(execution)
        layer_sets = read_layer_sets(execution)
        if sum(len(s) for s in layer_sets) != len(descriptors):
            raise ActionFailed("the image's layers are not those of its layer sets")
        contains = layer_contents(layer_sets, packages)
    created = datetime.fromtimestamp(params["epoch"], tz=timezone.utc)
    model = SbomModel(params["image"], manifest_digest, [d["digest"] for d in descriptors], packages, contains,
                      params["base"], params["base_digest"], created)
    out = execution.path(execution.action.outputs[0])
    out.mkdir(parents=True, exist_ok=True)
    spdx_text, cyclonedx_text = sbom_helper.render(model)
    (out / SPDX_FILE).write_text(spdx_text)
    (out / CYCLONEDX_FILE).write_text(cyclonedx_text)
    execution.stdout += f"{len(packages)} packages in {len(descriptors)} layers of {manifest_digest}\n".encode()


def layer_contents(layer_sets: list[list[dict]], packages: list[SbomPackage]) -> dict[str, list[int]]:
    """layer digest -> indices of the packages it holds. A conda layer lists its packages by name; a
    layer set that lists none (a Debian base, one layer) holds all of that set's packages in its
    first layer."""
    contains: dict[str, list[int]] = {}
    for set_index, layers in enumerate(layer_sets):
        members = [i for i, p in enumerate(packages) if p.layer_set == set_index]
        named = {}
        for i in members:
            named.setdefault(packages[i].name, []).append(i)
        placed = set()
        for layer in layers:
            for name in layer.get("packages", []):
                for i in named.get(name, []):
                    contains.setdefault(layer["digest"], []).append(i)
                    placed.add(i)
        rest = [i for i in members if i not in placed]
        if rest and layers:
            contains.setdefault(layers[0]["digest"], []).extend(rest)
    return {k: sorted(v) for k, v in contains.items()}

def warm() -> None:
    """Start the SBOM helper process (sbom_helper.py), which loads spdx-tools and cyclonedx-python-lib
    on an idle core while the build's first actions run, outside hb's process."""
    sbom_helper.start()


register_action_kind("oci.sbom", "1", _run_sbom, stage_inputs=False, warm=warm)

oci_sbom = rule(
    "oci_sbom",
    _oci_sbom_impl,
    attrs={"image": attr.label(doc="an oci_image target (image CONTAINS layer CONTAINS package)"),
           "env": attr.label(doc="or a conda_env target (environment CONTAINS package)")},
    doc="The SBOM of an image or an environment: hb-out/<pkg>/<name>/sbom.spdx.json (SPDX 2.3) and "
        "sbom.cdx.json (CycloneDX 1.6).",
)
