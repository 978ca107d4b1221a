"""hb trees <-> REAPI Directory trees, and the checks on trees and descriptions from the wire."""

import hashlib
import json
import os

import pytest

pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as pb

from hermetic_build.action import Action, File
from hermetic_build.label import Label
from hermetic_build.rexec import description
from hermetic_build.rexec.merkle import (BlobIngest, InputRoot, RemoteTreeError, Upload, hb_tree_to_reapi,
                                         reapi_tree_to_hb)
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import materialize_tree, restore_special_bits, store_tree


class FakeCas:
    """The SHA-256 side of a CAS, in memory, with the verification ReapiStore does on reads."""

    def __init__(self, blobs: dict):
        self.blobs = {sha: (data if isinstance(data, bytes) else open(data, "rb").read())
                      for sha, (_n, data) in blobs.items()}

    def read_sha_many(self, pairs, sink):
        for sha, size in pairs:
            data = self.blobs.get(sha)
            if data is not None and len(data) == size and hashlib.sha256(data).hexdigest() == sha:
                sink(sha, data)

    def fetch_sha(self, sha, size, dest, **_):
        data = self.blobs.get(sha)
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            return False
        with open(dest, "wb") as f:
            f.write(data)
        return True


def _sample(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "lib" / "deep" / "data.txt").write_text("data\n")
    os.chmod(root / "lib" / "deep", 0o750)
    (root / "lib" / "empty").mkdir()
    (root / "lib" / "same.txt").write_text("data\n")
    os.symlink("deep/data.txt", root / "lib" / "link")
    os.chmod(root / "lib" / "same.txt", 0o600)
    os.chmod(root / "lib" / "empty", 0o1777)  # a sticky /tmp, as a base image has


def _roundtrip(tmp_path, root_dir):
    store = LocalStore(tmp_path / "a")
    tree = store_tree(store, root_dir)
    upload = Upload()
    sha, _size = hb_tree_to_reapi(pb, store, tree, upload, {}, {})
    messages = {s: data for s, (_n, data) in upload.blobs.items() if isinstance(data, bytes)}
    root = pb.Directory()
    root.ParseFromString(messages[sha])
    children = {}
    for s, data in messages.items():
        if s != sha:
            d = pb.Directory()
            d.ParseFromString(data)
            children[s] = d
    other = LocalStore(tmp_path / "b")
    return tree, reapi_tree_to_hb(pb, root, children, BlobIngest(FakeCas(upload.blobs), other)), other


