"""oci_provenance: an in-toto Statement with a SLSA Provenance v1 predicate for an oci_image.

subject = the image's manifest digest; resolvedDependencies = the lock files (their sha256, and the
lock's content hash where it records one), every package archive and wheel and every base .deb
(sha256 as locked), the base image by digest; buildDefinition = the target label, hb's version and
source_date_epoch and the keys (BLAKE3) of every action upstream of the statement (the graph that produced
the image; the statement's own action key includes them, never itself); byproducts = the layer digests
with the packages each holds. Reproducible like the SBOM. `hb attest sign` wraps it in a DSSE envelope signed with an ed25519 key; `hb attest verify`
checks the signature, the subject and (with --lock) that every package of a lock is in it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import hermetic_build
from hermetic_build.api import ActionFailed, DefaultInfo, attr, register_action_kind, rule

from .sbom import SbomPackage, image_layers, layer_contents, read_layer_sets

STATEMENT_FILE = "provenance.intoto.json"
BUILD_TYPE = "https://hermetic-build.dev/oci_image/v1"
BUILDER_ID = "https://hermetic-build.dev/hb"


def _oci_provenance_impl(ctx):
    from .image import OciImageInfo, required_dep

    dep, image = required_dep(ctx, "image", OciImageInfo, "an oci_image target")
    locks = []
    for lock in image.lockfiles:
        data = ctx.read_source(lock)  # tracked: a new lock re-analyses, so the statement follows it
        locks.append({"uri": lock.path, "sha256": hashlib.sha256(data).hexdigest()})
    out = ctx.declare_directory(".")
    ctx.actions.declare(
        mnemonic="OciProvenance", kind="oci.provenance", inputs=[image.layout, *image.layer_indexes], outputs=[out],
        params={"layout": image.layout.path, "layer_indexes": [f.path for f in image.layer_indexes],
                "ref_name": image.ref_name, "image": str(dep.label), "base": image.base_reference,
                "base_digest": image.base_digest, "epoch": ctx.settings.source_date_epoch, "locks": locks,
                "hb_version": hermetic_build.__version__,
                "packages": [asdict(p) for p in sorted(image.packages, key=lambda p: (p.type, p.name, p.version))]},
        description=f"OciProvenance {dep.label}", dep_keys=True,
    )
    return [DefaultInfo(files=(out,))]


def statement(params: dict, manifest_digest: str, layers: list[str], contains: dict[str, list[int]],
              packages: list[SbomPackage], action_keys: list[dict]) -> dict:
    deps = [{"uri": lock["uri"], "digest": {"sha256": lock["sha256"]}, "annotations": {"kind": "lockfile"}}
            for lock in params["locks"]]
    for p in packages:
        deps.append({"uri": p.url, "name": p.name, "digest": {"sha256": p.sha256},
                     "annotations": {"kind": p.type, "version": p.version, "purl": p.purl}})
    if params["base_digest"]:
        deps.append({"uri": params["base"], "digest": {"sha256": params["base_digest"].split(":", 1)[-1]},
                     "annotations": {"kind": "base-image"}})
    byproducts = [{"name": f"layer {i}", "digest": {"sha256": layer.split(":", 1)[1]},
                   "annotations": {"packages": sorted(packages[j].name for j in contains.get(layer, []))}}
                  for i, layer in enumerate(layers)]
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": params["image"], "digest": {"sha256": manifest_digest.split(":", 1)[1]}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"target": params["image"], "ref_name": params["ref_name"]},
                "internalParameters": {
                    "hb_version": params["hb_version"], "source_date_epoch": params["epoch"],
                    # the graph that produced the image: every action upstream of this statement
                    "action_keys": [{"target": k["owner"], "mnemonic": k["mnemonic"], "output": k["output"],
                                     "blake3": k["key"]} for k in action_keys],
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": f"{BUILDER_ID}@{params['hb_version']}"},
                "metadata": {"invocationId": manifest_digest},
                "byproducts": byproducts,
            },
        },
    }


def _run_provenance(execution) -> None:
    params = execution.params
    manifest_digest, descriptors = image_layers(execution)
    layer_sets = read_layer_sets(execution)
    if sum(len(s) for s in layer_sets) != len(descriptors):
        raise ActionFailed("the image's layers are not those of its layer sets")
    packages = [SbomPackage(**p) for p in params["packages"]]
    layers = [d["digest"] for d in descriptors]
    data = statement(params, manifest_digest, layers, layer_contents(layer_sets, packages), packages,
                     execution.dep_keys or [])
    out = execution.path(execution.action.outputs[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / STATEMENT_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    execution.stdout += f"provenance of {manifest_digest}: {len(data['predicate']['buildDefinition']['resolvedDependencies'])} dependencies\n".encode()


def warm() -> None:
    """Import packageurl (each dependency's purl) off the critical path; the statement itself is plain
    JSON, so unlike an SBOM it needs neither spdx-tools nor cyclonedx-python-lib."""
    import packageurl  # noqa: F401


register_action_kind("oci.provenance", "2", _run_provenance, stage_inputs=False, warm=warm)

oci_provenance = rule(
    "oci_provenance",
    _oci_provenance_impl,
    attrs={"image": attr.label(mandatory=True, doc="an oci_image target")},
    doc="The image's SLSA v1 provenance as an in-toto Statement: hb-out/<pkg>/<name>/provenance.intoto.json "
        "(sign it with `hb attest sign`).",
)
