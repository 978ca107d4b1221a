import json

import pytest

from hermetic_build.api import ActionFailed, TreeEntry, digest_bytes
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


def test_budget_puts_small_packages_in_one_shared_layer():
    blobs, entries = _env(PACKAGES)
    groups = env_groups(blobs, entries, 3)  # budget: two package layers + the final one
    assert len(groups) <= 3 and groups[-1].name == FINAL_LAYER
    # all four are under the smallest size step (1 MiB) and one bucket fits a budget of 2
    assert groups[0].packages == ("lib", "python", "app", "tiny")  # dependency order inside the layer


def _many(n_small, big=()):
    packages = {f"pkg{i:03d}": ([], {f"lib/pkg{i:03d}/f": 10 + i}) for i in range(n_small)}
    for name in big:
        packages[name] = ([], {f"lib/{name}.so": 2 << 20})
    return _env(packages)


def _layers(groups):
    return {g.packages: g.paths for g in groups if g.name != FINAL_LAYER}


def test_small_package_layers_do_not_depend_on_the_rest_of_the_environment():
    """A GPU env (= CPU env + large CUDA packages + one more small package) shares every small-package
    layer but one with the CPU env; bumping a small package rewrites only the layer that holds it."""
    blobs, entries = _many(300)
    cpu = _layers(env_groups(blobs, entries, 100))
    assert len(cpu) <= 99 and sum(len(names) for names in cpu) == 300
    blobs2, entries2 = _many(301, big=("cudnn", "cublas", "nccl"))
    gpu = _layers(env_groups(blobs2, entries2, 100))
    assert {("cudnn",), ("cublas",), ("nccl",)} <= gpu.keys()  # large packages keep their own layers
    shared = set(cpu.items()) & set(gpu.items())
    assert len(shared) >= len(cpu) - 1  # only the bucket that got pkg300 differs
    bumped = dict(entries)
    bumped["lib/pkg007/f"] = TreeEntry("f", "file", digest_bytes(b"new content of pkg007"))
    after = _layers(env_groups(blobs, bumped, 100))
    assert after.keys() == cpu.keys()
    changed = [names for names in cpu if [bumped[p] for p in cpu[names]] != [entries[p] for p in cpu[names]]]
    assert len(changed) == 1 and "pkg007" in changed[0]


def test_layer_entries_include_every_parent_under_the_root():
    blobs, entries = _env(PACKAGES)
    items = dict(layer_entries(("bin/app",), entries, "/opt/env"))
    assert list(items) == ["opt", "opt/env", "opt/env/bin", "opt/env/bin/app"]


def test_dependency_order_breaks_ties_by_name_and_cycles_at_the_first_name():
    from rules.oci.split import _ordered

    records = {
        "zlib": {"depends": []},
        "b": {"depends": ["a", "zlib >=1"]},
        "a": {"depends": ["b"]},  # a <-> b: a cycle, broken at the first name not placed ("a")
        "c": {"depends": ["a"]},
        "d": {"depends": ["missing", "d"]},  # unknown and self dependencies do not count
    }
    assert _ordered(records) == ["d", "zlib", "a", "b", "c"]


@pytest.mark.parametrize("content, needle", [
    (b"{bad", "conda-meta/zz.json is not valid JSON"),
    (b'{"files": []}', "conda-meta/zz.json names no package"),
    (b"[1]", "conda-meta/zz.json names no package"),
    (b'{"name": "q", "depends": 5}', "conda-meta/zz.json: 'depends' must be a list of strings"),
    (b'{"name": "q", "files": [["x"]]}', "conda-meta/zz.json: 'files' must be a list of strings"),
    (b'{"name": "python", "files": []}', "both record the package 'python'"),
])
def test_a_bad_or_second_record_fails_naming_the_file(content, needle):
    """The environment's tree can come from a shared cache: its records are checked, never a traceback."""
    blobs, entries = _env(PACKAGES)
    d = digest_bytes(content)
    blobs[d] = content
    entries["conda-meta/zz.json"] = TreeEntry("zz.json", "file", d)
    with pytest.raises(ActionFailed, match=needle):
        env_groups(blobs, entries, 100)


