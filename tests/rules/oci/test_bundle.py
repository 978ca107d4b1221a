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


@pytest.mark.slow
def test_signed_provenance_pushed_attached_and_verified(tmp_path, registry):
    """hb push --sign-key: the bundle's provenance is signed at push time (the key never enters a build)
    and pushed as a DSSE artifact about the image; hb attest sign --attach adds it to a layout the user
    owns; hb attest verify finds and checks it in either place."""
    import shutil

    example = copy_example(tmp_path / "examples", tmp_path / "cache")
    key = tmp_path / "hb.key"
    example.hb("keygen", str(key))
    pub = f"{key}.pub"
    ref = f"{registry.host}/team/signed:v1"
    out = example.hb("push", "//env:nlp-gpu-bundle", ref, "--sign-key", str(key), timeout=900)
    image_digest = out.stdout.strip().rsplit("@", 1)[1]
    assert f"4 attached artifacts pushed (listed by the tag sha256-{image_digest[7:]})" in out.stderr, out.stderr
    # what a registry client sees: a DSSE artifact whose subject is the image, listed by the fallback tag
    skopeo = require_tool("skopeo")
    fallback = json.loads(subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false",
         f"docker://{registry.host}/team/signed:sha256-{image_digest[7:]}"], check=True, capture_output=True).stdout)
    dsse = [m for m in fallback["manifests"] if m["artifactType"] == "application/vnd.dsse.envelope.v1+json"]
    assert len(dsse) == 1
    manifest = json.loads(subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/team/signed@{dsse[0]['digest']}"],
        check=True, capture_output=True).stdout)
    assert manifest["subject"]["digest"] == image_digest
    assert manifest["layers"][0]["mediaType"] == "application/vnd.dsse.envelope.v1+json"

    ok = example.hb("attest", "verify", ref, "--key", pub, "--lock", "env/conda-lock.gpu.yml",
                    "--lock", "base/debs.lock.json")
    assert ok.stdout.startswith("verified: signature OK") and image_digest[7:] in ok.stdout, ok.stderr
    assert example.hb("attest", "verify", f"{registry.host}/team/signed@{image_digest}", "--key", pub).returncode == 0
    other = tmp_path / "other.key"
    example.hb("keygen", str(other))
    refused = example.hb("attest", "verify", ref, "--key", f"{other}.pub", check=False)
    assert refused.returncode == 1 and "no signature" in refused.stderr
    # the CPU lock's packages are not all in the GPU image's provenance
    assert example.hb("attest", "verify", ref, "--key", pub, "--lock", "env/conda-lock.yml",
                      check=False).returncode == 1
    # an image pushed without --sign has nothing to verify
    example.hb("push", "//env:nlp-gpu-bundle", f"{registry.host}/team/unsigned:v1")
    unsigned = example.hb("attest", "verify", f"{registry.host}/team/unsigned:v1", "--key", pub, check=False)
    assert unsigned.returncode == 1 and "no signed provenance" in unsigned.stderr
    # signing needs a provenance to sign: a plain image is refused before anything is pushed
    plain = example.hb("push", "//env:nlp-gpu", f"{registry.host}/team/plain:v1", "--sign-key", str(key), check=False)
    assert plain.returncode != 0

    # the key is in no action key, record or cache entry (it never was an input)
    secret = key.read_bytes()
    body = b"".join(secret.splitlines()[1:-1])
    for path in [*example.cache.rglob("*"), *(example.root / "hb-out").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert body not in path.read_bytes(), path

    # a layout the user owns: hb attest sign --attach, then verify finds the envelope in it
    mine = tmp_path / "mine"
    shutil.copytree(example.root / "hb-out/env/nlp-gpu-bundle", mine)
    assert "no signed provenance" in example.hb("attest", "verify", str(mine), "--key", pub, check=False).stderr
    example.hb("attest", "sign", "//env:nlp-gpu-provenance", "--key", str(key), "--attach", str(mine))
    ok = example.hb("attest", "verify", str(mine), "--key", pub, "--lock", "env/conda-lock.gpu.yml")
    assert ok.stdout.startswith("verified: signature OK") and image_digest[7:] in ok.stdout
    index = json.loads((mine / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m.get("artifactType") == "application/vnd.dsse.envelope.v1+json")
    assert entry["digest"] == dsse[0]["digest"]  # ed25519 is deterministic: the same artifact as the pushed one
    example.hb("attest", "sign", "//env:nlp-gpu-provenance", "--key", str(key), "--attach", str(mine))
    assert len(json.loads((mine / "index.json").read_text())["manifests"]) == len(index["manifests"])
    # the envelope in the layout, tampered with: refused
    blob = mine / "blobs/sha256" / json.loads((mine / "blobs/sha256" / entry["digest"][7:]).read_text())[
        "layers"][0]["digest"][7:]
    blob.chmod(0o644)
    blob.write_text(blob.read_text().replace('"sig": "', '"sig": "AAAA'))
    assert example.hb("attest", "verify", str(mine), "--key", pub, check=False).returncode != 0
    # never into hb's cache
    inside = example.cache / "layout"
    shutil.copytree(example.root / "hb-out/env/nlp-gpu-bundle", inside)
    refused = example.hb("attest", "sign", "//env:nlp-gpu-provenance", "--key", str(key), "--attach", str(inside),
                         check=False)
    assert refused.returncode != 0 and "inside hb's cache" in refused.stderr
