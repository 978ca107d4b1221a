"""oci_sbom on the example images: SPDX 2.3 and CycloneDX 1.6, checked with the libraries' own
parsers and validators, every locked package present with its sha256, image CONTAINS layer CONTAINS
package."""

import json

import pytest
import yaml
from support import copy_example


@pytest.mark.slow
def test_example_sbom_lists_every_locked_package_and_validates(tmp_path):
    example = copy_example(tmp_path / "examples", tmp_path / "cache")
    example.build_json("//env:nlp-sbom", "//env:nlp")
    out = example.root / "hb-out/env/nlp-sbom"
    index = json.loads((example.root / "hb-out/env/nlp/index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((example.root / "hb-out/env/nlp/blobs/sha256" / manifest_digest[7:]).read_text())
    layers = [d["digest"] for d in manifest["layers"]]

    # what the locks pin, read independently of hb
    lock = yaml.safe_load((example.root / "env/conda-lock.yml").read_text())
    conda = {p["name"]: p["hash"]["sha256"] for p in lock["package"] if p["platform"] == "linux-64"}
    debs = {p["name"]: p["sha256"] for p in json.loads((example.root / "base/debs.lock.json").read_text())["packages"]}

    # SPDX: parsed and validated by spdx-tools
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    document = parse_file(str(out / "sbom.spdx.json"))
    assert validate_full_spdx_document(document) == []
    by_id = {p.spdx_id: p for p in document.packages}
    sha = {p.name: p.checksums[0].value for p in document.packages}
    purls = {p.name: p.external_references[0].locator for p in document.packages if p.external_references}
    for name, digest in {**conda, **debs}.items():
        assert sha[name] == digest, name
    assert purls["hb-hello"].startswith("pkg:conda/hb-hello@1.0.0?") and "subdir=linux-64" in purls["hb-hello"]
    assert purls["libc6"].startswith("pkg:deb/debian/libc6@") and "arch=amd64" in purls["libc6"]
    contains = [(r.spdx_element_id, r.related_spdx_element_id) for r in document.relationships
                if r.relationship_type.name == "CONTAINS"]
    image_ids = [p.spdx_id for p in document.packages if p.version == manifest_digest]
    assert len(image_ids) == 1
    layer_ids = [b for a, b in contains if a == image_ids[0]]
    assert sorted(by_id[i].version for i in layer_ids) == sorted(layers)
    in_layers = {by_id[b].name for a, b in contains if a in layer_ids}
    assert in_layers == set(conda) | set(debs)  # every package is in exactly the layers that hold it

    # CycloneDX: validated against the 1.6 schema by cyclonedx-python-lib
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = (out / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6" and bom["metadata"]["component"]["version"] == manifest_digest
    assert bom["metadata"]["timestamp"].startswith("1970-01-01T00:00:00")  # source_date_epoch = 0
    nested = {c["name"]: c["hashes"][0]["content"] for layer in bom["components"] for c in layer.get("components", [])}
    assert nested == {**conda, **debs}


@pytest.mark.slow
def test_environment_sbom(tmp_path):
    """oci_sbom(env = ...): the environment (by its tree's BLAKE3 digest) CONTAINS every locked package."""
    example = copy_example(tmp_path / "examples", tmp_path / "cache")
    summary = example.build_json("//env:nlp-env-sbom", "//env:nlp-env")
    tree = summary["targets"]["//env:nlp-env"][0]["digest"].split("/")[0]
    out = example.root / "hb-out/env/nlp-env-sbom"
    lock = yaml.safe_load((example.root / "env/conda-lock.yml").read_text())
    locked = {p["name"]: p["hash"]["sha256"] for p in lock["package"] if p["platform"] == "linux-64"}

    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    document = parse_file(str(out / "sbom.spdx.json"))
    assert validate_full_spdx_document(document) == []
    env = next(p for p in document.packages if p.version == f"blake3:{tree}")
    contained = {r.related_spdx_element_id for r in document.relationships
                 if r.relationship_type.name == "CONTAINS" and r.spdx_element_id == env.spdx_id}
    assert {p.name: p.checksums[0].value for p in document.packages if p.spdx_id in contained} == locked

    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = (out / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["metadata"]["component"]["hashes"] == [{"alg": "BLAKE3", "content": tree}]
    assert {c["name"]: c["hashes"][0]["content"] for c in bom["components"]} == locked
