"""PyPI wheels without the network: picking the wheel for a platform's tags, the fetch's zip check,
the sandboxed worker's install (hostile members, overwrites, links, reproducibility), and layers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import zipfile

import pytest

from hermetic_build.api import ActionFailed, AnalysisError, TreeEntry, digest_bytes
from rules.conda import stage_worker
from rules.conda.archive import check_wheel
from rules.conda.pypi import pick_wheel, wheel_target
from rules.oci.split import env_groups


def make_wheel(path, name="demo", version="1.0", files=None, scripts=None, record=True, extra=()):
    """A wheel with a valid RECORD; `extra` are raw (ZipInfo or name, data) members added as they are."""
    files = dict(files if files is not None else {f"{name}/__init__.py": b"VALUE = 1\n"})
    dist = f"{name}-{version}.dist-info"
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        files[f"{dist}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())).encode()
    rows = []
    for member, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{member},sha256={digest},{len(data)}")
    rows.append(f"{dist}/RECORD,,")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        for member, data in extra:
            zf.writestr(member, data)
        if record:
            zf.writestr(f"{dist}/RECORD", "\n".join(rows) + "\n")
    return path


def _dir(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


class _named:
    """Say which case failed."""

    def __init__(self, case):
        self.case = case

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None and not issubclass(kind, ActionFailed):
            raise AssertionError(f"case {self.case}") from value
        return False


def test_wheel_target_reads_glibc_and_osx():
    linux = wheel_target("linux-64", ["__unix", "__glibc=2.36"], "3.11.2")
    assert linux.uv_platform == "x86_64-manylinux_2_36" and linux.tag_platforms[0] == "manylinux_2_36_x86_64"
    assert wheel_target("linux-64", ["__glibc=2.30"], "3.11.2").uv_platform == "x86_64-manylinux_2_28"
    mac = wheel_target("osx-arm64", ["__osx=13.0"], "3.11.2")
    assert mac.uv_platform == "aarch64-apple-darwin" and dict(mac.uv_env)["MACOSX_DEPLOYMENT_TARGET"] == "13.0"
    with pytest.raises(AnalysisError, match="needs the __glibc virtual package"):
        wheel_target("linux-64", ["__unix"], "3.11.2")
    with pytest.raises(AnalysisError, match="older than manylinux2014"):
        wheel_target("linux-64", ["__glibc=2.12"], "3.11.2")


def test_pick_wheel_chooses_by_tags():
    def w(filename):
        return {"url": f"https://files.example/{filename}", "hashes": {"sha256": "0" * 64}}

    wheels = [w("numpy-2.2.0-cp312-cp312-manylinux_2_17_x86_64.whl"), w("numpy-2.2.0-cp311-cp311-macosx_14_0_arm64.whl"),
              w("numpy-2.2.0-cp311-cp311-macosx_11_0_arm64.whl"), w("numpy-2.2.0-cp311-cp311-manylinux_2_28_x86_64.whl"),
              w("numpy-2.2.0-cp311-cp311-musllinux_1_2_x86_64.whl")]
    linux = wheel_target("linux-64", ["__glibc=2.36"], "3.11.2")
    assert pick_wheel("numpy", wheels, linux)["url"].endswith("cp311-cp311-manylinux_2_28_x86_64.whl")
    mac = wheel_target("osx-arm64", ["__osx=13.0"], "3.11.2")
    assert pick_wheel("numpy", wheels, mac)["url"].endswith("macosx_11_0_arm64.whl")  # 14.0 is too new
    old = wheel_target("linux-64", ["__glibc=2.17"], "3.11.2")
    assert pick_wheel("numpy", wheels, old) is None  # 2_28 needs a newer glibc
    assert pick_wheel("x", [w("x-1-py3-none-any.whl")], old)["url"].endswith("py3-none-any.whl")


def test_fetch_check_accepts_a_wheel_and_refuses_hostile_ones(tmp_path):
    good = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl")
    check_wheel(good, good.name)
    with pytest.raises(ActionFailed, match="not a wheel file name"):
        check_wheel(good, "../demo-1.0-py3-none-any.whl")
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ActionFailed, match="is not a zip archive"):
        check_wheel(tmp_path / "junk.whl", "demo-1.0-py3-none-any.whl")
    link = zipfile.ZipInfo("demo/evil")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    cases = {"escape": [("../../etc/evil", b"x")], "absolute": [("/etc/evil", b"x")], "link": [(link, "/etc/passwd")],
             "bomb": [("demo/zeros", b"\0" * (200 << 20))]}
    messages = {"escape": "'..' component", "absolute": "not a relative POSIX path", "link": "not a regular file",
                "bomb": "expands to"}
    for case, extra in cases.items():
        path = make_wheel(_dir(tmp_path, case) / "demo-1.0-py3-none-any.whl", extra=extra)
        with pytest.raises(ActionFailed, match=messages[case]), _named(case):
            check_wheel(path, path.name)
        with pytest.raises(stage_worker.StageError):  # the worker refuses them too, on its own
            stage_worker.check_wheel_members(str(path), path.name)


def test_a_wheel_whose_directory_is_too_large_is_refused_before_zipfile_reads_it(tmp_path):
    """A "wheel" of 200,001 empty entries (11 MB): zipfile would make an object of each first (3
    million took 1.4 GB and 19 s in hb's process); the fetch check and the worker refuse it unread."""
    from test_conda_zipdir import directory_bomb

    bomb = directory_bomb(tmp_path / "demo-1.0-py3-none-any.whl", 200_001)
    with pytest.raises(ActionFailed, match="is refused: it has more than 200,000 entries"):
        check_wheel(bomb, bomb.name)
    with pytest.raises(stage_worker.StageError, match="is refused: it has more than 200,000 entries"):
        stage_worker.check_wheel_members(str(bomb), bomb.name)


def _prefix(tmp_path, name="out"):
    out = tmp_path / name
    (out / "lib/python3.11/site-packages").mkdir(parents=True)
    (out / "bin").mkdir()
    (out / "bin/python").write_text("#!/bin/sh\n")
    return out


def _install(tmp_path, wheel, out):
    stage_worker.install_wheel(str(wheel), {"filename": wheel.name, "name": "demo"}, str(out), "/opt/env", "3.11")


def test_install_writes_scripts_for_the_final_prefix_record_installer_and_no_pyc(tmp_path):
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", scripts={"demo-cli": "demo:main"})
    trees = []
    for name in ("a", "b"):
        out = _prefix(tmp_path, name)
        _install(tmp_path, wheel, out)
        trees.append({str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mode)
                      for p in sorted(out.rglob("*")) if p.is_file()})
    assert trees[0] == trees[1]  # byte for byte, modes included
    out = tmp_path / "a"
    script = (out / "bin/demo-cli").read_text()
    assert script.startswith("#!/opt/env/bin/python\n") and os.access(out / "bin/demo-cli", os.X_OK)
    dist = out / "lib/python3.11/site-packages/demo-1.0.dist-info"
    assert (dist / "INSTALLER").read_text() == "hb\n"
    assert "../../../bin/demo-cli,sha256=" in (dist / "RECORD").read_text()
    assert not list(out.rglob("*.pyc"))


