import json

from hermetic_build.api import TreeEntry, digest_bytes
from rules.oci.split import FINAL_LAYER, env_groups, layer_entries


class Blobs(dict):
    def get_blob(self, digest):
        return self.get(digest)


def _env(packages):
    """packages: name -> (depends, {path: size})"""
    blobs, entries = Blobs(), {}
    for name, (depends, files) in packages.items():
        record = json.dumps({"name": name, "depends": depends, "files": sorted(files)}).encode()
        d = digest_bytes(record)
        blobs[d] = record
        entries[f"conda-meta/{name}-1-0.json"] = TreeEntry(f"{name}-1-0.json", "file", d)
        for path, size in files.items():
            data = name.encode() + b"x" * size
            entries[path] = TreeEntry(path.rsplit("/", 1)[-1], "file", digest_bytes(data))
            parent = path.rsplit("/", 1)[0]
            entries.setdefault(parent, TreeEntry(parent, "dir", mode=0o755))
    entries["conda-meta"] = TreeEntry("conda-meta", "dir", mode=0o755)
    entries["empty"] = TreeEntry("empty", "dir", mode=0o755)
    return blobs, entries


PACKAGES = {
    "app": (["lib >=1", "python 3.11.*"], {"bin/app": 10}),
    "lib": ([], {"lib/libx.so": 1000}),
    "python": (["lib"], {"bin/python": 500}),
    "tiny": ([], {"share/tiny": 1}),
}


def test_dependencies_come_first_and_final_layer_holds_the_rest():
    blobs, entries = _env(PACKAGES)
    groups = env_groups(blobs, entries, 100)
    assert [g.name for g in groups] == ["lib", "python", "app", "tiny", FINAL_LAYER]
    assert groups[0].paths == ("lib/libx.so",)
    final = groups[-1]
    assert all(p.startswith("conda-meta/") for p in final.paths if p != "empty") and "empty" in final.paths


def test_budget_groups_the_smallest_packages():
    blobs, entries = _env(PACKAGES)
    groups = env_groups(blobs, entries, 3)  # two package layers + the final one
    assert len(groups) == 3
    assert groups[0].packages == ("python", "app", "tiny")  # the three smallest, in dependency order
    assert groups[1].packages == ("lib",)


def test_layer_entries_include_every_parent_under_the_root():
    blobs, entries = _env(PACKAGES)
    items = dict(layer_entries(("bin/app",), entries, "/opt/env"))
    assert list(items) == ["opt", "opt/env", "opt/env/bin", "opt/env/bin/app"]
