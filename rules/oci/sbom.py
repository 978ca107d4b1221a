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

import gc
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

from hermetic_build.api import (ActionFailed, DefaultInfo, MissingBlob, attr, loads_bounded, lookup_tree, register_action_kind,
                                rule, small_blob)

from .layout import MAX_JSON_BYTES

SPDX_FILE = "sbom.spdx.json"
CYCLONEDX_FILE = "sbom.cdx.json"
TOOL = "hermetic-build"


@dataclass(frozen=True)
class SbomPackage:
    """One package in an image, as its lock records it."""

    type: str  # "conda" | "pypi" | "deb"
    name: str
    version: str
    sha256: str
    url: str
    layer_set: int  # index of the image's layer set that holds it
    build: str = ""
    subdir: str = ""
    arch: str = ""

    @property
    def purl(self) -> str:
        from packageurl import PackageURL

        if self.type == "conda":
            qualifiers = {"build": self.build, "subdir": self.subdir, "channel": _channel_of(self.url, self.subdir)}
            return PackageURL("conda", None, self.name, self.version,
                              {k: v for k, v in qualifiers.items() if v}).to_string()
        if self.type == "deb":
            return PackageURL("deb", "debian", self.name, self.version, {"arch": self.arch} if self.arch else None
                              ).to_string()
        return PackageURL("pypi", None, self.name.lower().replace("_", "-"), self.version).to_string()


def _channel_of(url: str, subdir: str) -> str:
    """The channel URL of a package URL (<channel>/<subdir>/<file>); a local file:// path is reduced to
    its last component, so that the SBOM names no path of the machine that locked."""
    head = url.rsplit("/", 2)[0] if url.count("/") >= 2 else url
    if urlparse(head).scheme == "file":
        return unquote(head.rstrip("/").rsplit("/", 1)[-1])
    return head


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
        data = (small_blob(execution.store, entry.digest, MAX_JSON_BYTES, f"{tree_file.path}/{path}")
                if entry is not None and entry.kind == "file" else None)
    except MissingBlob:
        data = None
    if data is None:
        raise ActionFailed(f"{tree_file.path}/{path} is missing from the image layout")
    return data


def image_layers(execution) -> tuple[str, list[dict]]:
    """(manifest digest, the manifest's layer descriptors) of the layout's ref_name."""
    params = execution.params
    layout = next(f for f in execution.action.inputs if f.path == params["layout"])
    index = loads_bounded(_blob_of(execution, layout, "index.json"), f"{layout.path}/index.json")
    found = [m for m in index.get("manifests", [])
             if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == params["ref_name"]]
    if len(found) != 1:
        raise ActionFailed(f"{layout.path}/index.json has no single manifest named {params['ref_name']!r}")
    digest = found[0]["digest"]
    path = f"blobs/sha256/{digest.split(':', 1)[1]}"
    manifest = loads_bounded(_blob_of(execution, layout, path), f"{layout.path}/{path}")
    return digest, manifest["layers"]


def read_layer_sets(execution) -> list[list[dict]]:
    """Each layer set's layers.json entries (digest, packages), in image order."""
    sets = []
    for path in execution.params["layer_indexes"]:
        sets.append(loads_bounded(small_blob(execution.store, execution.input_entries[path].digest, MAX_JSON_BYTES,
                                             path), path)["layers"])
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
    (out / SPDX_FILE).write_text(spdx_json(model))
    (out / CYCLONEDX_FILE).write_text(cyclonedx_json(model))
    execution.stdout += f"{len(packages)} packages in {len(descriptors)} layers of {manifest_digest}\n".encode()


def layer_contents(layer_sets: list[list[dict]], packages: list[SbomPackage]) -> dict[str, list[int]]:
    """layer digest -> indices of the packages it holds. A conda layer lists its packages by name; a
    layer set that lists none (a Debian base, one layer) holds all of that set's packages in its
    first layer."""
    contains: dict[str, list[int]] = {}
    for set_index, layers in enumerate(layer_sets):
        members = [i for i, p in enumerate(packages) if p.layer_set == set_index]
        named = {}
        from .split import pypi_key

        for i in members:
            # a wheel's layer lists it as layering names it (rules/oci/split.py)
            name = packages[i].name
            named.setdefault(pypi_key(name) if packages[i].type == "pypi" else name, []).append(i)
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