def test_install_refuses_overwrites_links_and_escapes(tmp_path):
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl")
    out = _prefix(tmp_path, "conda-owned")
    (out / "lib/python3.11/site-packages/demo").mkdir()
    (out / "lib/python3.11/site-packages/demo/__init__.py").write_text("conda's\n")
    with pytest.raises(stage_worker.StageError, match="would overwrite"):
        _install(tmp_path, wheel, out)
    out = _prefix(tmp_path, "linked")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", out / "lib/python3.11/site-packages/demo")
    with pytest.raises(stage_worker.StageError, match="through the link"):
        _install(tmp_path, wheel, out)
    assert not list((tmp_path / "outside").iterdir())
    data = make_wheel(_dir(tmp_path, "data") / "demo-1.0-py3-none-any.whl", files={"demo-1.0.data/data/../../etc/x": b"x"})
    with pytest.raises(stage_worker.StageError):
        _install(tmp_path, data, _prefix(tmp_path, "data-out"))
    tampered = make_wheel(_dir(tmp_path, "t") / "demo-1.0-py3-none-any.whl")
    with zipfile.ZipFile(tampered, "a") as zf:
        zf.writestr("demo/unlisted.py", b"import os\n")
    with pytest.raises(stage_worker.StageError, match="installing wheel"):
        _install(tmp_path, tampered, _prefix(tmp_path, "t-out"))
    changed = _dir(tmp_path, "c") / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(make_wheel(tmp_path / "c-src.whl")) as src, zipfile.ZipFile(changed, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"VALUE = 2\n" if item.filename == "demo/__init__.py" else data)
    with pytest.raises(stage_worker.StageError, match="does not match its RECORD hash"):
        _install(tmp_path, changed, _prefix(tmp_path, "c-out"))
    # conda's records are what hb (layers, SBOM) and conda read to know the environment: no wheel writes there
    forged = make_wheel(_dir(tmp_path, "f") / "demo-1.0-py3-none-any.whl",
                        files={"demo-1.0.data/data/conda-meta/zz.json": b'{"name": "python", "files": []}'})
    with pytest.raises(stage_worker.StageError, match="would write conda-meta/zz.json, in conda's own records"):
        _install(tmp_path, forged, _prefix(tmp_path, "f-out"))


def _tree(out):
    return {str(p.relative_to(out)): (p.read_bytes() if p.is_file() else b"", stat.S_IMODE(p.lstat().st_mode))
            for p in sorted(out.rglob("*"))}


def test_install_wheels_writes_from_threads_the_same_tree_as_one_at_a_time(tmp_path):
    """Several wheels, their members written by the writer's threads: the tree (bytes, modes, RECORD)
    is the one installing each wheel on its own gives, run after run."""
    wheels = []
    for i in range(6):
        files = {f"pkg{i}/m{j}.py": f"VALUE = {i * 100 + j}\n".encode() * (j + 1) for j in range(40)}
        files[f"pkg{i}/big.bin"] = os.urandom(3 << 20)  # several chunks
        wheels.append(make_wheel(_dir(tmp_path, f"w{i}") / f"pkg{i}-1.0-py3-none-any.whl", name=f"pkg{i}",
                                 files=files, scripts={f"pkg{i}-cli": f"pkg{i}:main"}))
    params = [{"filename": w.name, "name": w.name.split("-")[0]} for w in wheels]
    archives = {w.name: str(w) for w in wheels}
    trees = []
    for name in ("a", "b"):
        out = _prefix(tmp_path, name)
        stage_worker.install_wheels(archives, params, str(out), "/opt/env", "3.11")
        trees.append(_tree(out))
    one_by_one = _prefix(tmp_path, "c")
    for wheel, param in zip(wheels, params):
        stage_worker.install_wheel(str(wheel), param, str(one_by_one), "/opt/env", "3.11")
    assert trees[0] == trees[1] == _tree(one_by_one)
    assert trees[0]["bin/pkg3-cli"][1] == 0o755 and trees[0]["lib/python3.11/site-packages/pkg3/m1.py"][1] == 0o644
    record = trees[0]["lib/python3.11/site-packages/pkg5-1.0.dist-info/RECORD"][0].decode()
    assert "pkg5/big.bin,sha256=" in record and "../../../bin/pkg5-cli,sha256=" in record


