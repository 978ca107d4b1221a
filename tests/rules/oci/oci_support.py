"""OCI test helpers: validation against the OCI image-spec JSON schemas (draft-04, copied into
tests/data) and reading an image layout back."""

from __future__ import annotations

import json

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from support import SHARED_DATA

SCHEMAS = SHARED_DATA / "oci-image-spec-schema"


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        resource = Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT4)
        for base in ("https://opencontainers.org/schema/image/", "https://opencontainers.org/schema/"):
            resources.append((base + path.name, resource))
        # sub-schemas carry their own ids (e.g. .../image/manifest/config): refs resolve relative to them
        for base in ("https://opencontainers.org/schema/image/manifest/", "https://opencontainers.org/schema/image/index/",
                     "https://opencontainers.org/schema/image/config/", "https://opencontainers.org/schema/descriptor/"):
            resources.append((base + path.name, resource))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def validate(kind: str, document: dict) -> None:
    """kind: image-manifest-schema, image-index-schema, config-schema, image-layout-schema."""
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    jsonschema.Draft4Validator(schema, registry=REGISTRY).validate(document)


def layout_image(layout):
    """(manifest digest, manifest, config) of an OCI layout with one image."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    return digest, manifest, config