def test_an_unreadable_wheel_record_fails_naming_it():
    blobs, entries = _env(PACKAGES)
    record = b"x" * 200_000 + b",sha256=abc,1\n"  # one field over csv's limit
    d = digest_bytes(record)
    blobs[d] = record
    entries["lib/python3.11/site-packages/evil-1.dist-info/RECORD"] = TreeEntry("RECORD", "file", d)
    with pytest.raises(ActionFailed, match="evil-1.dist-info/RECORD is not a readable RECORD"):
        env_groups(blobs, entries, 100)


class NoReads(Blobs):
    def get_blob(self, digest):
        if digest.size > 1 << 20:
            raise AssertionError(f"read a blob that claims {digest.size} bytes")
        return super().get_blob(digest)


@pytest.mark.parametrize("path, size, limit", [
    ("conda-meta/zz-1-0.json", (256 << 20) + 1, "256 MiB"),
    ("lib/python3.11/site-packages/evil-1.dist-info/RECORD", 65 << 20, "64 MiB"),
    ("lib/python3.11/site-packages/evil-1.dist-info/METADATA", 3 << 30, "64 MiB"),
])
def test_a_file_layering_reads_whole_is_refused_unread_past_its_size(path, size, limit):
    """A tree from a remote cache may name blobs of any size, which were read whole into memory:
    such a file is refused by the size its digest claims, before any byte is read."""
    from hermetic_build.digest import Digest

    blobs, entries = _env(PACKAGES)
    blobs.__class__ = NoReads
    if path.endswith("METADATA"):
        record = b"evil/__init__.py,sha256=abc,1\n"
        d = digest_bytes(record)
        blobs[d] = record
        entries[path.rsplit("/", 1)[0] + "/RECORD"] = TreeEntry("RECORD", "file", d)
    entries[path] = TreeEntry(path.rsplit("/", 1)[-1], "file", Digest("ab" * 32, size))
    with pytest.raises(ActionFailed, match=f"the environment's {path} is {size:,} bytes, more than the {limit}"):
        env_groups(blobs, entries, 100)


@pytest.mark.parametrize("path, content", [
    # 32 MiB of such rows took layering 1.6 GiB and 11 s; as many empty JSON lists 0.5 GiB
    ("lib/python3.11/site-packages/evil-1.dist-info/RECORD", b"a,,\n" * 30_000),
    ("conda-meta/zz-1-0.json", json.dumps({"name": "zz", "files": [], "junk": [[]] * 120_000}).encode()),
])
def test_records_with_more_values_than_the_tree_could_need_are_refused_unparsed(path, content):
    """A tree from a remote cache may hold records of any shape: one whose values are out of all
    proportion to the tree's entries is refused on a count of its bytes, before it is parsed."""
    blobs, entries = _env(PACKAGES)
    d = digest_bytes(content)
    blobs[d] = content
    entries[path] = TreeEntry(path.rsplit("/", 1)[-1], "file", d)
    with pytest.raises(ActionFailed, match=f"the environment's {path}: its records hold more than the 100,"):
        env_groups(blobs, entries, 100)


def test_records_of_a_large_real_shaped_environment_are_within_the_budget():
    """A conda-meta record lists each file twice (files, and paths_data with 4-6 fields), a wheel's
    RECORD once: 20,000 files with man pages named like perl's (`Pod::Usage.3pm`) pass."""
    files = {f"share/man/man3/Pod::Usage::M{i}.3pm": 1 for i in range(20_000)}
    blobs, entries = _env({"perl": ([], files)})
    path = "conda-meta/perl-1-0.json"
    record = {"name": "perl", "depends": [], "files": sorted(files), "paths_data": {"paths_version": 1, "paths": [
        {"_path": f, "path_type": "hardlink", "sha256": "ab" * 32, "size_in_bytes": 1, "file_mode": "text",
         "prefix_placeholder": "/opt/placeholder"} for f in sorted(files)]}}
    data = json.dumps(record).encode()
    blobs[digest_bytes(data)] = data
    entries[path] = TreeEntry(path.rsplit("/", 1)[-1], "file", digest_bytes(data))
    groups = env_groups(blobs, entries, 100)
    assert any("perl" in group.packages for group in groups), groups