def test_install_wheels_refuses_a_file_two_wheels_install_naming_the_later(tmp_path):
    first = make_wheel(_dir(tmp_path, "a") / "first-1.0-py3-none-any.whl", name="first",
                       files={"shared/x.py": b"a\n", "first/__init__.py": b""})
    second = make_wheel(_dir(tmp_path, "b") / "second-1.0-py3-none-any.whl", name="second",
                        files={"second/__init__.py": b"", "shared/x.py": b"b\n"})
    params = [{"filename": w.name, "name": w.name.split("-")[0]} for w in (first, second)]
    archives = {w.name: str(w) for w in (first, second)}
    for _ in range(3):  # whichever thread writes first, the later wheel in the lock's order is named
        with pytest.raises(stage_worker.StageError, match=r"wheel second-1.0-py3-none-any.whl would overwrite "
                                                          r"lib/python3.11/site-packages/shared/x.py"):
            stage_worker.install_wheels(archives, params, str(_prefix(tmp_path, f"o{_}")), "/opt/env", "3.11")


def test_install_rewrites_the_shebang_of_a_data_script_after_checking_its_record_hash(tmp_path):
    script = b"#!python\nimport demo\n"
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl",
                       files={"demo/__init__.py": b"", "demo-1.0.data/scripts/demo-tool": script})
    out = _prefix(tmp_path)
    _install(tmp_path, wheel, out)
    assert (out / "bin/demo-tool").read_bytes() == b"#!/opt/env/bin/python\nimport demo\n"
    record = (out / "lib/python3.11/site-packages/demo-1.0.dist-info/RECORD").read_text()
    written = base64.urlsafe_b64encode(hashlib.sha256(b"#!/opt/env/bin/python\nimport demo\n").digest())
    assert f"../../../bin/demo-tool,sha256={written.rstrip(b'=').decode()}," in record
    changed = _dir(tmp_path, "c") / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(changed, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, b"#!python\nimport os\n" if item.filename.endswith("demo-tool") else src.read(item))
    with pytest.raises(stage_worker.StageError, match="demo-tool does not match its RECORD hash"):
        _install(tmp_path, changed, _prefix(tmp_path, "c-out"))


class Blobs(dict):
    def get_blob(self, digest):
        return self.get(digest)


