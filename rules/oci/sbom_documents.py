"""The two SBOM documents of an image or environment, SPDX 2.3 JSON and CycloneDX 1.6 JSON, made with
the maintained libraries (spdx-tools, cyclonedx-python-lib) from an SbomModel. This module imports
nothing of hb's, so that the SBOM helper process (sbom_helper.py) loads it, and the libraries, without
loading the rules; sbom.py builds the model from the image and writes the files."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from urllib.parse import unquote, urlparse

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


def model_to_json(model: SbomModel) -> dict:
    """An SbomModel as plain JSON (what the helper process is sent)."""
    data = asdict(model)
    data["created"] = model.created.timestamp()
    return data


def model_from_json(data: dict) -> SbomModel:
    packages = [SbomPackage(**p) for p in data["packages"]]
    return SbomModel(data["image"], data["manifest_digest"], list(data["layers"]), packages,
                     {k: list(v) for k, v in data["contains"].items()}, data["base"], data["base_digest"],
                     datetime.fromtimestamp(data["created"], tz=timezone.utc))


def render(model: SbomModel) -> tuple[str, str]:
    """(SPDX JSON text, CycloneDX JSON text) of the model."""
    return spdx_json(model), cyclonedx_json(model)


def serve() -> None:
    """The SBOM helper's loop: load the libraries (a one-package SBOM of each format), say ready, then
    answer one JSON line per request on stdin (a model) with one JSON line on stdout (the documents,
    or the error), until stdin closes."""
    digest = "sha256:" + "0" * 64
    render(SbomModel("//warm:warm", digest, [digest], [SbomPackage("pypi", "warm", "0", "0" * 64,
                                                                  "https://example.invalid/warm-0.whl", 0)],
                     {digest: [0]}, "", "", datetime.fromtimestamp(0, tz=timezone.utc)))
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            spdx, cdx = render(model_from_json(json.loads(line)))
            reply = {"spdx": spdx, "cdx": cdx}
        except Exception as exc:  # noqa: BLE001 - hb renders in its own process then, and reports
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
