"""referrers.py: artifacts about an image added to an OCI layout a user owns and found again; links and
digests that do not match refused."""

import json
import os

import pytest

from hermetic_build.errors import UsageError
from hermetic_build.referrers import (
    DSSE_TYPE,
    OCI_MANIFEST,
    attach_to_layout,
    canonical,
    descriptor,
    layout_artifacts,
    read_layout_blob,
    sha256_of,
)


def _layout(tmp_path):
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})
    (layout / "blobs/sha256" / sha256_of(manifest)[7:]).write_bytes(manifest)
    image = descriptor(OCI_MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": "latest"})
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [image]}))
    return layout, image["digest"]


def test_attach_then_find_then_replace(tmp_path):
    layout, digest = _layout(tmp_path)
    assert list(layout_artifacts(layout, digest, DSSE_TYPE)) == []
    entry = attach_to_layout(layout, digest, DSSE_TYPE, "provenance.dsse.json", b'{"a": 1}', "provenance.dsse.json")
    manifest = json.loads(read_layout_blob(layout, entry["digest"]))
    assert manifest["subject"]["digest"] == digest and manifest["artifactType"] == DSSE_TYPE
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert list(layout_artifacts(layout, digest, DSSE_TYPE)) == [b'{"a": 1}']
    assert list(layout_artifacts(layout, "sha256:" + "0" * 64, DSSE_TYPE)) == []
    attach_to_layout(layout, digest, DSSE_TYPE, "provenance.dsse.json", b'{"a": 2}', "provenance.dsse.json")
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 2  # the image and one envelope: the earlier one replaced
    assert list(layout_artifacts(layout, digest, DSSE_TYPE)) == [b'{"a": 2}']


def test_an_image_the_layout_does_not_list_is_refused(tmp_path):
    layout, _ = _layout(tmp_path)
    with pytest.raises(UsageError, match="lists no image"):
        attach_to_layout(layout, "sha256:" + "1" * 64, DSSE_TYPE, "x", b"{}", "x")


def test_links_and_mismatched_blobs_are_refused(tmp_path):
    layout, digest = _layout(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_text((layout / "index.json").read_text())
    os.unlink(layout / "index.json")
    os.symlink(outside, layout / "index.json")
    with pytest.raises(UsageError, match="symbolic link"):
        attach_to_layout(layout, digest, DSSE_TYPE, "x", b"{}", "x")
    assert outside.read_text() == json.dumps(json.loads(outside.read_text()), separators=(",", ":"),
                                             sort_keys=True)  # untouched
    layout2, digest2 = _layout(tmp_path / "two")
    blob = layout2 / "blobs/sha256" / digest2[7:]
    blob.write_bytes(blob.read_bytes() + b" ")
    with pytest.raises(UsageError, match="does not match its digest"):
        read_layout_blob(layout2, digest2)
    with pytest.raises(UsageError, match="not a sha256 digest"):
        read_layout_blob(layout2, "sha256:../../etc/passwd")


def test_a_layouts_artifacts_are_read_one_at_a_time(tmp_path):
    """`hb attest verify LAYOUT` checks one envelope at a time, as for a registry: the layout's
    artifacts are read as they are asked for, so 64 envelopes of 12 MiB cost one envelope's memory
    (they were all read into a list first)."""
    layout, digest = _layout(tmp_path)
    entries = []
    for i in range(3):
        entries.append(attach_to_layout(layout, digest, DSSE_TYPE, f"e{i}.json", b'{"n": %d}' % i, f"e{i}.json"))
    found = layout_artifacts(layout, digest, DSSE_TYPE)
    first = next(found)
    for entry in entries:  # every artifact manifest gone once the first envelope was handed over
        os.unlink(layout / "blobs/sha256" / entry["digest"][7:])
    assert first in (b'{"n": 0}', b'{"n": 1}', b'{"n": 2}')
    with pytest.raises(UsageError):
        next(found)
