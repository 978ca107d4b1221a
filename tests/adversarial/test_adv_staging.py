"""Issue 8, items 2, 3 and 9: hostile conda packages cannot write or read outside the prefix, an
absolute path is a clean error, and an archive bomb is refused with a limit one can raise.

Two layers: the fetch's archive check refuses the payloads (tests through `hb build`), and the
stage runs in the sandbox, so that the same payloads, handed straight to the stage with no check,
still cannot reach the host (test_unchecked_*)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from payloads_staging import (Package, RawPackage, adopt_lock, directory, file, files_containing, hardlink, noarch_python,
                              paths_json, python_package, stage_directly, symlink, ustar, zeros)
from support import Workspace, require_tool

from hermetic_build.api import ActionFailed
from rules.conda.archive import UnpackLimits

pytestmark = pytest.mark.slow

SECRET = b"HB-ADVERSARIAL-SECRET-7f3a9c\n"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "hermetic.toml").write_text("")
    return Workspace(root, tmp_path / "cache")


def _up_to_root(path: Path) -> str:
    """A relative path from anywhere (40 levels deep at most) to the absolute path."""
    return "../" * 40 + str(path).lstrip("/")


def _hardlink_outside(victim: Path) -> Package:
    """Item 2: a paths.json entry that climbs out of the prefix onto a host file."""
    return Package(members=(file("share/ok.txt"),),
                   paths=({"_path": _up_to_root(victim), "path_type": "hardlink"},))


def _chain_to(host_dir: Path, name: str) -> tuple[Package, str]:
    """Item 3: `a/l -> ..`, then a member reached through 20 such links whose target is lexically
    inside the archive but really outside, and a paths.json entry that reads through it."""
    chain = "a/l/" * 20
    package = Package(members=(directory("a"), symlink("a/l", ".."), symlink(chain + "x", _up_to_root(host_dir))),
                      paths=({"_path": f"{chain}x/{name}", "path_type": "hardlink"},))
    return package, f"{chain}x"


def _build_fails(ws: Workspace, *needles: str):
    proc = ws.hb("build", "//env:env", check=False)
    assert proc.returncode == 5, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr, proc.stderr
    assert not (ws.root / "hb-out/env/env/env").exists()
    return proc


# ----- (a) item 2: paths.json hardlink entry outside the prefix ---------------------------------
def test_paths_json_entry_outside_prefix_is_refused_and_victim_untouched(ws, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n" * 100)
    archive = _hardlink_outside(victim).write(tmp_path)
    adopt_lock(ws, [archive])
    _build_fails(ws, "evil-1.0-0.tar.bz2: refusing info/paths.json entry '../", "'..' component")
    assert victim.read_bytes() == b"precious data\n" * 100 and victim.stat().st_size == 1400


# ----- (b) item 3: the `a/l -> ..` chain reading a host file ------------------------------------
@pytest.mark.parametrize("host_file", ["tmp", "/etc/hostname"])
def test_symlink_chain_reading_a_host_file_is_refused(ws, tmp_path, host_file):
    source = tmp_path / "host" / "secret.txt" if host_file == "tmp" else Path(host_file)
    if host_file == "tmp":
        source.parent.mkdir()
        source.write_bytes(SECRET)
    package, link = _chain_to(source.parent, source.name)
    adopt_lock(ws, [package.write(tmp_path)])
    _build_fails(ws, "evil-1.0-0.tar.bz2: refusing archive entry", f"{link}': it lies under the symlink 'a/l'")
    for root in (ws.cache, ws.root):
        assert files_containing(root, SECRET) == []
        assert [p for p in root.rglob("secret.txt")] == [] and [p for p in root.rglob("hostname")] == []


def test_link_target_through_a_link_is_refused_even_without_a_path_through_it(ws, tmp_path):
    """`b -> a/l/../..`: lexically inside (it normalises to '.'), really the prefix's parent."""
    package = Package(members=(directory("a"), symlink("a/l", ".."), symlink("b", "a/l/../..")))
    adopt_lock(ws, [package.write(tmp_path)])
    _build_fails(ws, "refusing link 'b -> a/l/../..': it escapes the prefix")


