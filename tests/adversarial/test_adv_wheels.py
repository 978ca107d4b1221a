"""Hostile wheels pinned by a lock (their sha256 is the attacker's), through the real `hb build`: what
installer would read whole, bzip2 members, a METADATA header that layering read otherwise than the
stage checked it, and a path built from an entry point (red team, fourteenth session)."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
import zipfile
from pathlib import Path

import pytest
from payloads_staging import python_package
from support import Workspace

pytestmark = pytest.mark.slow


def _wheel(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED,
           scripts: dict[str, str] | None = None, more_rows: str = "") -> Path:
    """demo 1.0 with `files` (a METADATA or WHEEL among them replaces the default) and a valid RECORD
    (followed by `more_rows`)."""
    dist = "demo-1.0.dist-info"
    files = {"demo/__init__.py": b"", **files}
    files.setdefault(f"{dist}/METADATA", b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    files.setdefault(f"{dist}/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    if scripts:
        files[f"{dist}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())).encode()
    rows = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
            f"{len(data)}" for name, data in files.items()]
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}/RECORD", "\n".join([*rows, f"{dist}/RECORD,,"]) + "\n" + more_rows)
    return path


def _workspace(tmp_path: Path, wheel: Path) -> Workspace:
    """//env:env (a conda python and the wheel, both by file:// URL) and //env:img, an image of it."""
    ws = Workspace(tmp_path / "ws", tmp_path / "cache")
    (ws.root / "pkgs").mkdir(parents=True)
    ws.write("hermetic.toml", "")
    python = python_package().write(ws.root / "pkgs")
    entries = ""
    for manager, path, name, version in (("conda", python, "python", "3.11.0"), ("pip", wheel, "demo", "1.0")):
        data = path.read_bytes()
        entries += textwrap.indent(textwrap.dedent(f"""\
            - name: {name}
              version: '{version}'
              manager: {manager}
              platform: linux-64
              dependencies: {{}}
              url: {path.as_uri()}
              hash: {{sha256: {hashlib.sha256(data).hexdigest()}}}
              category: main
              optional: false
        """), "")
    ws.write("env/conda-lock.yml", "version: 1\nmetadata:\n  content_hash: {linux-64: x}\n  channels: []\n"
             "  platforms: [linux-64]\n  sources: [environment.yml]\npackage:\n" + entries)
    ws.write("env/BUILD.hermetic", 'conda_env(name = "env", lock = "conda-lock.yml")\n'
             'oci_image(name = "img", env = ":env")\n')
    return ws


def _fails(ws: Workspace, *needles: str) -> str:
    proc = ws.hb("build", "//env:env", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


def test_a_wheel_file_installer_reads_whole_is_refused_at_fetch(tmp_path):
    """A 690 KB wheel whose WHEEL file was 256 MiB took the stage 8 GB and 96 s; here 8 MiB of it."""
    header = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n" + b"a: b\n" * (8 << 18)
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo-1.0.dist-info/WHEEL": header})
    _fails(_workspace(tmp_path, wheel), "WheelFetch failed: wheel demo-1.0-py3-none-any.whl: its "
           f"demo-1.0.dist-info/WHEEL is {len(header):,} bytes, more than the 1,048,576")


def test_a_sound_bzip2_wheel_installs(tmp_path):
    """Its members were read by a ZipFile per member on a dup of the writer's shared descriptor: the
    threads moved its offset under each other ("Bad magic number for central directory")."""
    files = {f"demo/m{i}.py": b"V = %d\n" % i for i in range(3000)}
    ws = _workspace(tmp_path, _wheel(tmp_path / "demo-1.0-py3-none-any.whl", files, zipfile.ZIP_BZIP2))
    ws.hb("build", "//env:env")
    site = ws.root / "hb-out/env/env/env/lib/python3.11/site-packages"
    assert (site / "demo/m2999.py").read_bytes() == b"V = 2999\n"


def test_layering_names_the_layer_after_the_metadata_header_the_stage_checked(tmp_path):
    metadata = b"Metadata-Version: 2.1\r\nName: demo\r\nVersion: 1.0\r\n\r\nName: numpy\r\n"
    ws = _workspace(tmp_path, _wheel(tmp_path / "demo-1.0-py3-none-any.whl",
                                     {"demo-1.0.dist-info/METADATA": metadata}))
    ws.hb("build", "//env:img")
    history = []
    for blob in (ws.root / "hb-out/env/img/blobs/sha256").iterdir():
        try:
            document = json.loads(blob.read_bytes())
        except ValueError:
            continue
        if isinstance(document, dict) and "history" in document:
            history = [h.get("created_by", "") for h in document["history"]]
    assert "hb //env:img: pypi:demo" in history and not [h for h in history if "numpy" in h], history


def test_an_entry_point_path_is_bounded_before_it_is_walked(tmp_path):
    """"a/" * 60,000 + "x" (a 1.2 KB wheel) took the stage 3.4 GB of memory."""
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {}, scripts={"a/" * 60_000 + "x": "demo:main"})
    _fails(_workspace(tmp_path, wheel), "(scripts) would write a path of 120,005 bytes (at most 1,024)")


def test_record_rows_that_name_no_file_are_refused_before_installer_holds_them(tmp_path):
    """32 MiB of "a,," rows (a 33 KB wheel) took the stage 661 MiB and 4.9 s: installer parses RECORD
    into objects twice. Rows past twice the wheel's files are refused before it reads them."""
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {}, more_rows="a,,\n" * 100_000)
    _fails(_workspace(tmp_path, wheel), "wheel demo-1.0-py3-none-any.whl: its RECORD has 100,005 rows for 4 files")


def test_a_record_with_rows_to_spare_installs(tmp_path):
    """A few rows more than files (a RECORD that also lists a file it does not ship) pass, as they do
    with pip; CRLF line ends count one row each."""
    dist = "demo-1.0.dist-info"
    rows = "demo/gone.py,,\r\n" * 6
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {}, more_rows=rows)
    ws = _workspace(tmp_path, wheel)
    ws.hb("build", "//env:env")
    site = ws.root / "hb-out/env/env/env/lib/python3.11/site-packages"
    assert (site / "demo/__init__.py").exists() and (site / dist / "RECORD").exists()


def test_a_member_named_the_data_directory_fails_the_stage_instead_of_hanging_it(tmp_path):
    """installer looped on it, appending to a list: the stage hung and grew until the machine's memory
    was gone (an action has no time limit)."""
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo-1.0.data": b"x"})
    ws = _workspace(tmp_path, wheel)
    proc = ws.hb("build", "//env:env", check=False, timeout=120)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, proc.stderr
    assert "member 'demo-1.0.data' is not a file of a demo-1.0.data/<scheme>/ directory" in proc.stderr


def test_a_console_script_cannot_split_its_record_row_to_take_a_conda_file_into_its_layer(tmp_path):
    """"python\u2028x": layering split its RECORD row at the separator and put conda's bin/python in
    the wheel's layer; now such a name is refused, like a control character."""
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {}, scripts={"python\u2028x": "demo:main"})
    _fails(_workspace(tmp_path, wheel), "'python\\u2028x' (scripts) has a control character in its name")
