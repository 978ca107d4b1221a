"""Hostile base images and image layouts (a red team's findings, seventh session): digests that name
files outside the layout, indexes that name their manifest by tag, layer bodies longer than their
descriptor, decompression and hard-link bombs, huge tar headers and JSON of the wrong shape end in a
clean error, within a bound, reading nothing outside the layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from hermetic_build.api import ActionFailed
from rules.oci import base, deb_extract
from rules.oci.layout import OCI_MANIFEST, LayoutError, blob_path, read_layout, write_blob, write_layout


def _config(diff_ids=(), inner=None) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": inner or {},
                       "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}).encode()


def _layout(tmp_path, layers: list[bytes], config: bytes | None = None, manifest_extra: dict | None = None):
    """A layout of one image whose gzip layers are `layers` (tar bytes); returns (layout, manifest digest)."""
    layout = tmp_path / "layout"
    layout.mkdir()
    descriptors, diff_ids = [], []
    for tar_bytes in layers:
        blob = gzip.compress(tar_bytes, mtime=0)
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": write_blob(layout, blob), "size": len(blob)})
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
    config = config if config is not None else _config(diff_ids)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": descriptors,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
                **(manifest_extra or {})}
    digest = write_layout(layout, json.dumps(manifest).encode(), config, {"architecture": "amd64", "os": "linux"},
                          "latest")
    return layout, digest


def _tar(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, **pax) -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.pax_headers = len(data), 0o644, pax
    return info, data


def _hardlink(name: str, target: str) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, None


# ----- the layout's digests name files inside it, and only regular files are read ------------------------
@pytest.mark.parametrize("digest", ["sha256:/etc/passwd", "sha256:../../x", "sha512:" + "0" * 128, "sha256:ABC", 5])
def test_a_digest_that_is_not_sha256_hex_names_no_file(tmp_path, digest):
    with pytest.raises(LayoutError, match="is not a sha256 digest"):
        blob_path(tmp_path, digest)


def test_a_config_digest_naming_a_host_file_is_refused_unread(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    layout, digest = _layout(tmp_path, [], manifest_extra={"config": {"digest": f"sha256:{secret}", "size": 7}})
    with pytest.raises(LayoutError, match="is not a sha256 digest"):
        read_layout(layout, digest=digest)


def test_a_blob_that_is_a_fifo_fails_instead_of_hanging(tmp_path):
    layout, digest = _layout(tmp_path, [])
    manifest = json.loads(blob_path(layout, digest).read_bytes())
    config = blob_path(layout, manifest["config"]["digest"])
    config.unlink()
    os.mkfifo(config)  # nobody writes it: a blocking read would never end
    with pytest.raises(LayoutError, match="is not a regular file"):
        read_layout(layout, digest=digest)


@pytest.mark.parametrize("index", [b"{bad", b'{"manifests": [{"mediaType": "x"}]}', b'{"manifests": 5}'])
def test_an_index_of_the_wrong_shape_is_a_layout_error(tmp_path, index):
    layout, digest = _layout(tmp_path, [])
    (layout / "index.json").write_bytes(index)
    with pytest.raises(LayoutError):
        read_layout(layout)


@pytest.mark.parametrize("inner, needle", [
    ("a string", "'config' must be an object"),
    ({"Env": 5}, "config.Env must be a list of strings"),
    ({"Cmd": "sh"}, "config.Cmd must be a list of strings"),
    ({"User": 0}, "config.User must be a string"),
    ({"Labels": {"a": 1}}, "config.Labels must map strings to strings"),
])
def test_a_base_config_of_the_wrong_shape_is_refused_at_import(inner, needle):
    config = json.loads(_config())
    config["config"] = inner
    with pytest.raises(ActionFailed, match=needle):
        base._check_config(config)


# ----- a registry base: the pin covers what the index names, a layer body stops at its size -------------
class _Registry:
    def __init__(self, manifests: dict):
        self.manifests = manifests

    def get_manifest(self, repo, reference):
        return (self.manifests[reference], "") if reference in self.manifests else None


def test_an_index_entry_must_name_its_manifest_by_digest():
    with pytest.raises(ActionFailed, match="names its linux/amd64 manifest by 'v1', not by a sha256 digest"):
        base._pinned_manifest(_Registry({"v1": b"{}"}), "repo", "v1")
    with pytest.raises(ActionFailed, match="does not exist"):
        base._pinned_manifest(_Registry({}), "repo", "sha256:" + "0" * 64)


def test_a_layer_body_is_read_to_at_most_one_byte_past_its_size():
    class Endless:
        served = 0

        def read(self, n):
            Endless.served += n
            return b"\0" * n

    out = io.BytesIO()
    base._copy(Endless(), out, 10240)
    assert len(out.getvalue()) == 10241 and Endless.served == 10241


# ----- unpacking an image's layers (env_run(image = ...)): budgets ------------------------------------
@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(deb_extract, "UNPACK_FLOOR_BYTES", 1 << 20)
    monkeypatch.setattr(deb_extract, "MAX_UNPACK_RATIO", 20)


def test_a_decompression_bomb_layer_stops_at_the_budget(tmp_path, small_budget):
    layout, _ = _layout(tmp_path, [_tar(_file("zeros", b"\0" * (8 << 20)))])  # ~8 KiB of gzip
    with pytest.raises(deb_extract.ExtractError, match="refusing to unpack more than 1,048,576 bytes"):
        deb_extract.unpack_image(layout, "latest", tmp_path / "root")


def test_hard_links_count_as_the_copies_they_become(tmp_path, small_budget):
    data = os.urandom(256 << 10)  # incompressible: the ratio alone would allow it
    links = [_hardlink(f"l{i}", "f") for i in range(100)]  # 100 copies, 25 MiB, from a layer of 256 KiB
    layout, _ = _layout(tmp_path, [_tar(_file("f", data), *links)])
    with pytest.raises(deb_extract.ExtractError, match="hard-link copies included"):
        deb_extract.unpack_image(layout, "latest", tmp_path / "root")
    assert sum(p.stat().st_size for p in (tmp_path / "root").iterdir()) <= 6 << 20


def test_an_extended_header_larger_than_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(deb_extract, "MAX_HEADER_BYTES", 4096)
    layout, _ = _layout(tmp_path, [_tar(_file("f", b"x", comment="c" * 10000))])
    with pytest.raises(deb_extract.ExtractError, match="an extended tar header of"):
        deb_extract.unpack_image(layout, "latest", tmp_path / "root")


def test_an_ordinary_image_still_unpacks(tmp_path):
    layout, _ = _layout(tmp_path, [_tar(_file("etc/os", b"hb\n"), _hardlink("etc/os2", "etc/os"))])
    facts, _ = deb_extract.unpack_image(layout, "latest", tmp_path / "root")
    assert (tmp_path / "root/etc/os2").read_bytes() == b"hb\n" and facts["env"] == []


# ----- hb's view of a layer is the runtime's (helper D's red team) -----------------------------------
def _global_pax_layer(records: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=records) as tar:
        for name, data in (("usr/bin/tool", b"what the image runs\n"), ("etc/os-release", b"ID=hb\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_global_pax_header_that_renames_members_is_refused(tmp_path):
    """tarfile applies a global PAX header's `path` to every member after it; containerd and docker
    (Go's archive/tar) ignore global headers. A layer whose global header says path=etc/motd had
    `env_run(image = ...)` and hb's view of the root see one file etc/motd where the image runs
    usr/bin/tool and etc/os-release."""
    layout, _ = _layout(tmp_path, [_global_pax_layer({"path": "etc/motd"})])
    with pytest.raises(deb_extract.ExtractError, match="global PAX header"):
        deb_extract.unpack_image(layout, "latest", tmp_path / "root")
    assert not (tmp_path / "root" / "etc" / "motd").exists()


def test_a_global_pax_comment_is_harmless(tmp_path):
    """`git archive` writes a global header with only a comment: nothing a member takes from it."""
    layout, _ = _layout(tmp_path, [_global_pax_layer({"comment": "0123abcd"})])
    deb_extract.unpack_image(layout, "latest", tmp_path / "root")
    assert (tmp_path / "root/usr/bin/tool").read_bytes() == b"what the image runs\n"


def _symlink(name: str, target: str) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


@pytest.mark.parametrize("links", [[("a", "a")], [("a", "b"), ("b", "a")], [("a", "f")]],
                         ids=["to-itself", "a-loop", "to-a-file"])
def test_a_member_under_a_link_that_leads_nowhere_is_a_clean_error(tmp_path, links):
    """A member `a/x` under a link `a -> a` (or a loop of two, or a link to a file) ended the unpack
    with a bare FileExistsError traceback: now an ExtractError naming the layer, the member and `a`."""
    layout, _ = _layout(tmp_path, [_tar(_file("f", b"file\n"), *(_symlink(n, t) for n, t in links)),
                                   _tar(_file("a/x", b"x\n"))])
    with pytest.raises(deb_extract.ExtractError, match=r"layer 1 .*: a/x cannot be written: a is not a directory"):
        deb_extract.unpack_image(layout, "latest", tmp_path / "root")


def test_a_member_under_a_chain_of_links_inside_the_root_is_written_where_they_lead(tmp_path):
    directory = tarfile.TarInfo("c")
    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
    layout, _ = _layout(tmp_path, [_tar(_symlink("a", "b"), _symlink("b", "c"), (directory, None)),
                                   _tar(_file("a/x", b"x\n"))])
    deb_extract.unpack_image(layout, "latest", tmp_path / "root")
    assert (tmp_path / "root/c/x").read_bytes() == b"x\n" and os.path.islink(tmp_path / "root/a")