# ----- (c) absolute _path: a clean error, not a panic -------------------------------------------
def test_absolute_paths_json_entry_is_a_clean_error(ws, tmp_path):
    target = tmp_path / "abs.txt"
    package = Package(members=(file("share/ok.txt"),), paths=({"_path": str(target), "path_type": "hardlink"},))
    adopt_lock(ws, [package.write(tmp_path)])
    _build_fails(ws, f"evil-1.0-0.tar.bz2: refusing info/paths.json entry '{target}': absolute path")
    assert not target.exists()


# ----- (d) item 9: archive bombs ----------------------------------------------------------------
def test_bomb_is_refused_with_the_limit_message(ws, tmp_path):
    bomb = Package(name="bomb", members=(zeros("share/zeros", 200 << 20),)).write(tmp_path)
    compressed = bomb.stat().st_size
    assert compressed < 2000
    adopt_lock(ws, [bomb])
    proc = _build_fails(ws, "bomb-1.0-0.tar.bz2: refusing to unpack: it expands to at least",
                        f"from {compressed:,} compressed bytes", "the limit is 1,000:1",
                        "raise the limit on its conda_env target (max_unpack_ratio = ")
    assert "[conda] max_unpack_ratio" in proc.stderr


def test_raising_the_limit_lets_a_genuine_large_package_pass(ws, tmp_path):
    size = 80 << 20  # over the 64 MiB floor, and thousands of times its compressed size
    bomb = Package(name="bomb", members=(zeros("share/zeros", size),)).write(tmp_path)
    adopt_lock(ws, [bomb])
    _build_fails(ws, "refusing to unpack")
    adopt_lock(ws, [bomb], attrs=", max_unpack_ratio = 1000000")
    summary = json.loads(ws.hb("build", "--json", "//env:env").stdout)
    tree = ws.root / summary["targets"]["//env:env"][0]["path"]
    assert (tree / "share/zeros").stat().st_size == size


def test_workspace_setting_raises_the_limit(ws, tmp_path):
    bomb = Package(name="bomb", members=(zeros("share/zeros", 80 << 20),)).write(tmp_path)
    adopt_lock(ws, [bomb])
    (ws.root / "hermetic.toml").write_text("[conda]\nmax_unpack_ratio = 1000000\n")
    ws.hb("build", "//env:env")


def test_invalid_limit_is_an_analysis_error(ws, tmp_path):
    adopt_lock(ws, [Package(members=(file("share/ok.txt"),)).write(tmp_path)], attrs=", max_unpack_ratio = -5")
    proc = ws.hb("build", "//env:env", check=False)
    assert proc.returncode == 4 and "max_unpack_ratio must be a positive integer" in proc.stderr, proc.stderr


# ----- (e) defense in depth: the stage itself, on unchecked archives, in the sandbox ------------
def _stage_unchecked(tmp_path: Path, package: Package):
    require_tool("bwrap")
    failure, prefix, _ = stage_directly(tmp_path, package)
    return failure, prefix


