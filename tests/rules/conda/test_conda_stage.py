"""The conda.stage action: rattler runs in a worker process, in bubblewrap where it is available,
and the same worker runs unsandboxed (paths relative to the execution root) where it is not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support import require_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adversarial"))
from payloads_staging import Package, file, stage_directly, symlink

PACKAGE = Package(name="plain", members=(file("share/plain/a.txt", b"made at /opt/env\n"),
                                         symlink("share/plain/b.txt", "a.txt")))


def _staged(tmp_path) -> dict[str, bytes]:
    failure, prefix, execution = stage_directly(tmp_path, PACKAGE)
    assert failure is None, (failure, bytes(execution.stderr).decode())
    assert b"rattler.install: 1 packages in" in execution.stdout
    meta = json.loads((prefix / "conda-meta/plain-1.0-0.json").read_text())
    assert "extracted_package_dir" not in meta and meta["url"] == "file:///nowhere"
    assert (prefix / "share/plain/b.txt").readlink() == Path("a.txt")
    # one link per installed file, whether the package cache was in memory or hard-linked from
    # disk: the collection moves them into the CAS instead of copying them
    assert all(p.stat().st_nlink == 1 for p in prefix.rglob("*") if p.is_file() and not p.is_symlink())
    assert meta["link"] == {"type": 3}  # a copy: nothing links to a package cache
    return {str(p.relative_to(prefix)): p.read_bytes() for p in sorted(prefix.rglob("*")) if p.is_file()}


def test_stage_in_the_sandbox_and_without_it_give_the_same_tree(tmp_path, monkeypatch):
    require_tool("bwrap")
    (tmp_path / "a").mkdir()
    sandboxed = _staged(tmp_path / "a")
    import hermetic_build.sandbox

    monkeypatch.setattr(hermetic_build.sandbox, "bwrap_path", lambda: None)
    (tmp_path / "b").mkdir()
    assert _staged(tmp_path / "b") == sandboxed
    assert sandboxed["share/plain/a.txt"] == b"made at /opt/env\n"


def test_worker_sees_nothing_of_the_host_but_python(tmp_path):
    """The read-only paths handed to bubblewrap: the Python installation and the worker, never
    the workspace, the cache or the home directory."""
    from rules.conda.stage import WORKER, python_paths

    sys_path, exposed = python_paths()
    assert str(WORKER) in exposed or any(str(WORKER).startswith(p + "/") for p in exposed)
    assert all(any(p == e or p.startswith(e + "/") for e in exposed) for p in sys_path)
    assert str(WORKER.parent.parent.parent) not in exposed  # the hb source root itself is not bound
    assert not any(Path.home() == Path(e) for e in exposed)


def test_an_escaping_link_fails_the_stage_with_the_workers_one_line(tmp_path):
    """Links are checked again in what rattler unpacked (the fetch's check never saw this archive);
    links across packages in the installed prefix: test_links_are_resolved_within_the_tree..."""
    require_tool("bwrap")
    package = Package(name="links", members=(file("share/a.txt"), symlink("share/out", "../../../etc")))
    failure, _, execution = stage_directly(tmp_path, package)
    assert failure is not None and failure.message == (
        "package links-1.0-0: link share/out -> ../../../etc leaves the package (in what rattler unpacked; "
        "the archive check saw the archive differently)")
    assert bytes(execution.stderr).decode().strip().splitlines()[-1].startswith("stage: package links-1.0-0: link")


def test_packages_that_do_not_fit_in_memory_are_staged_again_with_the_cache_on_disk(tmp_path, monkeypatch):
    """The package cache goes into the sandbox's tmpfs, limited in size; a package that expands
    beyond it (here 4 MiB of zeros, a few KiB compressed) fills it, and the stage starts again with
    the cache on disk: same tree, one link per file."""
    require_tool("bwrap")
    import rules.conda.stage

    big = Package(name="plain", members=(*PACKAGE.members, file("share/plain/zeros.bin", bytes(4 << 20))))
    (tmp_path / "a").mkdir()
    failure, prefix, execution = stage_directly(tmp_path / "a", big)
    assert failure is None, bytes(execution.stderr).decode()
    assert b"package cache in memory" in execution.stdout
    expected = {str(p.relative_to(prefix)): p.read_bytes() for p in sorted(prefix.rglob("*")) if p.is_file()}
    monkeypatch.setattr(rules.conda.stage, "memory_cache_limit", lambda: 1 << 20)
    (tmp_path / "b").mkdir()
    failure, prefix, execution = stage_directly(tmp_path / "b", big)
    assert failure is None, bytes(execution.stderr).decode()
    assert b"package cache did not fit in memory, installed again with it on disk" in execution.stdout
    assert {str(p.relative_to(prefix)): p.read_bytes() for p in sorted(prefix.rglob("*")) if p.is_file()} == expected
    assert (prefix / "share/plain/zeros.bin").stat().st_nlink == 1
    assert (execution.sandbox_dir / "tmp").is_dir() and not (execution.sandbox_dir / "tmp/pkgs").exists()


def _worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hb_stage_worker_test", Path(__file__).resolve().parents[3]
                                                  / "rules/conda/stage_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, links: dict[str, str], dirs=("share", "d")) -> Path:
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "share/f").write_text("x")
    for name, target in links.items():
        (root / name).symlink_to(target)
    return root


@pytest.mark.parametrize("links, escaping", [
    ({"l": "share/f"}, None),
    ({"d/m": "..", "l": "d/m/share/f"}, None),
    ({"d/m": "..", "l": "d/m/../env/share"}, "l"),  # the prefix's own name after `..`: out, whatever sits there
    ({"d/m": "..", "l": "d/m/.."}, "l"),
    ({"a": "b", "b": "a"}, "a|b"),  # a loop: the kernel refuses it too
    ({"l": "/opt/env/share"}, "l"),  # absolute, even where it names the prefix
    ({"l": "missing/../share"}, None),
    ({"l": "missing/../../x"}, "l"),
    ({"d/up": "..", "d/e": "up/.."}, "d/e"),
])
def test_links_are_resolved_within_the_tree_not_where_it_sits(tmp_path, links, escaping):
    """The tree sits in a directory named like the prefix's last name (the sandbox's hb-out/.../env):
    a link that climbs out and back in by that name still escapes the real prefix."""
    worker = _worker()
    root = _tree(tmp_path / "sandbox/env", links)
    if escaping is None:
        worker.check_prefix(str(root))
        assert all(worker.resolve_in_tree(str(root), name) is not None for name in links)
    else:
        with pytest.raises(worker.StageError, match=f"installed link ({escaping}) -> .* escapes the prefix"):
            worker.check_prefix(str(root))
        assert all(worker.resolve_in_tree(str(root), name) is None for name in escaping.split("|"))


def test_resolve_in_tree_follows_links_through_links():
    import tempfile

    worker = _worker()
    with tempfile.TemporaryDirectory() as tmp:
        root = _tree(Path(tmp) / "env", {"lib": "share", "d/x": "../lib/f", "y": "d/x"})
        assert worker.resolve_in_tree(str(root), "y") == "share/f"
        assert worker.resolve_in_tree(str(root), "d/x") == "share/f"


@pytest.mark.parametrize("members, paths, needle", [
    # a link in the archive that the fetch's check would have refused, and a listed path through it:
    # rattler copies the host file it reaches into the prefix as a regular file
    ((symlink("share/lnk", "/usr/lib"),), ({"_path": "share/lnk/os-release", "path_type": "hardlink"},),
     "link share/lnk -> /usr/lib leaves the package"),
    ((file("share/a\nb"),), ({"_path": "share/a\nb", "path_type": "hardlink"},),
     "entry 'share/a\\nb': a control character in its name"),
    ((file("share/ok"), symlink("share/up", "../..")), ({"_path": "share/ok", "path_type": "hardlink"},),
     "link share/up -> ../.. leaves the package"),
])
def test_what_rattler_unpacked_is_checked_whatever_the_fetch_check_saw(tmp_path, members, paths, needle):
    """stage_directly skips the fetch's archive check, as a reader difference between that check and
    rattler would: the stage refuses on what rattler itself unpacked, and nothing reaches the output."""
    require_tool("bwrap")
    failure, out, _ = stage_directly(tmp_path, Package(members=members, paths=paths))
    assert failure is not None and needle in failure.message, failure and failure.message
    assert "the archive check saw the archive differently" in failure.message


def test_an_archive_that_is_not_the_package_its_lock_entry_names_fails_the_stage(tmp_path):
    """The lock pins plain-1.0-0.tar.bz2 by sha256 and names it `plain`, but its info/index.json says
    `evil`: the SBOM and the layers would name the wrong package. The stage compares the records rattler
    wrote (conda-meta, named from index.json) with the lock entries and names the entry."""
    import pytest

    from hermetic_build.api import ActionFailed, Location
    from rules.conda.stage import check_installed_records

    failure, prefix, execution = stage_directly(tmp_path, Package(name="plain", index={"name": "evil"}))
    assert failure is not None, bytes(execution.stderr).decode()
    assert failure.message == ("plain (plain-1.0-0.tar.bz2): the archive the lock pins by sha256 is evil 1.0 0 "
                               "(its info/index.json), not the package the lock entry names")
    assert "re-lock the environment" in failure.hint
    meta = prefix / "conda-meta"
    packages = [{"filename": "plain-1.0-0.tar.bz2", "name": "plain"}]
    with pytest.raises(ActionFailed) as caught:  # where the lock entry is: the action's hints
        check_installed_records(meta, packages, "env/conda-lock.yml", {"plain-1.0-0.tar.bz2": 13})
    assert caught.value.location == Location("env/conda-lock.yml", 13)
    assert str(caught.value).startswith("action failed: env/conda-lock.yml:13: plain (plain-1.0-0.tar.bz2): the archive")

    def record(name: str, fn: str = "plain-1.0-0.tar.bz2") -> str:
        return json.dumps({"fn": fn, "name": name, "version": "1.0", "build": "0"})

    (meta / "evil-1.0-0.json").unlink()
    (meta / "plain-1.0-0.json").write_text(record("plain"))
    check_installed_records(meta, packages)  # one record, the locked package: accepted
    (meta / "extra.json").write_text(record("plain"))  # an archive that brought a record of its own
    with pytest.raises(ActionFailed) as caught:
        check_installed_records(meta, packages)
    assert caught.value.message == ("plain (plain-1.0-0.tar.bz2): 2 conda-meta records name this file, expected one "
                                    "(did its archive bring records of its own?)")
    (meta / "extra.json").write_text(record("other", "other-1.0-0.conda"))  # a package the lock does not name
    with pytest.raises(ActionFailed) as caught:
        check_installed_records(meta, packages)
    assert caught.value.message == "the staged prefix records other 1.0 0 (conda-meta), a package the lock does not name"


def test_a_record_the_sandbox_wrote_is_parsed_within_a_bound_on_its_values(tmp_path):
    """hb reads the records its stage's sandbox wrote (rattler copies a package's index.json `depends`
    into them): one whose values json.loads would make out of all proportion to its bytes is refused
    unparsed, and of the others only the fields the check uses are kept, one record at a time."""
    import pytest

    from hermetic_build.api import MAX_JSON_VALUES, TooManyJsonValues
    from rules.conda.stage import check_installed_records

    meta = tmp_path / "conda-meta"
    meta.mkdir()
    depends = ["a"] * (MAX_JSON_VALUES + 1)
    (meta / "plain-1.0-0.json").write_text(json.dumps({"fn": "plain-1.0-0.tar.bz2", "name": "plain", "version": "1.0",
                                                       "build": "0", "depends": depends}))
    with pytest.raises(TooManyJsonValues, match="conda-meta/plain-1.0-0.json in the staged prefix holds up to "):
        check_installed_records(meta, [{"filename": "plain-1.0-0.tar.bz2", "name": "plain"}])


def test_no_file_of_the_environment_is_writable_by_group_or_others(tmp_path):
    """rattler keeps a package's modes; 0666 and 0777 would let any user of an image change the env."""
    import stat as stat_module

    worker = _worker()
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_text("x")
    (root / "share").mkdir()
    (root / "share/data").write_text("x")
    (root / "lib").symlink_to("share")
    (root / "bin/tool").chmod(0o777)
    (root / "share/data").chmod(0o666)
    (root / "share").chmod(0o777)
    worker.check_prefix(str(root))
    modes = {name: stat_module.S_IMODE((root / name).lstat().st_mode) for name in ("bin/tool", "share/data", "share")}
    assert modes == {"bin/tool": 0o755, "share/data": 0o644, "share": 0o755}
    assert (root / "lib").is_symlink()