def test_tree_roundtrip_keeps_the_hb_digest_modes_and_links(tmp_path):
    src = tmp_path / "src"
    _sample(src)
    tree, back, other = _roundtrip(tmp_path, src)
    assert back == tree  # same BLAKE3 tree: names, kinds, contents and modes all survived
    out = tmp_path / "out"
    materialize_tree(other, back, out)
    assert os.readlink(out / "lib" / "link") == "deep/data.txt"
    assert (out / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (out / "lib" / "deep").stat().st_mode & 0o777 == 0o750
    assert (out / "lib" / "same.txt").stat().st_mode & 0o777 == 0o600
    assert (out / "lib" / "empty").stat().st_mode & 0o7777 == 0o777  # materialize_tree: permission bits only
    restore_special_bits(other, back, out)
    assert (out / "lib" / "empty").stat().st_mode & 0o7777 == 0o1777
    assert store_tree(other, out) == tree  # read back: the same tree


@pytest.mark.parametrize("view", ["local store", "client's view"])
def test_a_blob_that_changed_in_the_local_store_is_never_sent(tmp_path, view):
    """A blob changed on disk after it was stored (a disk error, a write into the cache): the tree's
    SHA-256 side must not be computed from (and upload) the changed bytes, whether the tree is read
    through the local store (the worker) or through the client's view of the build's stores."""
    from hermetic_build.rexec.client import _Blobs
    from hermetic_build.tree import MissingBlob, read_directory

    src = tmp_path / "src"
    _sample(src)
    store = LocalStore(tmp_path / "a")
    tree = store_tree(store, src)
    tool = next(e for e in read_directory(store, next(e for e in read_directory(store, tree)
                                                         if e.name == "bin").digest) if e.name == "tool")
    blob = store.blob_path(tool.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.write(b"#!/bin/sh\nrm -rf\n"[:tool.digest.size])  # the same size, other bytes
    reader = LocalStore(tmp_path / "a")
    with pytest.raises(MissingBlob):
        hb_tree_to_reapi(pb, reader if view == "local store" else _Blobs(reader, reader), tree, Upload(), {}, {})
    assert not blob.exists()  # removed as corrupt: its producer runs again


def _directory(**lists):
    d = pb.Directory()
    for f in lists.get("files", ()):
        d.files.add(name=f, digest=pb.Digest(hash=hashlib.sha256(b"x").hexdigest(), size_bytes=1))
    for s in lists.get("symlinks", ()):
        d.symlinks.add(name=s, target="x")
    return d


@pytest.mark.parametrize("bad", [
    {"files": [".."]}, {"files": ["a/b"]}, {"files": [""]}, {"files": ["a", "a"]},
    {"files": ["a"], "symlinks": ["a"]}, {"files": ["n\0ul"]},
])
def test_hostile_names_are_refused_before_anything_is_written(tmp_path, bad):
    store = LocalStore(tmp_path / "s")
    cas = FakeCas({hashlib.sha256(b"x").hexdigest(): (1, b"x")})
    with pytest.raises(RemoteTreeError):
        reapi_tree_to_hb(pb, _directory(**bad), {}, BlobIngest(cas, store))


def test_corrupt_or_missing_blobs_and_directories_are_refused(tmp_path):
    store = LocalStore(tmp_path / "s")
    sha = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(RemoteTreeError, match="missing"):  # the server answers other bytes for the digest
        reapi_tree_to_hb(pb, _directory(files=["f"]), {}, BlobIngest(FakeCas({sha: (1, b"y")}), store))
    root = pb.Directory()
    root.directories.add(name="sub", digest=pb.Digest(hash="ab" * 32, size_bytes=3))
    with pytest.raises(RemoteTreeError, match="missing from the tree"):
        reapi_tree_to_hb(pb, root, {}, BlobIngest(FakeCas({}), store))
    bad = pb.Directory()
    bad.files.add(name="f", digest=pb.Digest(hash="../../etc", size_bytes=1))
    with pytest.raises(RemoteTreeError, match="not a SHA-256"):
        reapi_tree_to_hb(pb, bad, {}, BlobIngest(FakeCas({}), store))
    setuid = _directory(files=["f"])
    setuid.files[0].node_properties.unix_mode.value = 0o104755
    with pytest.raises(RemoteTreeError, match="not a permission mode"):
        reapi_tree_to_hb(pb, setuid, {}, BlobIngest(FakeCas({sha: (1, b"x")}), store))


def test_input_root_paths(tmp_path):
    root = InputRoot(pb)
    root.add_bytes("p/in.txt", b"hello")
    root.add_bytes(".hb/action.json", b"{}")
    digest = root.finish()
    top = pb.Directory()
    top.ParseFromString(root.upload.blobs[digest.hash][1])
    assert [d.name for d in top.directories] == [".hb", "p"]
    for bad in ("../x", "/abs", "a//b", "a/./b"):
        with pytest.raises(ValueError):
            root.add_bytes(bad, b"")
    with pytest.raises(ValueError):
        root.add_bytes("p/in.txt/under", b"")


def _action(**kw):
    fields = dict(owner=Label("p", "g"), mnemonic="Genrule", kind="shell", version="1",
                  inputs=(File("p/in.txt"), File("hb-out/p/a/a.txt", Label("p", "a"))),
                  outputs=(File("hb-out/p/g/o.txt", Label("p", "g")),), params_json='{"cmd":"true"}',
                  platform="linux-64", env_allowlist=("FOO",), description="Genrule //p:g")
    fields.update(kw)
    return Action(**fields)


def test_description_roundtrip_and_strict_schema():
    action = _action()
    data = description.encode(action, {"FOO": "1", "SECRET": "no"}, 0)
    back = description.decode(data)
    assert back.action == action and back.env == {"FOO": "1"} and back.source_date_epoch == 0
    obj = json.loads(data)

    def refused(**changes):
        bad = {**obj, **changes}
        with pytest.raises(description.BadDescription):
            description.decode(json.dumps(bad).encode())

    refused(inputs=[{"path": "../../etc/passwd", "owner": None, "dir": False}])
    refused(outputs=[{"path": "/tmp/x", "owner": "//p:g", "dir": False}])
    refused(outputs=[{"path": ".hb/action.json", "owner": "//p:g", "dir": False}])
    refused(outputs=[])
    refused(owner="not a label")
    refused(env={"PATH": "/evil"})  # not allow-listed
    refused(source_date_epoch=-1)
    refused(v=2)
    refused(params="{not json")
    refused(extra_field=1)
    with pytest.raises(description.BadDescription):
        description.decode(b"[" * 100000)


def test_outputs_lie_neither_above_nor_below_inputs_or_outputs():
    obj = json.loads(description.encode(_action(), {}, 0))
    for inputs, outputs in ((["d"], ["d/l/sub/o.txt"]), (["d-x", "d"], ["d/o"]), ([], ["o", "o/p"]),
                            (["in/x"], ["in"])):
        bad = {**obj, "inputs": [{"path": p, "owner": None, "dir": True} for p in inputs],
               "outputs": [{"path": p, "owner": "//p:g", "dir": False} for p in outputs]}
        with pytest.raises(description.BadDescription):
            description.decode(json.dumps(bad).encode())
    ok = {**obj, "inputs": [{"path": "a/b", "owner": None, "dir": False}, {"path": "a/c", "owner": None, "dir": True}],
          "outputs": [{"path": "a/d", "owner": "//p:g", "dir": False}]}
    description.decode(json.dumps(ok).encode())