def test_unchecked_hardlink_outside_prefix_cannot_touch_the_host(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n" * 100)
    failure, _ = _stage_unchecked(tmp_path, _hardlink_outside(victim))
    assert victim.read_bytes() == b"precious data\n" * 100
    # inside the sandbox the host path does not exist: rattler fails, with one clean line
    assert failure is not None and "installing into /opt/env failed" in failure.message
    assert "\n" not in failure.message


def test_unchecked_symlink_chain_cannot_read_the_host(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.txt").write_bytes(SECRET)
    package, _ = _chain_to(host, "secret.txt")
    failure, _ = _stage_unchecked(tmp_path, package)
    assert failure is not None
    assert files_containing(tmp_path / "sandboxes", SECRET) == []
    assert (host / "secret.txt").read_bytes() == SECRET


def test_unchecked_absolute_path_is_an_action_failure_not_a_crash(tmp_path):
    """rattler panics on an absolute _path (it aborts the process, or cancels the install, depending
    on which thread panics first): in the worker, either is one failed action with a one-line message."""
    target = tmp_path / "abs.txt"
    package = Package(members=(file("share/ok.txt"),), paths=({"_path": str(target), "path_type": "hardlink"},))
    failure, _ = _stage_unchecked(tmp_path, package)
    assert failure is not None and "\n" not in failure.message, failure
    assert ("was killed by signal 6 (SIGABRT)" in failure.message
            or "installing into /opt/env failed: InstallerError" in failure.message), failure
    assert not target.exists()


# ----- a poisoned fetch result: the stage checks each archive against the lock's sha256 -----------
def test_poisoned_fetch_entry_cannot_change_the_environment(ws, tmp_path):
    """Whoever can write to a (shared, unsigned) cache can point a fetch action's entry at other
    bytes; the stage verifies every archive's sha256 where it uses it, so the build fails naming
    the package instead of installing the attacker's files."""
    from hermetic_build.store.local import LocalStore

    good = Package(name="good", members=(file("share/good.txt", b"good\n"),)).write(tmp_path)
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = Package(name="good", members=(file("share/good.txt", SECRET),)).write(evil_dir)
    adopt_lock(ws, [good])
    ws.hb("build", "//env:env")
    store = LocalStore(ws.cache)
    planted = 0
    for shard in (ws.cache / "ac").iterdir():
        for entry in shard.iterdir():
            result = store.get_action_result(entry.name)
            if result is not None and [o.path for o in result.outputs] == ["hb-out/env/env/pkgs/" + good.name]:
                evil_digest = store.put_file(evil)
                store.put_action_result(entry.name, type(result)(
                    (type(result.outputs[0])(result.outputs[0].path, "file", evil_digest),), 0,
                    result.stdout, result.stderr))
                planted += 1
    assert planted == 1, "the fetch action's cache entry was not found"
    proc = ws.hb("build", "//env:env", check=False)
    assert proc.returncode == 5, proc.stderr
    assert f"{good.name} is not the locked package" in proc.stderr, proc.stderr
    assert not files_containing(ws.root / "hb-out", SECRET.strip())


# ----- hard links are copies: counted against the unpack limit -----------------------------------
def _hard_link_bomb(links: int) -> Package:
    """One 16 MiB file of zeros and `links` hard links to it: a few hundred bytes compressed. rattler
    installs every hard link as a copy of its target (red team, eleventh session: 576 bytes wrote
    337 MiB with 20 links; a 64 MiB file and the million-member limit would write 64 TiB)."""
    return Package(name="links", members=(zeros("share/big", 16 << 20),
                                          *(hardlink(f"share/copy{i}", "share/big") for i in range(links))))


def test_hard_links_count_as_the_copies_the_install_writes(ws, tmp_path):
    archive = _hard_link_bomb(20).write(tmp_path)
    assert archive.stat().st_size < 2000
    adopt_lock(ws, [archive])
    _build_fails(ws, "links-1.0-0.tar.bz2: refusing to unpack: it expands to at least",
                 "raise the limit on its conda_env target (max_unpack_ratio = ")
    assert not list((ws.cache / "tmp").rglob("copy*"))  # refused at fetch: nothing was unpacked


def test_hard_links_within_the_limit_still_install(ws, tmp_path):
    archive = _hard_link_bomb(2).write(tmp_path)  # 48 MiB in all, under the 64 MiB floor
    adopt_lock(ws, [archive])
    summary = json.loads(ws.hb("build", "--json", "//env:env").stdout)
    tree = ws.root / summary["targets"]["//env:env"][0]["path"]
    assert (tree / "share/copy1").stat().st_size == 16 << 20


def test_a_hard_linked_text_file_counts_the_growth_of_its_placeholder(tmp_path):
    """Each hard link to a text file with a placeholder is written as its own, replaced, copy."""
    from rules.conda.archive import check_archive

    data = b"a" * (1 << 20)  # 1 MiB of placeholders: 255 MiB once replaced, 1 GiB with 3 links (limit 512 MiB)
    members = (file("share/f", data), *(hardlink(f"share/h{i}", "share/f") for i in range(3)))
    entries = tuple({"_path": m.name, "path_type": "hardlink", "prefix_placeholder": "a", "file_mode": "text"}
                    for m in members)
    archive = Package(name="grow", members=members, paths=entries).write(tmp_path)
    with pytest.raises(ActionFailed, match="grow-1.0-0.tar.bz2: refusing to unpack"):
        check_archive(archive, archive.name, UnpackLimits(max_ratio=1, floor_bytes=512 << 20))
    check_archive(archive, archive.name, UnpackLimits(max_ratio=1, floor_bytes=2 << 30))


# ----- members hidden from the check behind a link that claims data ------------------------------
def _hidden_behind(kind: bytes) -> RawPackage:
    """A link (or directory) whose header claims one block of data, then a file whose data holds an
    info/paths.json and a file. tarfile (the check) reads the claimed block as the file's header and
    skips the rest as data; rattler's reader skips the claimed block and reads the rest as members, so
    it unpacks a paths.json and a file the check never saw (red team, eleventh session)."""
    hidden = ustar("info/paths.json", paths_json("share/visible.txt", "share/hidden.txt")) + ustar(
        "share/hidden.txt", SECRET)
    link = {tarfile.SYMTYPE: "visible.txt", tarfile.LNKTYPE: "share/visible.txt", tarfile.DIRTYPE: ""}[kind]
    body = (ustar("info/paths.json", paths_json("share/visible.txt", "share/cover.bin"))
            + ustar("info/files", b"share/visible.txt\nshare/cover.bin\n") + ustar("share/visible.txt", b"visible\n")
            + ustar("share/claims", kind=kind, link=link, size=512)
            + ustar("share/cover.bin", size=len(hidden)) + hidden)
    return RawPackage(name="hides", body=body)


@pytest.mark.parametrize("kind, shown", [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hardlink"),
                                         (tarfile.DIRTYPE, "directory")])
def test_a_header_claiming_data_for_a_link_cannot_hide_members_from_the_check(ws, tmp_path, kind, shown):
    adopt_lock(ws, [_hidden_behind(kind).write(tmp_path)])
    _build_fails(ws, "hides-1.0-0.tar.bz2: refusing archive entry 'share/claims': its header claims 512 bytes "
                     f"of data for a {shown}")
    assert files_containing(ws.root, SECRET) == [] and files_containing(ws.cache / "cas", SECRET) == []


def test_rattler_does_unpack_what_the_link_hides(tmp_path):
    """Why the check refuses it: handed to the stage unchecked, the hidden file is installed (nothing
    escapes, the stage's own check holds, but every limit and metadata check of the fetch is moot)."""
    failure, prefix = _stage_unchecked(tmp_path, _hidden_behind(tarfile.SYMTYPE))
    assert failure is None
    assert (prefix / "share/hidden.txt").read_bytes() == SECRET


# ----- conda-meta/ is the package manager's, not a package's --------------------------------------
def _writes_records() -> Package:
    """A package that installs a directory where the stage reads a conda-meta record (before: the stage
    worker died with IsADirectoryError and a traceback; a file of invalid JSON there broke rattler's
    own reading of the prefix; a valid record would add a package to the SBOM and the layers)."""
    return Package(name="records", members=(file("share/ok.txt"), file("conda-meta/zz-1-0.json/x", b"{}")))


def test_a_package_cannot_write_into_conda_meta(ws, tmp_path):
    adopt_lock(ws, [_writes_records().write(tmp_path)])
    _build_fails(ws, "records-1.0-0.tar.bz2: refusing archive entry 'conda-meta/zz-1-0.json/x': conda-meta/ holds "
                     "the package manager's records")


def test_unchecked_files_in_conda_meta_are_a_clean_stage_failure(tmp_path):
    failure, _ = _stage_unchecked(tmp_path, _writes_records())
    assert failure is not None and "\n" not in failure.message, failure
    assert "package records-1.0-0: info/paths.json lists 'conda-meta/zz-1-0.json/x', in conda-meta/" in failure.message


# ----- noarch: python: where rattler puts site-packages/, and the entry points it writes ---------------
EVIL_MODULE = (file("site-packages/evil/__init__.py", SECRET),)


def _site_packages_at(where: str) -> tuple[Package, Package]:
    """A python package whose info/index.json says noarch python packages go to `where` (CEP 17's
    python_site_packages_path), and one such package."""
    return python_package(python_site_packages_path=where), noarch_python(members=EVIL_MODULE)


def test_python_site_packages_path_outside_the_prefix_is_refused_at_fetch(ws, tmp_path):
    """Before: rattler wrote evil's site-packages/ files to `<prefix>/../../..`, the build succeeded
    (in bubblewrap the files landed in the sandbox and vanished, the conda-meta record of evil listed
    `../../../../tmp/escaped/evil/__init__.py`; without bubblewrap they were written onto the host)."""
    host = tmp_path / "host"
    host.mkdir()
    adopt_lock(ws, [p.write(tmp_path) for p in _site_packages_at(_up_to_root(host))])
    _build_fails(ws, "python-3.11.0-0.tar.bz2: refusing info/index.json field 'python_site_packages_path: ../",
                 "empty, '.' or '..' component: noarch python packages are installed there")
    assert list(host.iterdir()) == []


def test_python_site_packages_path_into_conda_meta_is_refused_at_fetch(ws, tmp_path):
    adopt_lock(ws, [p.write(tmp_path) for p in _site_packages_at("conda-meta")])
    _build_fails(ws, "refusing info/index.json field 'python_site_packages_path: conda-meta': noarch python "
                     "packages would be installed into conda-meta/")


@pytest.mark.parametrize("bwrap", [True, False], ids=["bwrap", "no-bwrap"])
def test_unchecked_python_site_packages_path_is_refused_before_rattler_reads_it(tmp_path, monkeypatch, bwrap):
    """Handed to the stage with no fetch check: refused before rattler installs. Without bubblewrap
    rattler wrote the files onto the host before (with it, into the sandbox, and hb accepted the prefix)."""
    from hermetic_build import sandbox

    host = tmp_path / "host"
    host.mkdir()
    if bwrap:
        require_tool("bwrap")
    else:
        (tmp_path / "no-bwrap").mkdir()
        monkeypatch.setenv("PATH", str(tmp_path / "no-bwrap"))
        sandbox.sandbox_support.cache_clear()
        monkeypatch.setattr(sandbox, "sandbox_support", lambda: sandbox.SandboxSupport(None, False))
    failure, prefix, _ = stage_directly(tmp_path, _site_packages_at(_up_to_root(host)))
    assert list(host.iterdir()) == []
    assert failure is not None and "\n" not in failure.message, failure
    assert ("package python-3.11.0-0.tar.bz2: its info/index.json has python_site_packages_path '../"
            in failure.message), failure
    assert "not a clean relative path inside the prefix" in failure.message, failure


@pytest.mark.parametrize("where", ["/abs/site-packages", "conda-meta"])
def test_unchecked_python_site_packages_path_absolute_or_in_records(tmp_path, where):
    """An absolute one made rattler panic (the worker was killed by SIGABRT); conda-meta had evil's
    files written among the records."""
    failure, _ = _stage_unchecked(tmp_path, _site_packages_at(where))
    assert failure is not None and "\n" not in failure.message, failure
    assert failure.message.startswith("package python-3.11.0-0.tar.bz2: its info/index.json has "
                                      f"python_site_packages_path {where!r}"), failure


@pytest.mark.parametrize("command", ["hi\x1f", "a\x7fb"])
def test_an_entry_point_name_with_a_control_character_is_refused_at_fetch(ws, tmp_path, command):
    """Python's strip() takes \\x1c-\\x1f as whitespace, rattler's trim does not, and \\x7f was no control
    character to the check: both passed and rattler wrote bin/hi\\x1f and bin/a\\x7fb into the image."""
    package = noarch_python(entry_points=(f"{command} = evil:main",), members=EVIL_MODULE)
    adopt_lock(ws, [python_package().write(tmp_path), package.write(tmp_path)])
    _build_fails(ws, f"evil-1.0-0.tar.bz2: refusing info/link.json entry point {command + ' = evil:main'!r}: "
                     "control character")


def test_unchecked_entry_point_with_a_control_character_is_refused_naming_the_package(tmp_path):
    package = noarch_python(entry_points=("hi\x1f = evil:main",), members=EVIL_MODULE)
    failure, _ = _stage_unchecked(tmp_path, (python_package(), package))
    assert failure is not None and "\n" not in failure.message, failure
    assert "package evil-1.0-0.tar.bz2: rattler installed 'bin/hi\\x1f': a control character in its name" \
        in failure.message, failure


def test_noarch_python_package_installs_and_its_entry_point_runs_nothing(tmp_path):
    """The ordinary case still works: site-packages/ under lib/python3.11, a bin/ script per entry
    point that starts with the final prefix's python, and no .pyc (rattler runs no interpreter)."""
    package = noarch_python(entry_points=("hello = evil:main",), members=EVIL_MODULE)
    failure, prefix = _stage_unchecked(tmp_path, (python_package(python_site_packages_path="lib/python3.11/site-packages"),
                                                  package))
    assert failure is None, failure
    assert (prefix / "lib/python3.11/site-packages/evil/__init__.py").read_bytes() == SECRET
    assert (prefix / "bin/hello").read_text().startswith("#!/opt/env/bin/python3.11\n")
    assert not list(prefix.rglob("*.pyc"))