@dataclass(frozen=True)
class SbomModel:
    image: str
    manifest_digest: str
    layers: list[str]
    packages: list[SbomPackage]
    contains: dict[str, list[int]]
    base: str
    base_digest: str
    created: datetime

    @property
    def is_environment(self) -> bool:
        return self.manifest_digest.startswith("blake3:")


def _spdx_id(kind: str, text: str) -> str:
    safe = "".join(c if c.isalnum() or c in ".-" else "-" for c in text)
    return f"SPDXRef-{kind}-{safe}"


def spdx_json(model: SbomModel) -> str:
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        Package,
        PackagePurpose,
        Relationship,
        RelationshipType,
        SpdxNoAssertion,
    )
    from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
    from spdx_tools.spdx.validation.uri_validators import validate_download_location

    hex_ = model.manifest_digest.split(":", 1)[1]
    info = CreationInfo(spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=f"{model.image}@{model.manifest_digest}",
                        document_namespace=f"https://hermetic-build.dev/spdx/{hex_}",
                        creators=[Actor(ActorType.TOOL, TOOL)], created=model.created.replace(tzinfo=None))
    image_id = _spdx_id("Image", hex_[:16])
    if model.is_environment:
        # the tree's BLAKE3 digest is its version: spdx-tools' validator wants BLAKE3 checksums of at
        # least 256 hex digits, which a 256-bit digest is not
        packages = [Package(image_id, model.image, SpdxNoAssertion(), version=model.manifest_digest,
                            files_analyzed=False, primary_package_purpose=PackagePurpose.INSTALL)]
    else:
        packages = [Package(image_id, model.image, SpdxNoAssertion(), version=model.manifest_digest,
                            checksums=[Checksum(ChecksumAlgorithm.SHA256, hex_)], files_analyzed=False,
                            primary_package_purpose=PackagePurpose.CONTAINER,
                            external_references=[ExternalPackageRef(
                                ExternalPackageRefCategory.PACKAGE_MANAGER, "purl",
                                f"pkg:oci/{model.image.rsplit(':', 1)[-1]}@{model.manifest_digest.replace(':', '%3A')}")])]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, image_id)]
    if model.is_environment:
        relationships += [Relationship(image_id, RelationshipType.CONTAINS, _package_id(p)) for p in model.packages]
    if model.base_digest:
        base_id = _spdx_id("Base", model.base_digest.split(":", 1)[-1][:16])
        packages.append(Package(base_id, model.base or "base image", SpdxNoAssertion(), version=model.base_digest,
                                checksums=[Checksum(ChecksumAlgorithm.SHA256, model.base_digest.split(":", 1)[-1])],
                                files_analyzed=False, primary_package_purpose=PackagePurpose.CONTAINER))
        relationships.append(Relationship(image_id, RelationshipType.DESCENDANT_OF, base_id))
    for i, layer in enumerate(model.layers):
        layer_id = _spdx_id("Layer", f"{i}-{layer.split(':', 1)[1][:16]}")
        packages.append(Package(layer_id, f"layer {i}", SpdxNoAssertion(), version=layer,
                                checksums=[Checksum(ChecksumAlgorithm.SHA256, layer.split(":", 1)[1])],
                                files_analyzed=False, primary_package_purpose=PackagePurpose.ARCHIVE))
        relationships.append(Relationship(image_id, RelationshipType.CONTAINS, layer_id))
        for p_index in model.contains.get(layer, []):
            relationships.append(Relationship(layer_id, RelationshipType.CONTAINS, _package_id(model.packages[p_index])))
    for p in model.packages:
        packages.append(Package(
            # a file:// URL (a local channel) is no download location anyone else can use, and SPDX's
            # own grammar decides what else is one
            _package_id(p), p.name, p.url if p.url.startswith(("https://", "http://"))
            and not validate_download_location(p.url) else SpdxNoAssertion(),
            version=p.version,
            checksums=[Checksum(ChecksumAlgorithm.SHA256, p.sha256)], files_analyzed=False,
            primary_package_purpose=PackagePurpose.LIBRARY,
            external_references=[ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", p.purl)]))
    document = Document(info, packages=packages, relationships=relationships)
    # spdx-tools' own JSON converter, as its writer uses it; the writer would also deep-copy the document
    # to drop duplicate list entries within an element, and each element here has one checksum and at
    # most one reference
    return json.dumps(DocumentConverter().convert(document), indent=2, sort_keys=True) + "\n"


def _package_id(p: SbomPackage) -> str:
    return _spdx_id(f"Package-{p.type}", f"{p.name}-{p.version}-{p.sha256[:12]}")


def cyclonedx_json(model: SbomModel) -> str:
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    hex_ = model.manifest_digest.split(":", 1)[1]
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"https://hermetic-build.dev/cdx/{hex_}"))
    bom.metadata.timestamp = model.created
    if model.is_environment:
        image = Component(type=ComponentType.APPLICATION, name=model.image, version=model.manifest_digest,
                          bom_ref=f"env:{model.manifest_digest}", hashes=[HashType(alg=HashAlgorithm.BLAKE3, content=hex_)])
    else:
        image = Component(type=ComponentType.CONTAINER, name=model.image, version=model.manifest_digest,
                          bom_ref=f"image:{model.manifest_digest}",
                          hashes=[HashType(alg=HashAlgorithm.SHA_256, content=hex_)],
                          purl=PackageURL("oci", None, model.image.rsplit(":", 1)[-1], model.manifest_digest))
    bom.metadata.component = image
    by_index = {}
    for i, p in enumerate(model.packages):
        by_index[i] = Component(type=ComponentType.LIBRARY, name=p.name, version=p.version,
                                bom_ref=f"{p.type}:{p.name}@{p.version}#{p.sha256[:12]}", purl=PackageURL.from_string(p.purl),
                                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=p.sha256)])
    layer_components = []
    for i, layer in enumerate(model.layers):
        layer_hex = layer.split(":", 1)[1]
        component = Component(type=ComponentType.FILE, name=f"layer {i}", version=layer, bom_ref=f"layer:{i}:{layer}",
                              hashes=[HashType(alg=HashAlgorithm.SHA_256, content=layer_hex)])
        for p_index in model.contains.get(layer, []):
            component.components.add(by_index[p_index])
        layer_components.append(component)
        bom.components.add(component)
    if model.base_digest:
        base = Component(type=ComponentType.CONTAINER, name=model.base or "base image", version=model.base_digest,
                         bom_ref=f"base:{model.base_digest}",
                         hashes=[HashType(alg=HashAlgorithm.SHA_256, content=model.base_digest.split(":", 1)[-1])])
        bom.components.add(base)
    if model.is_environment:
        for component in by_index.values():
            bom.components.add(component)
        bom.register_dependency(image, list(by_index.values()))
    else:
        bom.register_dependency(image, layer_components)
    return json.dumps(json.loads(JsonV1Dot6(bom).output_as_string()), indent=2, sort_keys=True) + "\n"


