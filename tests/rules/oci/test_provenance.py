"""oci_provenance + hb keygen / hb attest: a SLSA v1 in-toto Statement about the example GPU image,
signed as a DSSE envelope, checked by hb and cross-checked with securesystemslib's own DSSE code."""

import copy
import json

import pytest
import yaml
from support import copy_example


@pytest.mark.slow
def test_signed_provenance_of_the_gpu_image(tmp_path):
    example = copy_example(tmp_path / "examples", tmp_path / "cache")
    key = tmp_path / "keys" / "hb.key"
    key.parent.mkdir()
    example.hb("keygen", str(key))
    assert oct(key.stat().st_mode & 0o777) == "0o600" and (tmp_path / "keys/hb.key.pub").is_file()
    assert "never overwrites" in example.hb("keygen", str(key), check=False).stderr

    # hb-out/ can come with a checkout: a link where the envelope goes is replaced, never written through
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (example.root / "hb-out/env").mkdir(parents=True)
    (example.root / "hb-out/env/nlp-gpu-provenance.dsse.json").symlink_to(victim)
    example.hb("attest", "sign", "//env:nlp-gpu-provenance", "--key", str(key), timeout=600)
    envelope_path = example.root / "hb-out/env/nlp-gpu-provenance.dsse.json"
    assert victim.read_text() == "precious\n" and not envelope_path.is_symlink()
    assert oct(envelope_path.stat().st_mode & 0o777) == "0o644"
    envelope = json.loads(envelope_path.read_text())
    statement = json.loads((example.root / "hb-out/env/nlp-gpu-provenance/provenance.intoto.json").read_text())
    example.build_json("//env:nlp-gpu")
    index = json.loads((example.root / "hb-out/env/nlp-gpu/index.json").read_text())
    manifest = index["manifests"][0]["digest"]
    assert statement["subject"][0]["digest"]["sha256"] == manifest[7:]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    lock = yaml.safe_load((example.root / "env/conda-lock.gpu.yml").read_text())
    locked = {p["hash"]["sha256"] for p in lock["package"]}
    debs = {p["sha256"] for p in json.loads((example.root / "base/debs.lock.json").read_text())["packages"]}
    assert locked | debs <= {d["digest"]["sha256"] for d in deps}
    assert {d["uri"] for d in deps if d["annotations"]["kind"] == "lockfile"} == {"env/conda-lock.gpu.yml",
                                                                               "base/debs.lock.json"}
    manifest_doc = json.loads((example.root / "hb-out/env/nlp-gpu/blobs/sha256" / manifest[7:]).read_text())
    assert [b["digest"]["sha256"] for b in statement["predicate"]["runDetails"]["byproducts"]] == \
        [layer["digest"][7:] for layer in manifest_doc["layers"]]

    pub = str(tmp_path / "keys/hb.key.pub")
    ok = example.hb("attest", "verify", str(envelope_path), "--key", pub, "--image", "hb-out/env/nlp-gpu",
                    "--lock", "env/conda-lock.gpu.yml", "--lock", "base/debs.lock.json")
    assert ok.stdout.startswith("verified: signature OK") and manifest[7:] in ok.stdout
    # the CPU lock's packages (its CPU hb-accel) are not all in the GPU image
    assert example.hb("attest", "verify", str(envelope_path), "--key", pub, "--lock", "env/conda-lock.yml",
                      check=False).returncode == 1
    # another image's digest, another key, a changed payload: all refused
    wrong = example.hb("attest", "verify", str(envelope_path), "--key", pub, "--subject", "sha256:" + "0" * 64,
                       check=False)
    assert wrong.returncode == 1 and "not sha256:000" in wrong.stderr
    other = tmp_path / "keys" / "other.key"
    example.hb("keygen", str(other))
    assert "no signature" in example.hb("attest", "verify", str(envelope_path), "--key", f"{other}.pub",
                                        check=False).stderr
    import base64

    tampered = dict(envelope, payload=base64.b64encode(json.dumps({**statement, "subject": []}).encode()).decode())
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    assert example.hb("attest", "verify", str(tmp_path / "tampered.json"), "--key", pub, check=False).returncode == 1

    # the same envelope, checked by securesystemslib's DSSE implementation (not hb's opinion of the format)
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    public = load_pem_public_key((tmp_path / "keys/hb.key.pub").read_bytes())
    from hermetic_build.attest import keyid

    parsed = Envelope.from_dict(copy.deepcopy(envelope))  # from_dict consumes its argument
    verified = parsed.verify([SSlibKey.from_crypto(public, keyid=keyid(public))], 1)
    assert list(verified) == [envelope["signatures"][0]["keyid"]]
    assert json.loads(parsed.payload) == statement

    # ed25519 is deterministic: signing again gives the same envelope
    example.hb("attest", "sign", "//env:nlp-gpu-provenance", "--key", str(key), "-o", str(tmp_path / "again.json"))
    assert json.loads((tmp_path / "again.json").read_text()) == envelope


@pytest.mark.slow
def test_provenance_names_the_action_keys_and_is_reproducible_across_directories(tmp_path):
    """buildDefinition carries the BLAKE3 key of every action upstream of the image; two clean builds in
    different directories write byte-identical statements, and no action key encodes a machine path."""
    statements, plans = [], []
    for name in ("one", "elsewhere/two"):
        example = copy_example(tmp_path / name / "examples", tmp_path / name / "cache")
        example.build_json("//env:nlp-gpu-provenance")
        statements.append((example.root / "hb-out/env/nlp-gpu-provenance/provenance.intoto.json").read_bytes())
        plans.append(json.loads(example.hb("aquery", "--json", "//env:nlp-gpu-provenance").stdout))
        assert str(example.root) not in example.hb("aquery", "--json", "//env:nlp-gpu-provenance").stdout
        assert str(tmp_path) not in json.dumps(plans[-1])
        # every field hashed into every key (as recorded for hb explain): no path of this machine
        records = list(example.cache.glob("workspaces/*/actions.json"))
        assert records and all(str(tmp_path) not in r.read_text() for r in records)
    assert statements[0] == statements[1]
    assert [s["key"] for s in plans[0]] == [s["key"] for s in plans[1]]
    keys = json.loads(statements[0])["predicate"]["buildDefinition"]["internalParameters"]["action_keys"]
    by_key = {s["key"]: s for s in plans[0]}
    own = next(s for s in plans[0] if s["mnemonic"] == "OciProvenance")
    upstream = [s for s in plans[0] if s is not own]
    assert {k["blake3"] for k in keys} <= set(by_key)  # every key named is a key of the graph
    assert len(keys) == len(upstream) and keys == sorted(keys, key=lambda k: (k["target"], k["mnemonic"],
                                                                                k["output"], k["blake3"]))
    mnemonics = {k["mnemonic"] for k in keys}
    assert {"OciImage", "OciLayers", "CondaStage", "DebFetch", "DebExtract"} <= mnemonics
    assert "OciProvenance" not in mnemonics  # never its own key
