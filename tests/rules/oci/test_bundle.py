"""oci_bundle: the GPU image with its SBOMs and provenance attached as OCI artifacts (subject = the image),
in the layout and pushed to a real registry (distribution 2.8: no referrers API, so the sha256-<digest>
tag fallback), read back with skopeo."""

import hashlib
import json
import subprocess

import pytest
from support import copy_example, require_tool


@pytest.mark.slow
def test_bundle_layout_and_push_with_referrers_fallback(tmp_path, registry):
    example = copy_example(tmp_path / "examples", tmp_path / "cache")
    example.build_json("//env:nlp-gpu-bundle", "//env:nlp-gpu", "//env:nlp-gpu-sbom", "//env:nlp-gpu-provenance")
    bundle = example.root / "hb-out/env/nlp-gpu-bundle"
    image_index = json.loads((example.root / "hb-out/env/nlp-gpu/index.json").read_text())
    image_digest = image_index["manifests"][0]["digest"]
    index = json.loads((bundle / "index.json").read_text())
    assert index["manifests"][0] == image_index["manifests"][0]  # the image itself, unchanged
    artifacts = index["manifests"][1:]
    assert sorted(a["artifactType"] for a in artifacts) == [
        "application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]
    for entry in artifacts:
        data = (bundle / "blobs/sha256" / entry["digest"][7:]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == entry["digest"]
        manifest = json.loads(data)
        assert manifest["subject"]["digest"] == image_digest and manifest["artifactType"] == entry["artifactType"]
        assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        layer = manifest["layers"][0]
        blob = (bundle / "blobs/sha256" / layer["digest"][7:]).read_bytes()
        assert blob == (example.root / "hb-out/env" / ("nlp-gpu-provenance" if "in-toto" in entry["artifactType"]
                                                       else "nlp-gpu-sbom") /
                        layer["annotations"]["org.opencontainers.image.title"]).read_bytes()
    # skopeo reads the layout's image by its name
    skopeo = require_tool("skopeo")
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{bundle}:latest"], check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == image_digest

    ref = f"{registry.host}/team/nlp-gpu:v1"
    out = example.hb("push", "//env:nlp-gpu-bundle", ref)
    assert out.stdout.strip() == f"{ref}@{image_digest}"
    assert f"3 attached artifacts pushed (listed by the tag sha256-{image_digest[7:]})" in out.stderr, out.stderr
    # a client finds them the way the distribution spec's fallback says: the sha256-<hex> tag
    fallback = f"docker://{registry.host}/team/nlp-gpu:sha256-{image_digest[7:]}"
    listed = json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", fallback],
                                       check=True, capture_output=True).stdout)
    assert listed["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted(m["digest"] for m in listed["manifests"]) == sorted(a["digest"] for a in artifacts)
    spdx = next(m for m in listed["manifests"] if m["artifactType"] == "application/spdx+json")
    manifest = json.loads(subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/team/nlp-gpu@{spdx['digest']}"],
        check=True, capture_output=True).stdout)
    assert manifest["subject"]["digest"] == image_digest
    # pushing again keeps one entry per artifact in the fallback index
    example.hb("push", "//env:nlp-gpu-bundle", ref)
    again = json.loads(subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", fallback],
                                      check=True, capture_output=True).stdout)
    assert len(again["manifests"]) == 3
