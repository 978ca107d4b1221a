"""oci_sbom on the example images: SPDX 2.3 and CycloneDX 1.6, checked with the libraries' own
parsers and validators, every locked package present with its sha256, image CONTAINS layer CONTAINS
package."""

import json
from datetime import datetime, timezone

import pytest
import yaml
from support import copy_example

from rules.oci.sbom import SbomModel, SbomPackage, cyclonedx_json, layer_contents, spdx_json


def _validate(spdx_text: str, cdx_text: str):
    """Both documents through the libraries' own validators (the build writes them unvalidated)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    document = JsonLikeDictParser().parse(json.loads(spdx_text))
    assert validate_full_spdx_document(document) == []
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(cdx_text) is None
    return document, json.loads(cdx_text)


def test_image_and_environment_documents_validate_without_a_build():
    """What spdx_json / cyclonedx_json make for an image on a base with conda (one from a local
    file:// channel), PyPI and Debian packages, and for an environment, passes spdx-tools' validator
    and the CycloneDX 1.6 schema, and is the same text when made twice."""
    base, layer0, layer1, layer2 = ("sha256:" + c * 64 for c in "abcf")
    packages = [
        SbomPackage("conda", "hb-hello", "1.0.0", "1" * 64, "file:///home/me/chan/linux-64/hb-hello-1.0.0-h0_0.conda",
                    1, build="h0_0", subdir="linux-64"),
        SbomPackage("conda", "zlib", "1.3", "2" * 64, "https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3-h0.conda",
                    1, build="h0", subdir="linux-64"),
        SbomPackage("pypi", "Typing_Extensions", "4.16.0", "3" * 64,
                    "https://files.pythonhosted.org/packages/typing_extensions-4.16.0-py3-none-any.whl", 1),
        SbomPackage("deb", "libc6", "2.36-9", "4" * 64, "https://deb.debian.org/debian/pool/libc6_2.36-9_amd64.deb",
                    0, arch="amd64"),
    ]
    # a wheel's layer lists it as layering names it (pypi:<PEP 503 name>), not as its lock entry spells it
    layer_sets = [[{"digest": layer0}], [{"digest": layer2, "packages": ["hb-hello", "zlib"]},
                                         {"digest": layer1, "packages": ["pypi:typing-extensions"]}]]
    contains = layer_contents(layer_sets, packages)
    epoch = datetime.fromtimestamp(0, tz=timezone.utc)
    image = SbomModel("//env:img", "sha256:" + "d" * 64, [layer0, layer2, layer1], packages, contains,
                      "debian:bookworm", base, epoch)
    spdx_text, cdx_text = spdx_json(image), cyclonedx_json(image)
    assert (spdx_text, cdx_text) == (spdx_json(image), cyclonedx_json(image))
    document, bom = _validate(spdx_text, cdx_text)
    by_name = {p.name: p for p in document.packages}
    assert str(by_name["hb-hello"].download_location) == "NOASSERTION"  # no path of the locking machine
    assert "channel=chan" in by_name["hb-hello"].external_references[0].locator
    assert by_name["zlib"].download_location.startswith("https://conda.anaconda.org/")
    assert by_name["Typing_Extensions"].external_references[0].locator == "pkg:pypi/typing-extensions@4.16.0"
    nested = {c["name"]: layer["version"] for layer in bom["components"] for c in layer.get("components", [])}
    assert nested == {"libc6": layer0, "hb-hello": layer2, "zlib": layer2, "Typing_Extensions": layer1}
    assert "/home/me" not in spdx_text and "/home/me" not in cdx_text

    env = SbomModel("//env:nlp-env", "blake3:" + "e" * 64, [], packages[:3], {}, "", "", epoch)
    document, bom = _validate(spdx_json(env), cyclonedx_json(env))
    env_id = next(p.spdx_id for p in document.packages if p.version == "blake3:" + "e" * 64)
    assert sorted(r.related_spdx_element_id for r in document.relationships
                  if r.relationship_type.name == "CONTAINS" and r.spdx_element_id == env_id) == sorted(
        p.spdx_id for p in document.packages if p.spdx_id != env_id)
    assert bom["metadata"]["component"]["hashes"] == [{"alg": "BLAKE3", "content": "e" * 64}]


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