def warm() -> None:
    """Import spdx-tools, cyclonedx-python-lib and packageurl and make a one-package SBOM of each format,
    so that the libraries' models, type checks (beartype) and serialisers are loaded. The executor runs
    this in a background thread while a build's first actions run: ~0.17 CPU s of imports then happen
    off the critical path instead of after the image, where every SBOM action would wait for them.

    Then the objects the libraries made (~22,000: modules, classes, beartype's generated checkers),
    which live as long as the process, are moved out of the garbage collector's generations, as the
    build does with its analysis: otherwise every later full collection and the one at interpreter
    exit traverse them again (measured: +40-80 ms at the exit of a process that loaded them, on the
    build's critical path; ~15 ms with them frozen)."""
    digest = "sha256:" + "0" * 64
    package = SbomPackage("pypi", "warm", "0", "0" * 64, "https://example.invalid/warm-0.whl", 0)
    model = SbomModel("//warm:warm", digest, [digest], [package], {digest: [0]}, "", "",
                      datetime.fromtimestamp(0, tz=timezone.utc))
    spdx_json(model)
    cyclonedx_json(model)
    gc.freeze()


register_action_kind("oci.sbom", "1", _run_sbom, stage_inputs=False, warm=warm)

oci_sbom = rule(
    "oci_sbom",
    _oci_sbom_impl,
    attrs={"image": attr.label(doc="an oci_image target (image CONTAINS layer CONTAINS package)"),
           "env": attr.label(doc="or a conda_env target (environment CONTAINS package)")},
    doc="The SBOM of an image or an environment: hb-out/<pkg>/<name>/sbom.spdx.json (SPDX 2.3) and "
        "sbom.cdx.json (CycloneDX 1.6).",
)