def test_each_wheel_is_its_own_layer_after_python(tmp_path):
    blobs, entries = Blobs(), {}

    def add(path, data: bytes):
        d = digest_bytes(data)
        blobs[d] = data
        entries[path] = TreeEntry(path.rsplit("/", 1)[-1], "file", d)
        parts = path.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), TreeEntry(parts[i - 1], "dir", mode=0o755))

    sp = "lib/python3.11/site-packages"
    add("conda-meta/python-3.11-0.json", json.dumps({"name": "python", "depends": [], "files": ["bin/python"]}).encode())
    add("bin/python", b"py")
    add("conda-meta/tool-1-0.json", json.dumps({"name": "tool", "depends": ["python"],
                                                 "files": [f"{sp}/tool-1.dist-info/RECORD", f"{sp}/tool.py"]}).encode())
    add(f"{sp}/tool.py", b"t")
    add(f"{sp}/tool-1.dist-info/RECORD", b"tool.py,,\n")  # shipped by a conda package: stays conda's
    for name, requires in (("Tok_Enizers", "Requires-Dist: numpy>=2\nRequires-Dist: rich; extra == 'x'\n"),
                           ("numpy", "")):
        dist = f"{sp}/{name}-1.dist-info"
        add(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1\n{requires}\nbody\n".encode())
        add(f"{sp}/{name.lower()}/__init__.py", name.encode())
        add(f"bin/{name.lower()}-cli", b"#!/opt/env/bin/python\n")
        add(f"{dist}/RECORD", (f"{name.lower()}/__init__.py,sha256=x,1\n../../../bin/{name.lower()}-cli,,\n"
                               f"{name}-1.dist-info/METADATA,,\n{name}-1.dist-info/RECORD,,\n").encode())
    groups = env_groups(blobs, entries, 100)
    names = [g.name for g in groups]
    assert names == ["python", "pypi:numpy", "pypi:tok-enizers", "tool", "(environment metadata)"]
    tok = groups[2]
    assert set(tok.paths) == {f"{sp}/tok_enizers/__init__.py", "bin/tok_enizers-cli",
                              f"{sp}/Tok_Enizers-1.dist-info/METADATA", f"{sp}/Tok_Enizers-1.dist-info/RECORD"}
    assert all(p.startswith("conda-meta/") for p in groups[-1].paths)
    # two .dist-info of one project (a tree from a cache): an error, not one of them layered as the other
    add(f"{sp}/numPy-2.dist-info/METADATA", b"Metadata-Version: 2.1\nName: numPy\nVersion: 2\n")
    add(f"{sp}/numPy-2.dist-info/RECORD", b"numpy/__init__.py,,\n")
    with pytest.raises(ActionFailed, match=r"numpy-1.dist-info/RECORD and .*numPy-2.dist-info/RECORD both record "
                                           r"the PyPI project 'numpy'"):
        env_groups(blobs, entries, 100)


def test_the_worker_checks_every_archive_against_its_pin_in_order(tmp_path):
    """The stage worker hashes the conda archives and the wheels at once; each check raises for its
    own archive only, in order (a fetch result may come from a remote cache someone changed)."""
    import hashlib

    good, bad = tmp_path / "good.conda", tmp_path / "bad.whl"
    good.write_bytes(b"good" * 100_000)
    bad.write_bytes(b"tampered")
    packages = [{"filename": "good.conda", "sha256": hashlib.sha256(good.read_bytes()).hexdigest()},
                {"filename": "bad.whl", "sha256": hashlib.sha256(b"what the lock pins").hexdigest()},
                {"filename": "good.conda", "md5": hashlib.md5(good.read_bytes()).hexdigest()},
                {"filename": "good.conda"}]
    archives = {"good.conda": str(good), "bad.whl": str(bad)}
    checks = stage_worker.start_verifying(archives, packages)
    checks[0]()
    with pytest.raises(stage_worker.StageError, match="bad.whl is not the locked package: sha256 "):
        checks[1]()
    checks[2]()  # md5 where the lock records nothing else (allow_md5)
    with pytest.raises(stage_worker.StageError, match="good.conda is not pinned by sha256"):
        checks[3]()


def _members_read(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        with zipfile.ZipFile(path) as zf:
            return {info.filename: b"".join(stage_worker.member_chunks(fd, info, path.name)) for info in zf.infolist()}
    finally:
        os.close(fd)


def test_member_chunks_reads_what_zipfile_reads_for_every_method_and_size(tmp_path):
    """The writer's reader (pread + zlib, no ZipFile lock): the same bytes as zipfile for stored,
    deflated (empty, small, several 1 MiB pieces, incompressible), bzip2 and lzma members (those
    two through zipfile), and for a zip written as a stream (data descriptors)."""
    contents = {"empty": b"", "small.py": b"x = 1\n", "text.txt": b"the quick brown fox " * 200_000,
                "random.bin": os.urandom((2 << 20) + 123)}
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        path = tmp_path / f"m{method}.whl"
        with zipfile.ZipFile(path, "w", method) as zf:
            for name, data in contents.items():
                zf.writestr(name, data)
        assert _members_read(path) == contents, method
    streamed = tmp_path / "streamed.whl"
    with open(streamed, "wb") as raw:
        class Unseekable:  # zipfile writes data descriptors when it cannot seek back
            def write(self, b):
                return raw.write(b)

            def flush(self):
                raw.flush()

        with zipfile.ZipFile(Unseekable(), "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in contents.items():
                with zf.open(name, "w") as member:
                    member.write(data)
    with zipfile.ZipFile(streamed) as zf:
        assert all(info.flag_bits & 0x8 for info in zf.infolist())
    assert _members_read(streamed) == contents


def _patched(source, target, patch):
    data = bytearray(source.read_bytes())
    patch(data)
    target.write_bytes(bytes(data))
    return target


def test_member_chunks_refuses_what_zipfile_would_not_read(tmp_path):
    """A local header that names another file or is not there, data cut short, a deflate stream that
    gives more or fewer bytes than the directory records, encryption: each a StageError naming the
    wheel and the member, never bytes zipfile would not have given."""
    source = tmp_path / "good.whl"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/a.py", b"A = 1\n" * 1000)
        zf.writestr("pkg/b.py", b"B = 2\n" * 1000)
    with zipfile.ZipFile(source) as zf:
        info = {i.filename: i for i in zf.infolist()}
    b = info["pkg/b.py"]
    name_at = b.header_offset + 30
    central = source.read_bytes().rindex(b"PK\x01\x02")  # b's directory entry (the last one)

    def field(data, at, value, size=4):
        data[at:at + size] = value.to_bytes(size, "little")

    def rename(data):
        data[name_at:name_at + 8] = b"pkg/c.py"

    def no_header(data):
        data[b.header_offset:b.header_offset + 4] = b"XXXX"

    cases = {
        "renamed": (rename, "is named"),
        "no header": (no_header, "no local header"),
        "bigger": (lambda d: field(d, central + 24, b.file_size - 10), "holds more than"),  # its uncompressed size
        "smaller": (lambda d: field(d, central + 24, b.file_size + 10), "not the"),
        "encrypted": (lambda d: field(d, b.header_offset + 6, 0x1, 2), "encrypted"),  # the local flag bits
    }
    for case, (patch, message) in cases.items():
        path = _patched(source, tmp_path / f"{case}.whl", patch)
        fd = os.open(path, os.O_RDONLY)
        try:
            with zipfile.ZipFile(path) as zf:
                member = next(i for i in zf.infolist() if i.filename == "pkg/b.py")
            with pytest.raises(stage_worker.StageError, match=message):
                b"".join(stage_worker.member_chunks(fd, member, path.name))
        finally:
            os.close(fd)
    cut = tmp_path / "cut.whl"
    cut.write_bytes(source.read_bytes()[:b.header_offset + 30 + len("pkg/b.py") + 10])
    fd = os.open(cut, os.O_RDONLY)
    try:
        with pytest.raises(stage_worker.StageError, match="cut short|not a complete"):
            b"".join(stage_worker.member_chunks(fd, b, cut.name))
    finally:
        os.close(fd)


def test_a_console_script_name_is_a_printable_name_like_every_installed_name(tmp_path):
    """entry_points.txt names files the zip check never saw: a console script named with an escape
    sequence was installed as bin/a<ESC>[2Jb (red team, eleventh session); conda packages' names are refused
    alike by the stage's check of rattler's cache."""
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", scripts={"a\x1b[2Jb": "demo:main"})
    out = _prefix(tmp_path)
    with pytest.raises(stage_worker.StageError, match=r"'a\\x1b\[2Jb' \(scripts\) has a control character in its name"):
        _install(tmp_path, wheel, out)
    assert sorted(os.listdir(out / "bin")) == ["python"]


def _with_metadata(path, metadata: bytes, name="demo", version="1.0"):
    """make_wheel's wheel whose METADATA is `metadata` (its RECORD row matching)."""
    plain = make_wheel(path.with_suffix(".src"), name=name, version=version)
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == f"{dist}/METADATA":
                data = metadata
            elif item.filename == f"{dist}/RECORD":
                data = _record_row_replaced(data, f"{dist}/METADATA", metadata)
            dst.writestr(item.filename, data)
    plain.unlink()
    return path


def _record_row_replaced(record: bytes, path: str, data: bytes) -> bytes:
    """A RECORD whose row for `path` gives the hash and size of `data` (the member's new bytes)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return b"\n".join(f"{path},sha256={digest},{len(data)}".encode() if line.startswith(f"{path},".encode())
                      else line for line in record.split(b"\n"))


@pytest.mark.parametrize(("metadata", "message"), [
    # layering names a wheel's layer after its METADATA (pypi:<Name>): another project's name took its place
    (b"Metadata-Version: 2.1\nName: numpy\nVersion: 1.0\n", "its METADATA names 'numpy' '1.0', not demo 1.0: the wheel is not the package its file name says"),
    (b"Metadata-Version: 2.1\nName: demo\nVersion: 9.9\n", "its METADATA names 'demo' '9.9', not demo 1.0"),
    (b"Metadata-Version: 2.1\nName: demo\nName: numpy\nVersion: 1.0\n", "its demo-1.0.dist-info/METADATA has 2 Name headers (a wheel's has one)"),
    (b"Metadata-Version: 2.1\nVersion: 1.0\n", "has 0 Name headers"),
    (b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n" + b"X: y\n" * 4_000_000, "the header of its demo-1.0.dist-info/METADATA is longer than 16 MiB"),
])
def test_a_wheels_metadata_must_name_the_project_and_version_of_its_file(tmp_path, metadata, message):
    wheel = _with_metadata(tmp_path / "demo-1.0-py3-none-any.whl", metadata)
    out = _prefix(tmp_path)
    with pytest.raises(stage_worker.StageError, match=re.escape(message)):
        _install(tmp_path, wheel, out)
    assert sorted(os.listdir(out / "lib/python3.11/site-packages")) == []


def test_a_wheels_metadata_may_spell_name_and_version_otherwise(tmp_path):
    """PEP 503 / PEP 440 equal is the same project and version (real wheels: Name: PyYAML in
    pyyaml-6.0-...whl, a long header of thousands of Requires-Dist and classifiers)."""
    metadata = (b"Metadata-Version: 2.1\r\nName: De_Mo\r\nVersion: 1.0.0\r\n" + b"Classifier: x\r\n" * 5000
                + b"\r\nName: body text is no header\r\n")
    wheel = _with_metadata(tmp_path / "de_mo-1.0-py3-none-any.whl", metadata, name="de_mo")
    out = _prefix(tmp_path)
    _install(tmp_path, wheel, out)
    assert (out / "lib/python3.11/site-packages/de_mo-1.0.dist-info/METADATA").read_bytes() == metadata


@pytest.mark.parametrize("member", ["demo-1.0.data/purelib/numpy-9.dist-info/RECORD",
                                    "demo-1.0.data/data/lib/python3.11/site-packages/numpy-9.dist-info/METADATA",
                                    "numpy-9.dist-info/RECORD"])
def test_a_wheel_writes_no_dist_info_but_its_own(tmp_path, member):
    """Layering, the SBOM's layers and importlib.metadata read every site-packages/*.dist-info as an
    installed project: a wheel that plants another's (with a RECORD it wrote, claiming conda's files)
    is refused, whichever scheme it uses."""
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl",
                       files={"demo/__init__.py": b"", member: b"../../../bin/python,,\n"})
    out = _prefix(tmp_path)
    with pytest.raises(stage_worker.StageError, match=r"numpy-9\.dist-info|2 \.dist-info/RECORD files"):
        _install(tmp_path, wheel, out)
    assert not (out / "lib/python3.11/site-packages/numpy-9.dist-info").exists()


@pytest.mark.parametrize(("name", "data"), [
    ("WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n" + b"a: b\n" * (1 << 18)),
    ("entry_points.txt", b"".join(b"[s%d]\n" % i for i in range(200_000))),
    ("RECORD", b"\n" * (32 << 20)),
])
def test_a_dist_info_file_read_whole_is_bounded_at_fetch_and_at_the_stage(tmp_path, name, data):
    """installer reads WHEEL, entry_points.txt and RECORD whole and parses them in memory, at many
    times their size; the unpack limit bounds only a wheel's total (red team, fourteenth session: a
    690 KB wheel whose WHEEL file was 256 MiB took the stage 8 GB and 96 s, and installed)."""
    dist = "demo-1.0.dist-info"
    plain = make_wheel(tmp_path / "plain.whl", scripts={"demo-cli": "demo:main"})
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == f"{dist}/{name}":  # RECORD's rows, then the padding; the others replaced
                content = content + data if name == "RECORD" else data
                size = len(content)
            elif item.filename == f"{dist}/RECORD":
                content = _record_row_replaced(content, f"{dist}/{name}", data)
            dst.writestr(item.filename, content)
    assert size > 1 << 20 and wheel.stat().st_size < 1 << 20
    message = f"its {dist}/{name} is {size:,} bytes, more than the "
    with pytest.raises(ActionFailed, match=re.escape(message)):
        check_wheel(wheel, wheel.name)
    out = _prefix(tmp_path)
    with pytest.raises(stage_worker.StageError, match=re.escape(message)):
        _install(tmp_path, wheel, out)
    assert sorted(os.listdir(out / "lib/python3.11/site-packages")) == []


def test_bzip2_and_lzma_members_are_read_once_each_from_threads_as_deflate_ones(tmp_path, monkeypatch):
    """Members of any method are read with pread from the writer's one descriptor. Before, a bzip2 or
    lzma member went through a new ZipFile on a dup of that descriptor: every member read the whole
    central directory again (10,000 members: 365 s on one thread, quadratic) and the threads moved
    the shared file offset under each other (a sound bzip2 wheel of 5,000 members failed the real
    `hb build` with "Bad magic number for central directory"; red team, fourteenth session)."""
    files = {f"demo/m{i}.py": f"V = {i}\n".encode() * (i % 7) for i in range(3000)}
    trees = {}
    for method in (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        wheel = _dir(tmp_path, f"w{method}") / "demo-1.0-py3-none-any.whl"
        with zipfile.ZipFile(make_wheel(tmp_path / f"src{method}.whl", files=files)) as src, \
                zipfile.ZipFile(wheel, "w", method) as dst:
            for item in src.infolist():
                dst.writestr(item.filename, src.read(item))
        opened = []
        real_init = zipfile.ZipFile.__init__

        def counting_init(self, *args, **kwargs):
            opened.append(args[0] if args else kwargs.get("file"))
            real_init(self, *args, **kwargs)

        monkeypatch.setattr(zipfile.ZipFile, "__init__", counting_init)
        out = _prefix(tmp_path, f"out{method}")
        params = [{"filename": wheel.name, "name": "demo"}]
        stage_worker.install_wheels({wheel.name: str(wheel)}, params, str(out), "/opt/env", "3.11")
        monkeypatch.setattr(zipfile.ZipFile, "__init__", real_init)
        assert len(opened) < 10, (method, len(opened))  # the checks' and installer's, none per member
        trees[method] = _tree(out)
    assert trees[zipfile.ZIP_DEFLATED] == trees[zipfile.ZIP_BZIP2] == trees[zipfile.ZIP_LZMA]


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_corrupt_bzip2_or_lzma_member_is_a_clean_error(tmp_path, method):
    source = tmp_path / "good.whl"
    with zipfile.ZipFile(source, "w", method) as zf:
        zf.writestr("pkg/a.py", os.urandom(1000) + b"A = 1\n" * 5000)
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo("pkg/a.py")
    data = bytearray(source.read_bytes())
    middle = info.header_offset + 30 + len("pkg/a.py") + info.compress_size // 2
    data[middle:middle + 64] = bytes(64)
    path = tmp_path / "bad.whl"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        message = r"member 'pkg/a.py' (cannot be decompressed|holds|is not a complete)"
        with pytest.raises(stage_worker.StageError, match=message):
            b"".join(stage_worker.member_chunks(fd, info, path.name))
    finally:
        os.close(fd)


def test_scripts_of_the_data_directory_are_streamed_not_read_whole_each_by_a_new_zipfile(tmp_path, monkeypatch):
    """A .data/scripts member was read whole, twice, by a new ZipFile that read the whole central
    directory again: 5,000 scripts took 68 s (quadratic; the zip check allows 200,000) and a 256 MiB
    script 568 MiB of memory (red team, fourteenth session). Now each is read in pieces from its own
    descriptor, its #!python line rewritten as installer does and its RECORD row checked at the end."""
    import tracemalloc

    files = {f"demo-1.0.data/scripts/s{i}": b"#!python\nprint(%d)\n" % i for i in range(1500)}
    files["demo-1.0.data/scripts/big"] = b"#!python3 -X utf8\n" + bytes(48 << 20)
    files["demo-1.0.data/scripts/tiny"] = b"#!py"
    files["demo-1.0.data/scripts/binary"] = b"\x7fELF" + bytes(100)
    files["demo/__init__.py"] = b""
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", files=files)
    opened = []
    real_init = zipfile.ZipFile.__init__

    def counting_init(self, *args, **kwargs):
        opened.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", counting_init)
    out = _prefix(tmp_path)
    tracemalloc.start()
    try:
        _install(tmp_path, wheel, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(opened) < 10 and peak < 16 << 20, (len(opened), peak)
    assert (out / "bin/s7").read_bytes() == b"#!/opt/env/bin/python\nprint(7)\n"
    assert (out / "bin/big").stat().st_size == len("#!/opt/env/bin/python\n") + (48 << 20)
    assert (out / "bin/tiny").read_bytes() == b"#!py" and (out / "bin/binary").read_bytes() == b"\x7fELF" + bytes(100)


def test_member_chunks_takes_what_zlib_holds_back_at_the_end(tmp_path):
    """The last output of a highly compressed member can fill the piece exactly with all input
    consumed: a sound wheel whose member was "#!python\\n" and 256 MiB of zeros failed the stage as
    "not a complete deflate stream" (zipfile flushes the decompressor at the end; now so does hb)."""
    path = tmp_path / "z.whl"
    data = b"#!python\n" + bytes(256 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("demo/zeros", data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("demo/zeros")
        assert sum(len(chunk) for chunk in stage_worker.member_chunks(fd, info, path.name)) == len(data)
    finally:
        os.close(fd)


@pytest.mark.parametrize("metadata", [
    b"Metadata-Version: 2.1\r\nName: demo\r\nVersion: 1.0\r\n\r\nName: numpy\r\nRequires-Dist: tool\r\n",
    b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nSummary: x\x0cName: numpy\x1cRequires-Dist: tool\n\nbody\n",
])
def test_layering_reads_the_metadata_header_the_stage_checked(tmp_path, metadata):
    """The stage checks a wheel's Name in its METADATA header as email's parser reads it; layering
    split the file at its first blank LF line and took every line of str.splitlines: with CRLF line
    ends the body's `Name: numpy`, or one after a form feed inside a header value, named the layer
    pypi:numpy (red team, fourteenth session, with the real `hb build`: image history
    "hb //env:img: pypi:numpy" for the wheel demo). Now both read it through zipdir.metadata_header."""
    wheel = _with_metadata(tmp_path / "demo-1.0-py3-none-any.whl", metadata)
    out = _prefix(tmp_path)
    _install(tmp_path, wheel, out)  # the stage's check: Name demo, Version 1.0
    blobs, entries = Blobs(), {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.is_dir():
            entries[rel] = TreeEntry(path.name, "dir", mode=0o755)
        else:
            data = path.read_bytes()
            blobs[digest_bytes(data)] = data
            entries[rel] = TreeEntry(path.name, "file", digest_bytes(data))
    record = json.dumps({"name": "python", "depends": [], "files": ["bin/python"]}).encode()
    blobs[digest_bytes(record)] = record
    entries["conda-meta"] = TreeEntry("conda-meta", "dir", mode=0o755)
    entries["conda-meta/python-3.11-0.json"] = TreeEntry("python-3.11-0.json", "file", digest_bytes(record))
    names = [g.name for g in env_groups(blobs, entries, 100)]
    assert names == ["python", "pypi:demo", "(environment metadata)"]


def test_a_path_a_wheel_writes_is_bounded_before_its_components_are_walked(tmp_path):
    """An entry point's name is a path the zip check never saw: "a/" * 60,000 + "x" in a 1.2 KB wheel
    took the stage 3.6 GB (each component walked, each parent kept as a whole path: quadratic; red
    team, fourteenth session, with the real `hb build`). Member names are bounded the same way."""
    import tracemalloc

    wheel = make_wheel(_dir(tmp_path, "ep") / "demo-1.0-py3-none-any.whl", scripts={"a/" * 8000 + "x": "demo:main"})
    out = _prefix(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(stage_worker.StageError, match=r"\(scripts\) would write a path of 16,005 bytes "
                                                          r"\(at most 1,024\)"):
            _install(tmp_path, wheel, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
    member = make_wheel(_dir(tmp_path, "m") / "demo-1.0-py3-none-any.whl",
                        files={"demo/" + "a/" * 600 + "x.py": b"", "demo/__init__.py": b""})
    with pytest.raises(stage_worker.StageError, match=r"\(purelib\) would write a path of 1,238 bytes"):
        _install(tmp_path, member, _prefix(tmp_path, "m-out"))
    fits = make_wheel(_dir(tmp_path, "f") / "demo-1.0-py3-none-any.whl",
                      files={"demo/" + "a/" * 400 + "x.py": b"", "demo/__init__.py": b""})
    _install(tmp_path, fits, _prefix(tmp_path, "f-out"))


def test_the_directories_a_wheel_makes_are_bounded(tmp_path, monkeypatch):
    """Directories cost disk (a block each) and the claim's memory, but not the unpack limit, which
    counts file bytes: member names of "a/" * 900 made 90,000 directories (353 MB) from a 371 KB
    wheel (red team, fourteenth session). At most MAX_WHEEL_DIRECTORIES per wheel."""
    monkeypatch.setattr(stage_worker, "MAX_WHEEL_DIRECTORIES", 50)
    files = {f"demo/d{i}/x.py": b"" for i in range(60)}
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", files={**files, "demo/__init__.py": b""})
    with pytest.raises(stage_worker.StageError, match=r"demo-1.0-py3-none-any.whl would make more than 50 directories"):
        _install(tmp_path, wheel, _prefix(tmp_path))
    few = make_wheel(_dir(tmp_path, "few") / "demo-1.0-py3-none-any.whl",
                     files={**{f"demo/d{i}/x.py": b"" for i in range(40)}, "demo/__init__.py": b""})
    _install(tmp_path, few, _prefix(tmp_path, "few-out"))


@pytest.mark.parametrize("member", ["NUMPY-9.DIST-INFO/METADATA", "numpy-9.egg-info/PKG-INFO",
                                    "demo-1.0.data/purelib/numpy.egg-info",
                                    "demo-1.0.data/data/lib/python3.11/site-packages/Numpy-9.Dist-Info/METADATA"])
def test_a_wheel_plants_no_metadata_importlib_reads_for_another_project(tmp_path, member):
    """importlib.metadata (pip list, version checks) takes every site-packages entry whose name ends in
    .dist-info or .egg-info, in any case: a wheel writing NUMPY-9.DIST-INFO/METADATA or
    numpy-9.egg-info/PKG-INFO made it report numpy 9 (red team, fourteenth session)."""
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl",
                       files={"demo/__init__.py": b"", member: b"Metadata-Version: 2.1\nName: numpy\nVersion: 9\n"})
    out = _prefix(tmp_path)
    message = (r"another project's metadata \(a wheel writes only its own \.dist-info, "
               r"lib/python3.11/site-packages/demo-1.0.dist-info\)")
    with pytest.raises(stage_worker.StageError, match=message):
        _install(tmp_path, wheel, out)
    assert not [name for name in os.listdir(out / "lib/python3.11/site-packages") if "numpy" in name.lower()]


def test_a_member_named_the_data_directory_is_refused_not_looped_on(tmp_path):
    """installer maps a member under NAME-VERSION.data/ to its scheme by splitting its path until it
    reaches that directory: a file named the directory itself never does, and installer looped,
    appending to a list, until the machine's memory was gone (red team, fourteenth session: the real
    `hb build` hung, its stage growing). Run in a child process: the old code never returns."""
    import subprocess
    import sys

    cases = {"demo-1.0.data": "is not a file of a demo-1.0.data/<scheme>/ directory",
             "demo-1.0.data/purelib": "is not a file of a demo-1.0.data/<scheme>/",
             "demo-1.0.data/bogus/x": "is not a file of a demo-1.0.data/<scheme>/"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(stage_worker.__file__))))
    for i, (member, message) in enumerate(cases.items()):
        wheel = make_wheel(_dir(tmp_path, f"w{i}") / "demo-1.0-py3-none-any.whl",
                           files={"demo/__init__.py": b"", member: b"x"})
        out = _prefix(tmp_path, f"out{i}")
        code = ("import sys; from rules.conda import stage_worker\n"
                "try:\n"
                f"    stage_worker.install_wheel({str(wheel)!r}, {{'filename': {wheel.name!r}, 'name': 'demo'}}, "
                f"{str(out)!r}, '/opt/env', '3.11')\n"
                "except stage_worker.StageError as exc:\n"
                "    print(exc)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "PYTHONPATH": root})
        assert message in proc.stdout, (member, proc.stdout, proc.stderr)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x9b"])
def test_a_console_script_name_holds_no_line_separator_or_c1_control(tmp_path, separator):
    """A console script named "python\\u2028x" was installed as bin/python\\u2028x, and its RECORD row
    "../../../bin/python\\u2028x,..." was split by layering's str.splitlines: conda's bin/python went
    into the wheel's layer (red team, fourteenth session, with the real `hb build` of an image)."""
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", scripts={f"python{separator}x": "demo:main"})
    out = _prefix(tmp_path)
    with pytest.raises(stage_worker.StageError, match=r"\(scripts\) has a control character in its name"):
        _install(tmp_path, wheel, out)
    assert sorted(os.listdir(out / "bin")) == ["python"]


def test_layering_reads_a_record_row_by_row_as_csv_wrote_it(tmp_path):
    """Whatever the stage lets through (a tree from a cache is input), a RECORD is read as installer's
    csv writer wrote it, lines ending at "\\n" only: a row naming "bin/python\\u2028x" is that file, not
    conda's bin/python."""
    blobs, entries = Blobs(), {}

    def add(path, data: bytes):
        blobs[digest_bytes(data)] = data
        entries[path] = TreeEntry(path.rsplit("/", 1)[-1], "file", digest_bytes(data))
        parts = path.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), TreeEntry(parts[i - 1], "dir", mode=0o755))

    sp = "lib/python3.11/site-packages"
    record = {"name": "python", "depends": [], "files": ["bin/python"]}
    add("conda-meta/python-3.11-0.json", json.dumps(record).encode())
    add("bin/python", b"py")
    add("bin/python\u2028x", b"#!/opt/env/bin/python\n")
    add(f"{sp}/demo-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    add(f"{sp}/demo-1.0.dist-info/RECORD", "../../../bin/python\u2028x,sha256=x,1\ndemo-1.0.dist-info/METADATA,,\n"
                                           "demo-1.0.dist-info/RECORD,,\n".encode())
    groups = {g.name: g.paths for g in env_groups(blobs, entries, 100)}
    assert groups["python"] == ("bin/python",)
    assert "bin/python\u2028x" in groups["pypi:demo"] and "bin/python" not in groups["pypi:demo"]
