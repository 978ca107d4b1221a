"""The archive check (rules/conda/archive.py): paths, links, metadata and unpack limits."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from hermetic_build.api import ActionFailed
from rules.conda.archive import UnpackLimits, check_archive, path_problem

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adversarial"))
from payloads_staging import Member, Package, directory, file, hardlink, symlink, zeros


def _check(tmp_path, package: Package, limits: UnpackLimits | None = None) -> None:
    check_archive(package.write(tmp_path), package.filename, limits or UnpackLimits())


def _refused(tmp_path, package: Package, *needles: str, limits: UnpackLimits | None = None) -> str:
    with pytest.raises(ActionFailed) as info:
        _check(tmp_path, package, limits)
    message = info.value.message
    assert message.startswith(f"{package.filename}: "), message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("path, problem", [
    ("", "empty path"), ("/etc/passwd", "absolute path"), ("a/../b", "'..' component"),
    ("..", "'..' component"), ("./a", "'.' or '..' component"), ("a//b", "empty"), ("a/", "empty"),
    ("a\\..\\b", "backslash"), ("a\x00b", "NUL byte"), ("a\nb", "control character"), (5, "not a string"),
])
def test_path_problem(path, problem):
    assert problem in path_problem(path)


@pytest.mark.parametrize("path", ["a", "lib/libfoo.so.1", "share/a b/c..d", "bin/.hidden", "x/...y"])
def test_clean_paths(path):
    assert path_problem(path) is None


def test_a_well_formed_package_passes(tmp_path):
    _check(tmp_path, Package(members=(
        directory("lib"), file("lib/libfoo.so.1.2"), symlink("lib/libfoo.so.1", "libfoo.so.1.2"),
        symlink("lib/libfoo.so", "./libfoo.so.1"), symlink("lib64", "lib"), symlink("bin/foo", "../lib64/libfoo.so"),
        hardlink("lib/libbar.so", "lib/libfoo.so.1.2"), directory("share/empty"), symlink("dangling", "nothing/here"),
    ), paths=(
        {"_path": "lib/libfoo.so.1.2", "path_type": "hardlink"}, {"_path": "lib/libfoo.so.1", "path_type": "softlink"},
        {"_path": "lib/libfoo.so", "path_type": "softlink"}, {"_path": "lib64", "path_type": "softlink"},
        {"_path": "bin/foo", "path_type": "softlink"}, {"_path": "lib/libbar.so"},
        {"_path": "share/empty", "path_type": "directory"}, {"_path": "dangling", "path_type": "softlink"},
    )))


# ----- tar members --------------------------------------------------------------------------
@pytest.mark.parametrize("name, problem", [
    ("../escape.txt", "empty, '.' or '..' component"), ("/etc/evil", "absolute path"),
    ("a/./b", "empty, '.' or '..' component"),
    ("a\\b", "backslash"),
])
def test_bad_member_names(tmp_path, name, problem):
    _refused(tmp_path, Package(members=(file(name),), paths=()), f"refusing archive entry {name!r}: {problem}")


def test_member_under_a_symlink_is_refused_whatever_the_order(tmp_path):
    for members in ((directory("a"), symlink("a/l", ".."), file("a/l/x")),
                    (file("a/l/x"), directory("a"), symlink("a/l", "."))):
        _refused(tmp_path, Package(members=members, paths=()),
                 "refusing archive entry 'a/l/x': it lies under the symlink 'a/l'")


def test_the_chain_payload_is_refused_at_its_root(tmp_path):
    chain = "a/l/" * 20
    _refused(tmp_path, Package(members=(directory("a"), symlink("a/l", ".."), symlink(chain + "x", "../" * 40 + "etc")),
                               paths=()),
             "it lies under the symlink 'a/l'")


@pytest.mark.parametrize("members, message", [
    ((symlink("share/l", "../../etc/passwd"),), "'share/l -> ../../etc/passwd': it escapes the prefix"),
    ((symlink("share/l", "/etc/passwd"),), "it is absolute: it escapes the prefix"),
    ((directory("a"), symlink("a/l", ".."), symlink("b", "a/l/../..")), "'b -> a/l/../..': it escapes the prefix"),
    ((directory("d"), symlink("d/up", ".."), symlink("d/e", "up/..")), "'d/e -> up/..': it escapes the prefix"),
    ((symlink("x", "y"), symlink("y", "x")), "more than 40 links"),
])
def test_links_resolved_through_the_archive_stay_inside(tmp_path, members, message):
    _refused(tmp_path, Package(members=members, paths=()), message)


@pytest.mark.parametrize("members, message", [
    ((hardlink("h", "nothing"),), "'h -> nothing': its target is not a regular file of the archive"),
    ((directory("d"), hardlink("h", "d")), "its target is not a regular file"),
    ((file("f"), symlink("s", "f"), hardlink("h", "s")), "its target is not a regular file"),
    ((file("f"), hardlink("h", "../f")), "refusing hardlink 'h -> ../f': empty, '.' or '..' component"),
])
def test_hardlinks_name_a_regular_file_of_the_archive(tmp_path, members, message):
    _refused(tmp_path, Package(members=members, paths=()), message)


def test_duplicate_and_special_members_are_refused(tmp_path):
    _refused(tmp_path, Package(members=(directory("a"), symlink("a", "b")), paths=()), "'a': it appears twice")
    _refused(tmp_path, Package(members=(Member("fifo", "fifo"),), paths=()), "special file 'fifo'")


def test_metadata_must_be_regular_files(tmp_path):
    package = Package(members=(file("share/x"),), paths=())
    path = package.write(tmp_path)
    # rewrite with info/paths.json replaced by a link to another file
    import bz2

    with bz2.open(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with bz2.open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for member, data in members:
            if member.name == "info/paths.json":
                member = tarfile.TarInfo("info/paths.json")
                member.type, member.linkname = tarfile.SYMTYPE, "../share/x"
                tar.addfile(member)
            else:
                tar.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(ActionFailed, match="metadata file 'info/paths.json': it must be a regular file"):
        check_archive(path, package.filename)


# ----- info/paths.json, info/files, info/has_prefix, link.json, index.json ----------------------
@pytest.mark.parametrize("entry, message", [
    ({"_path": "../../x", "path_type": "hardlink"}, "entry '../../x': empty, '.' or '..' component"),
    ({"_path": "/etc/shadow", "path_type": "hardlink"}, "entry '/etc/shadow': absolute path"),
    ({"_path": "missing.txt", "path_type": "hardlink"}, "entry 'missing.txt': no such file in the archive"),
    ({"_path": "l/f", "path_type": "hardlink"}, "entry 'l/f': it lies under the symlink 'l'"),
    ({"_path": "f", "path_type": "softlink"}, "entry 'f': it is listed as symlink but the archive has a file"),
    ({"_path": "l", "path_type": "hardlink"}, "entry 'l': it is listed as file/hardlink but the archive has a symlink"),
    ({"_path": "f", "path_type": "pyc_file"}, "unknown path_type 'pyc_file'"),
    ({"path_type": "hardlink"}, "entry None: not a string"),
])
def test_paths_json_entries(tmp_path, entry, message):
    package = Package(members=(file("f"), directory("d"), symlink("l", "d")), paths=(entry,), info_files=())
    _refused(tmp_path, package, f"refusing info/paths.json {message}" if message.startswith("entry") else message)


@pytest.mark.parametrize("line, message", [
    ("../x", "refusing info/files entry '../x'"), ("ghost", "'ghost': no such file in the archive"),
    ("/abs", "'/abs': absolute path"),
])
def test_info_files_lines(tmp_path, line, message):
    _refused(tmp_path, Package(members=(file("f"),), info_files=("f", line)), message)


def test_has_prefix_link_json_and_index_json(tmp_path):
    members = (file("f"),)
    extra = (
        file("info/has_prefix", b'/opt/placeholder text "../../x"\n'),
    )
    _refused(tmp_path, Package(members=members + extra), "refusing info/has_prefix entry '../../x'")
    _refused(tmp_path, Package(members=members + (file("info/has_prefix", b"f g\n"),)),
             "expected 'path' or 'placeholder mode path'")
    _check(tmp_path, Package(members=members + (file("info/has_prefix", b"/opt/placeholder text f\n"),)))
    link = {"noarch": {"type": "python", "entry_points": ["../../bin/evil = m:f"]}}
    _refused(tmp_path, Package(members=members + (file("info/link.json", json.dumps(link).encode()),)),
             "refusing info/link.json entry point '../../bin/evil = m:f'")
    link = {"noarch": {"type": "python", "entry_points": ["good = m:f"]}}
    _check(tmp_path, Package(members=members + (file("info/link.json", json.dumps(link).encode()),)))
    _refused(tmp_path, Package(build="0", index={"build": "../../../x"}, members=members),
             "refusing info/index.json field 'build: ../../../x'")


# ----- unpack limits --------------------------------------------------------------------------
def test_expansion_limit_ratio_and_floor(tmp_path):
    bomb = Package(name="bomb", members=(zeros("share/zeros", 4 << 20),))
    path = bomb.write(tmp_path)
    compressed = path.stat().st_size
    with pytest.raises(ActionFailed) as info:
        check_archive(path, bomb.filename, UnpackLimits(max_ratio=1000, floor_bytes=1 << 20))
    message = info.value.message
    assert f"from {compressed:,} compressed bytes" in message and "the limit is 1,000:1 for packages over 1 MiB" in message
    needed = int(message.split("max_unpack_ratio = ")[1].split(")")[0])
    assert needed > 1000
    # the ratio the message suggests lets it pass; so does a floor above its size
    check_archive(path, bomb.filename, UnpackLimits(max_ratio=needed * 2, floor_bytes=1 << 20))
    check_archive(path, bomb.filename, UnpackLimits(max_ratio=1000, floor_bytes=8 << 20))


def test_the_bomb_is_refused_before_it_is_inflated(tmp_path):
    """A 1 TiB member is refused from its header: the check takes no time."""
    import time

    bomb = Package(name="bomb", members=(file("share/a"),))
    path = bomb.write(tmp_path)
    import bz2

    with bz2.open(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with bz2.open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        huge = tarfile.TarInfo("share/huge")
        huge.size = 1 << 40
        tar.addfile(huge)  # header only: the stream is cut short, but the header is enough
    started = time.monotonic()
    with pytest.raises(ActionFailed, match="refusing to unpack: it expands to at least 1,099,511,"):
        check_archive(path, bomb.filename)
    assert time.monotonic() - started < 5


def test_member_count_limit(tmp_path):
    package = Package(members=tuple(file(f"f{i}") for i in range(10)))
    _refused(tmp_path, package, "more than 8 members", limits=UnpackLimits(max_members=8))
    _check(tmp_path, package, UnpackLimits(max_members=20))


def test_data_after_the_end_of_the_tar_stream_is_refused(tmp_path):
    package = Package(members=(file("f"),))
    path = package.write(tmp_path)
    import bz2

    data = bz2.decompress(path.read_bytes())
    hidden = io.BytesIO()
    with tarfile.open(fileobj=hidden, mode="w") as tar:
        info = tarfile.TarInfo("/etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    path.write_bytes(bz2.compress(data + hidden.getvalue()))
    with pytest.raises(ActionFailed, match="data after the end of its tar stream"):
        check_archive(path, package.filename)


def test_corrupt_archive_is_a_clean_error(tmp_path):
    path = tmp_path / "broken-1.0-0.tar.bz2"
    path.write_bytes(b"BZh91AY&SY" + b"\x00" * 100)
    with pytest.raises(ActionFailed, match="broken-1.0-0.tar.bz2: not a readable conda package"):
        check_archive(path, path.name)


# ----- .conda ---------------------------------------------------------------------------------
def _tar_zst(members: list[tuple[str, bytes]]) -> bytes:
    from conda_package_streaming.package_streaming import zstd

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return zstd.compress(raw.getvalue())


def _dot_conda(tmp_path, components: dict[str, bytes], name: str) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", '{"conda_pkg_format_version": 2}')
        for component, data in components.items():
            zf.writestr(component, data)
    return path


def test_dot_conda_components(tmp_path):
    paths = json.dumps({"paths": [{"_path": "share/x", "path_type": "hardlink"}], "paths_version": 1}).encode()
    info = _tar_zst([("info/paths.json", paths), ("info/index.json", b"{}")])
    pkg = _tar_zst([("share/x", b"x")])
    good = _dot_conda(tmp_path, name="good-1.0-0.conda", components={"info-pkg-1.0-0.tar.zst": info, "pkg-pkg-1.0-0.tar.zst": pkg})
    check_archive(good, good.name)
    # a second pkg component, under another name, that another reader might pick
    evil = _tar_zst([("../../evil", b"x")])
    two = _dot_conda(tmp_path, name="two-1.0-0.conda", components={"info-pkg-1.0-0.tar.zst": info, "pkg-pkg-1.0-0.tar.zst": pkg, "pkg-other.tar.zst": evil})
    with pytest.raises(ActionFailed, match="exactly one pkg-\\*.tar.zst component, not 2"):
        check_archive(two, two.name)
    extra = _dot_conda(tmp_path, name="extra-1.0-0.conda", components={"info-pkg-1.0-0.tar.zst": info, "pkg-pkg-1.0-0.tar.zst": pkg, "junk.bin": b"x"})
    with pytest.raises(ActionFailed, match="refusing zip entry 'junk.bin'"):
        check_archive(extra, extra.name)
    # members of both components are checked, and counted together
    bad = _dot_conda(tmp_path, name="bad-1.0-0.conda", components={"info-pkg-1.0-0.tar.zst": info, "pkg-pkg-1.0-0.tar.zst": evil})
    with pytest.raises(ActionFailed, match="refusing archive entry '../../evil'"):
        check_archive(bad, bad.name)
    with pytest.raises(ActionFailed, match="more than 5 members"):
        check_archive(good, good.name, UnpackLimits(max_members=5))  # 3 zip entries + 2 + 1 members
    check_archive(good, good.name, UnpackLimits(max_members=6))


@pytest.mark.slow
def test_every_package_of_the_example_channel_passes(channel_dir):
    archives = sorted(p for p in channel_dir.rglob("*") if p.name.endswith((".conda", ".tar.bz2")))
    assert archives
    for archive in archives:
        check_archive(archive, archive.name)


# ----- readers that disagree: what rattler would unpack must be what this check saw -----------------

def _conda_entries() -> list[tuple[str, bytes]]:
    index = {"name": "c", "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "noarch"}
    paths = {"paths": [{"_path": "share/a", "path_type": "hardlink"}], "paths_version": 1}
    info = _tar_zst([("info/index.json", json.dumps(index).encode()), ("info/paths.json", json.dumps(paths).encode()),
                     ("info/files", b"share/a\n")])
    return [("metadata.json", b'{"conda_pkg_format_version": 2}'), ("info-c-1.0-0.tar.zst", info),
            ("pkg-c-1.0-0.tar.zst", _tar_zst([("share/a", b"a\n")]))]


def _zip(entries: list[tuple[str, bytes]], hide: tuple[str, ...] = ()) -> bytes:
    """A stored zip; entries named in `hide` stay in the file but leave the central directory."""
    import struct

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    data = buf.getvalue()
    if not hide:
        return data
    end = data.rfind(b"PK\x05\x06")
    sig, disk, cd_disk, _, _, cd_size, cd_offset, _ = struct.unpack("<IHHHHIIH", data[end:end + 22])
    directory, kept, pos = bytearray(), 0, cd_offset
    while pos < cd_offset + cd_size:
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[pos + 28:pos + 34])
        size = 46 + name_length + extra_length + comment_length
        if data[pos + 46:pos + 46 + name_length].decode() not in hide:
            directory += data[pos:pos + size]
            kept += 1
        pos += size
    return data[:cd_offset] + bytes(directory) + struct.pack("<IHHHHIIH", sig, disk, cd_disk, kept, kept,
                                                               len(directory), cd_offset, 0)


def test_a_conda_as_zipfile_and_a_stream_reader_both_see_it_is_accepted(tmp_path):
    path = tmp_path / "c-1.0-0.conda"
    path.write_bytes(_zip(_conda_entries()))
    check_archive(path, path.name)


@pytest.mark.parametrize("damage, needle", [
    # a 4th component after the 3 the directory lists: rattler's stream reader would unpack it last
    (lambda e: _zip([*e, ("pkg-zz.tar.zst", _tar_zst([("info/paths.json", b"{}")]))], hide=("pkg-zz.tar.zst",)),
     "bytes between its last entry and its directory belong to no entry"),
    # the same entry hidden between two listed ones
    (lambda e: _zip([e[0], ("pkg-zz.tar.zst", _tar_zst([("x", b"x")])), *e[1:]], hide=("pkg-zz.tar.zst",)),
     "the archive hides bytes from its directory"),
    (lambda e: b"\0" * 64 + _zip(e), "the archive hides bytes from its directory"),  # bytes before the first entry
])
def test_zip_bytes_the_directory_does_not_list_are_refused(tmp_path, damage, needle):
    path = tmp_path / "c-1.0-0.conda"
    path.write_bytes(damage(_conda_entries()))
    with pytest.raises(ActionFailed, match=needle):
        check_archive(path, path.name)


def _pax(kind: bytes, records: dict[str, str]) -> bytes:
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        n = len(record) + 1
        while len(str(n)) + len(record) != n:
            n = len(str(n)) + len(record)
        body += str(n).encode() + record
    info = tarfile.TarInfo("pax")
    info.type, info.size = kind, len(body)
    return info.tobuf(tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)


def _ustar(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), link
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def test_a_global_pax_header_is_refused(tmp_path):
    """tarfile applies a global header's path to a later member that has a header of its own,
    rattler's reader ignores it: the two would see `share/decoy -> ok` and `share/lnk -> /usr/lib`."""
    import bz2

    index = {"name": "g", "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "noarch"}
    paths = {"paths": [{"_path": "share/ok", "path_type": "hardlink"}], "paths_version": 1}
    raw = (_ustar("info/index.json", json.dumps(index).encode()) + _ustar("info/paths.json", json.dumps(paths).encode())
           + _ustar("info/files", b"share/ok\n") + _ustar("share/ok", b"ok\n")
           + _pax(tarfile.XGLTYPE, {"path": "share/decoy", "linkpath": "ok"}) + _pax(tarfile.XHDTYPE, {"comment": "x"})
           + _ustar("share/lnk", kind=tarfile.SYMTYPE, link="/usr/lib") + b"\0" * 1024)
    path = tmp_path / "g-1.0-0.tar.bz2"
    path.write_bytes(bz2.compress(raw))
    with pytest.raises(ActionFailed, match="refusing archive entry 'share/decoy': a global PAX header precedes it"):
        check_archive(path, path.name)


def test_a_short_text_placeholder_counts_as_the_growth_it_allows(tmp_path):
    """Every occurrence of a text placeholder becomes the prefix: 16 MiB of 'a' with placeholder 'a'
    could be written as 4 GiB. Counted against the unpack limit like unpacked bytes."""
    data = b"a" * (16 << 20)
    entry = {"_path": "share/f", "path_type": "hardlink", "prefix_placeholder": "a", "file_mode": "text"}
    _refused(tmp_path, Package(members=(file("share/f", data),), paths=(entry,)), "refusing to unpack")
    # the same bytes as a binary-mode file (replaced in place, padded: no growth), or with conda's long
    # placeholder, pass
    for other in ({**entry, "file_mode": "binary"}, {**entry, "prefix_placeholder": "/" + "p" * 254}):
        _check(_dir(tmp_path, other["file_mode"] + str(len(other["prefix_placeholder"]))),
               Package(members=(file("share/f", data),), paths=(other,)))


def _dir(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def test_an_extended_header_over_the_bound_is_refused_before_it_is_read(tmp_path):
    """tarfile reads a PAX header whole into memory: a 600 MiB one would be, in the check's helper."""
    import bz2

    from rules.conda import archive

    header = _pax(tarfile.XHDTYPE, {"comment": "c" * (archive.MAX_HEADER_BYTES + 10)})
    path = tmp_path / "h-1.0-0.tar.bz2"
    path.write_bytes(bz2.compress(header + _ustar("info/index.json", b"{}") + b"\0" * 1024))
    with pytest.raises(ActionFailed, match="refusing an extended tar header of 1,048,6"):
        check_archive(path, path.name)


@pytest.mark.parametrize("kind, message", [
    (tarfile.SYMTYPE, "refusing archive entry 'share/m': its header claims 512 bytes of data for a symlink"),
    (tarfile.LNKTYPE, "refusing archive entry 'share/m': its header claims 512 bytes of data for a hardlink"),
    (tarfile.DIRTYPE, "refusing archive entry 'share/m': its header claims 512 bytes of data for a directory"),
    (tarfile.GNUTYPE_SPARSE, "refusing special file 'share/m': only plain files"),
    (tarfile.CONTTYPE, "refusing special file 'share/m': only plain files"),
])
def test_members_every_tar_reader_reads_alike(tmp_path, kind, message):
    """tarfile reads the blocks a link's or directory's header claims as headers, rattler's reader skips
    them (members hidden from the check: tests/adversarial/test_adv_staging.py); sparse and contiguous
    files are each reader's own."""
    import bz2

    info = tarfile.TarInfo("share/m")
    info.type, info.size, info.linkname = kind, 512, "ok"
    member = info.tobuf(tarfile.USTAR_FORMAT) + b"x" * 512
    path = tmp_path / "m-1.0-0.tar.bz2"
    path.write_bytes(bz2.compress(_ustar("info/index.json", b"{}") + _ustar("ok") + member + b"\0" * 1024))
    with pytest.raises(ActionFailed) as raised:
        check_archive(path, path.name)
    assert message in raised.value.message
