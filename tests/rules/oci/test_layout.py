import json

from oci_support import validate

from rules.oci.layout import OCI_CONFIG, OCI_MANIFEST, canonical, read_layout, write_layout


def test_written_layout_validates_and_reads_back(tmp_path):
    config = canonical({"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
                        "config": {"Env": ["A=1"]}, "rootfs": {"type": "layers", "diff_ids": []}})
    import hashlib

    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                                     "size": len(config)},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                      "digest": "sha256:" + "0" * 64, "size": 1}]})
    digest = write_layout(tmp_path, manifest, config, {"architecture": "amd64", "os": "linux"}, "v1")
    validate("image-index-schema", json.loads((tmp_path / "index.json").read_text()))
    validate("image-layout-schema", json.loads((tmp_path / "oci-layout").read_text()))
    validate("image-manifest-schema", json.loads(manifest))
    validate("config-schema", json.loads(config))
    image = read_layout(tmp_path, "v1")
    assert image.manifest_digest == digest and image.config == config
