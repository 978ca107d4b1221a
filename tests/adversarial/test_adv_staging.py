"""Issue 8, items 2, 3 and 9: hostile conda packages cannot write or read outside the prefix, an
absolute path is a clean error, and an archive bomb is refused with a limit one can raise.

Two layers: the fetch's archive check refuses the payloads (tests through `hb build`), and the
stage runs in the sandbox, so that the same payloads, handed straight to the stage with no check,
still cannot reach the host (test_unchecked_*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from payloads_staging import Package, adopt_lock, directory, file, files_containing, stage_directly, symlink, zeros
from support import Workspace, require_tool

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
