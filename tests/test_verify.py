"""`hb verify`: every action rebuilt from nothing and compared with the last build (R = identical / total)."""

import gzip
import io
import json
import re
import tarfile

from hermetic_build.verify import _tar_difference, bytes_difference

BUILD = """\
genrule(name = "stable", srcs = ["in.txt"], outs = ["upper.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
genrule(name = "clock", srcs = [":stable"], outs = ["stamped.txt"], cmd = "cat $(SRCS) > $(OUTS); date +%s%N >> $(OUTS)")
genrule(name = "after", srcs = [":clock"], outs = ["count.txt"], cmd = "wc -l < $(SRCS) > $(OUTS)")
"""


def _workspace(workspace):
    workspace.write("p/BUILD.hermetic", BUILD)
    workspace.write("p/in.txt", "some text\n")
    return workspace


def test_a_deterministic_build_verifies_with_r_1(workspace):
    ws = _workspace(workspace)
    ws.hb("build", "//p:stable")
    proc = ws.hb("verify", "//p:stable")
    assert "R = 1/1 = 1.000" in proc.stdout
    assert "//p:stable: identical" in proc.stdout
    assert ws.build_json("//p:stable")["actions"]["executed"] == 0  # verify left the real cache alone


def test_a_clock_in_a_genrule_gives_r_below_1_naming_action_and_bytes(workspace):
    ws = _workspace(workspace)
    ws.hb("build", "//p:after")
    proc = ws.hb("verify", "//p:after", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # the stamped file differs; its line count (the next action) does not
    assert "R = 2/3 = 0.667" in proc.stdout, proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("differs:")] == \
        ["differs: Genrule //p:clock"], proc.stdout
    first = next(line for line in proc.stdout.splitlines() if line.startswith("first difference:"))
    # "SOME TEXT\n" (10 bytes) is the same; the clock's digits come after it
    offset = int(re.search(r"hb-out/p/clock/stamped.txt: first difference at byte (\d+)", first).group(1))
    assert offset >= 10, first
    data = json.loads(ws.hb("verify", "--json", "//p:after", check=False).stdout)
    assert data["total"] == 3 and data["identical"] == 2 and data["R"] < 1
    assert [a["target"] for a in data["actions"] if not a["identical"]] == ["//p:clock"]
    assert data["targets"]["//p:after"]["identical"] is True


def test_verify_before_any_build_says_to_build_first(workspace):
    ws = _workspace(workspace)
    proc = ws.hb("verify", "//p:stable", check=False)
    assert proc.returncode == 2
    assert "run `hb build //p:stable` first" in proc.stderr


def _layer(members: dict[str, tuple[bytes, int]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mtime) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def test_a_differing_layer_names_the_file_inside_it():
    a = _layer({"opt/env/a.txt": (b"same", 0), "opt/env/b.txt": (b"hello world", 0)})
    b = _layer({"opt/env/a.txt": (b"same", 0), "opt/env/b.txt": (b"hello there", 0)})
    assert _tar_difference(a, b, "blobs/sha256/x") == (
        "blobs/sha256/x: member opt/env/b.txt: first difference at byte 6 (sizes 11 and 11): "
        "recorded b'hello world', rebuilt b'hello there'")
    c = _layer({"opt/env/a.txt": (b"same", 1700000000), "opt/env/b.txt": (b"hello world", 0)})
    assert _tar_difference(a, c, "L") == "L: member opt/env/a.txt: mtime 0 became 1700000000"
    assert _tar_difference(b"not a tar", b"nor this", "L") == ""


def test_bytes_difference():
    assert bytes_difference(b"abc", b"abd").startswith("first difference at byte 2 (sizes 3 and 3)")
    assert bytes_difference(b"abc", b"abcd").startswith("first difference at byte 3 (sizes 3 and 4)")


def test_a_gzip_bomb_is_not_inflated_to_explain_a_difference(monkeypatch):
    """The recorded layer comes from a bundle: explaining how it differs must stay within a bound."""
    import gzip

    import hermetic_build.verify as verify

    monkeypatch.setattr(verify, "MAX_COMPARED_BYTES", 1 << 20)
    bomb = gzip.compress(b"\0" * (4 << 20), mtime=0)
    assert verify._tar_members(bomb) is None


def test_a_large_difference_is_found_reading_side_by_side_not_whole(tmp_path, monkeypatch):
    """Past MAX_COMPARED_BYTES (a real image's layers are gigabytes; a remote cache's digests claim
    any size) the two files are read side by side in pieces: never whole into memory."""
    import hermetic_build.verify as verify
    from hermetic_build.store.local import LocalStore
    from hermetic_build.verify import first_difference

    monkeypatch.setattr(verify, "MAX_COMPARED_BYTES", 1000)
    monkeypatch.setattr(verify, "_blob", lambda *_: (_ for _ in ()).throw(AssertionError("read whole")))
    store = LocalStore(tmp_path / "cache")
    old = bytes(range(256)) * 20000  # 5 MB
    new = bytearray(old)
    new[3_000_123] ^= 0xFF
    a, b = store.put_blob(old), store.put_blob(bytes(new))
    from hermetic_build.store.base import OutputEntry

    said = first_difference(store, store, OutputEntry("o", "file", a), OutputEntry("o", "file", b), "hb-out/o")
    assert said.startswith("hb-out/o: first difference at byte 3000123 (sizes 5120000 and 5120000): recorded "), said
    shorter = store.put_blob(old[:4_500_000])
    said = first_difference(store, store, OutputEntry("o", "file", a), OutputEntry("o", "file", shorter), "hb-out/o")
    assert said.startswith("hb-out/o: first difference at byte 4500000 (sizes 5120000 and 4500000)"), said
