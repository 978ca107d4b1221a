"""The dependencies of locked wheels (conda-lock's `dependencies:` of a `manager: pip` entry), from
their core metadata evaluated for each platform; metadata fetched from PEP 658 files or the wheel."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass

import pytest

from hermetic_build.api import AnalysisError
from rules.conda import pypi_deps
from rules.conda.pypi_deps import (
    MetadataCache,
    WheelMetadata,
    fetch_metadata,
    marker_environment,
    parse_metadata,
    platform_dependencies,
)

ANYIO = WheelMetadata("anyio", "4.4.0", (
    "idna>=2.8", "sniffio>=1.1", "exceptiongroup>=1.0.2; python_version < \"3.11\"",
    "typing-extensions>=4.1; python_version < \"3.11\"", "trio>=0.23; extra == \"trio\"",
    "pytest>=7.0; extra == \"test\""))
CLICK = WheelMetadata("click", "8.1.7", ("colorama; platform_system == \"Windows\"",))
HTTPX = WheelMetadata("httpx", "0.27.0", (
    "anyio", "idna", "h2<5,>=3; extra == \"http2\"", "brotli; platform_python_implementation == 'CPython' and "
    "extra == 'brotli'", "socksio==1.*; extra == 'socks'"))
CLIENT = WheelMetadata("client", "1.0", ("httpx[http2]>=0.25", "httpx<1", "numpy>=1.22; sys_platform == 'darwin'",
                                         "client[extra]; extra == 'all'"))


def test_markers_are_evaluated_for_each_platform_and_python():
    linux = marker_environment("linux-64", "3.11.10")
    present = {"anyio", "idna", "sniffio", "exceptiongroup", "typing-extensions", "click", "colorama", "trio"}
    deps = platform_dependencies({"anyio": ANYIO, "click": CLICK}, {}, linux, present)
    assert deps == {"anyio": {"idna": ">=2.8", "sniffio": ">=1.1"}, "click": {}}
    old = platform_dependencies({"anyio": ANYIO}, {}, marker_environment("osx-arm64", "3.10.14"), present)
    assert old["anyio"] == {"exceptiongroup": ">=1.0.2", "idna": ">=2.8", "sniffio": ">=1.1",
                            "typing-extensions": ">=4.1"}
    assert list(old["anyio"]) == sorted(old["anyio"])  # deterministic order


def test_extras_asked_for_by_the_pip_lines_and_by_other_wheels_are_followed():
    env = marker_environment("linux-64", "3.11.10")
    present = {"anyio", "idna", "trio", "httpx", "h2", "brotli", "client", "numpy"}
    deps = platform_dependencies({"anyio": ANYIO, "httpx": HTTPX, "client": CLIENT}, {"anyio": {"trio"}}, env, present)
    assert deps["anyio"] == {"idna": ">=2.8", "trio": ">=0.23"}  # sniffio: not in the lock, not listed
    assert deps["httpx"] == {"anyio": "*", "h2": "<5,>=3", "idna": "*"}  # http2 asked for by client; not brotli
    assert deps["client"] == {"httpx": "<1,>=0.25"}  # two lines for one name: one spec; numpy only on darwin
    darwin = platform_dependencies({"client": CLIENT}, {}, marker_environment("osx-arm64", "3.11.10"), present)
    assert darwin["client"] == {"httpx": "<1,>=0.25", "numpy": ">=1.22"}


def test_metadata_is_parsed_and_must_name_its_wheel(tmp_path):
    text = ("Metadata-Version: 2.1\nName: Foo_Bar\nVersion: 1.0\nRequires-Dist: idna>=2\n"
            "Requires-Dist: x; extra=='a'\n\nbody")
    assert parse_metadata(text, "w") == WheelMetadata("foo-bar", "1.0", ("idna>=2", "x; extra=='a'"))
    with pytest.raises(AnalysisError, match="no Name or no Version"):
        parse_metadata("Metadata-Version: 2.1\n", "w")


def test_a_requires_dist_line_that_does_not_parse_is_an_error_naming_the_wheel(tmp_path):
    """It used to be skipped: the lock then missed the dependency that line names."""
    text = "Metadata-Version: 2.1\nName: broken\nVersion: 1.0\nRequires-Dist: idna>=2\nRequires-Dist: numpy >=>1\n"
    with pytest.raises(AnalysisError, match=r"broken 1.0 \(https://x/broken-1.0-py3-none-any.whl\): its METADATA has "
                                            r"a Requires-Dist line that is not a PEP 508 requirement: 'numpy >=>1'"):
        parse_metadata(text, "broken 1.0 (https://x/broken-1.0-py3-none-any.whl)")
    with pytest.raises(AnalysisError, match=r"error: broken 1.0: its METADATA .*'x; python_version =! \"3\"'"):
        platform_dependencies({"broken": WheelMetadata("broken", "1.0", ('x; python_version =! "3"',))}, {},
                              marker_environment("linux-64", "3.11.2"), {"broken", "x"})
    wheel = _wheel(tmp_path / "broken-1.0-py3-none-any.whl", "broken", "1.0", ["idna", "numpy >=>1"])
    cache = MetadataCache(tmp_path / "cache")
    with pytest.raises(AnalysisError, match=r"broken-1.0-py3-none-any.whl\): its METADATA has a Requires-Dist"):
        fetch_metadata([wheel], cache)
    assert cache.get(wheel.sha256) is None  # nothing kept: the next lock reports it again


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    url: str
    sha256: str


def _wheel(path, name, version, requires=()):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
        zf.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return Wheel(name, version, path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest())


def test_fetch_reads_pep658_files_else_the_wheel_checked_by_sha256_and_caches_by_sha256(tmp_path):
    a = _wheel(tmp_path / "a-1.0-py3-none-any.whl", "a", "1.0", ["b>=2"])
    b = _wheel(tmp_path / "b-2.0-py3-none-any.whl", "b", "2.0")
    (tmp_path / "a-1.0-py3-none-any.whl.metadata").write_text("Metadata-Version: 2.1\nName: a\nVersion: 1.0\n"
                                                             "Requires-Dist: b>=2.1\n")  # the PEP 658 file wins
    cache = MetadataCache(tmp_path / "cache")
    got = fetch_metadata([a, b, a], cache)
    assert got[a.sha256].requires_dist == ("b>=2.1",) and got[b.sha256] == WheelMetadata("b", "2.0", ())
    for f in tmp_path.glob("*.whl*"):
        f.unlink()
    assert fetch_metadata([a, b], cache) == got  # from the cache: nothing is read again

    c = _wheel(tmp_path / "c-1.0-py3-none-any.whl", "c", "1.0")
    with pytest.raises(AnalysisError, match="does not have the sha256 uv locked"):
        fetch_metadata([Wheel("c", "1.0", c.url, "0" * 64)], cache)
    with pytest.raises(AnalysisError, match="names c 1.0, not d 1.0"):
        fetch_metadata([Wheel("d", "1.0", c.url, c.sha256)], cache)
    assert cache.get(c.sha256) is None  # nothing wrong is cached


def test_a_wheel_without_pep658_file_is_read_in_the_sandbox_and_bad_ones_are_named(tmp_path, monkeypatch):
    """A wheel's METADATA is read by a sandboxed Python (read_wheel_metadata), never in hb's
    process: it answers for a good wheel, and a wheel with two METADATA files, one that is not a zip,
    and one whose METADATA inflates past the limit are errors naming the wheel."""

    from hermetic_build.api import ActionExecution

    calls = []

    original = ActionExecution.helper_command
    monkeypatch.setattr(ActionExecution, "helper_command",
                        staticmethod(lambda argv, read_only=(): calls.append(argv) or original(argv, read_only)))
    good = _wheel(tmp_path / "g-1.0-py3-none-any.whl", "g", "1.0", ["h>=1"])
    assert "Requires-Dist: h>=1" in pypi_deps.read_wheel_metadata(str(tmp_path / "g-1.0-py3-none-any.whl"), "g 1.0")
    assert calls and calls[-1][1:3] == ["-I", "-c"]  # a separate, isolated interpreter, in the sandbox
    assert fetch_metadata([good], MetadataCache(tmp_path / "cache"))[good.sha256].requires_dist == ("h>=1",)

    two = tmp_path / "t-1.0-py3-none-any.whl"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("t-1.0.dist-info/METADATA", "Name: t\n")
        zf.writestr("u-1.0.dist-info/METADATA", "Name: u\n")
    with pytest.raises(AnalysisError, match="t 1.0 has 2 .dist-info/METADATA files"):
        pypi_deps.read_wheel_metadata(str(two), "t 1.0")
    junk = tmp_path / "j-1.0-py3-none-any.whl"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(AnalysisError, match="j 1.0 is not a readable wheel"):
        pypi_deps.read_wheel_metadata(str(junk), "j 1.0")
    bomb = tmp_path / "b-1.0-py3-none-any.whl"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("b-1.0.dist-info/METADATA", b"Name: b\n" + b" " * (pypi_deps.MAX_METADATA_BYTES + 10))
    with pytest.raises(AnalysisError, match="b 1.0 has a METADATA larger than"):
        pypi_deps.read_wheel_metadata(str(bomb), "b 1.0")


def test_a_wheel_read_for_its_metadata_is_downloaded_within_the_fetchs_limits(tmp_path, monkeypatch):
    """An index that serves no PEP 658 file and an endless wheel: the download stops at the most the
    build's fetch downloads (lowered here), nothing is kept. Before, it wrote ~400 MB/s into the
    temporary directory until the disk was full (hb lock never answered)."""
    import http.server
    import threading

    from rules.conda import fetch

    class Endless(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args):
            pass

        def do_GET(self):
            if self.path.endswith(".metadata"):
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\0" * (1 << 20))
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(fetch, "MAX_DOWNLOAD_BYTES", 8 << 20)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = f"http://127.0.0.1:{server.server_port}/e-1.0-py3-none-any.whl"
    try:
        with pytest.raises(AnalysisError, match=r"e 1.0: http://127.0.0.1:\d+/e-1.0-py3-none-any.whl is larger than the most hb downloads for a wheel \(more than 8388608 bytes came\)"):
            fetch_metadata([Wheel("e", "1.0", url, "0" * 64)], MetadataCache(tmp_path / "cache"))
    finally:
        server.shutdown()
    assert not list(tmp_path.glob("hb-wheel-*"))


def _serve(handler_body):
    """A local index whose GETs handler_body(handler) answers; (server, base URL)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args):
            pass

        def do_GET(self):
            try:
                handler_body(self)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def test_a_trickling_metadata_file_ends_within_the_timeout(tmp_path, monkeypatch):
    """A PEP 658 file sent a byte every 0.2 s: each byte reset the per-read timeout, so `hb lock` waited
    as long as the server liked; now the whole answer has _TIMEOUT_S."""
    import time

    def trickle(handler):
        handler.send_response(200)
        handler.end_headers()
        while True:
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.2)

    server, base = _serve(trickle)
    monkeypatch.setattr(pypi_deps, "_TIMEOUT_S", 2)
    started = time.monotonic()
    try:
        with pytest.raises(AnalysisError, match=r"t-1.0-py3-none-any.whl.metadata: \d+ bytes in over 2 s"):
            fetch_metadata([Wheel("t", "1.0", f"{base}/t-1.0-py3-none-any.whl", "1" * 64)],
                           MetadataCache(tmp_path / "cache"))
    finally:
        server.shutdown()
    assert time.monotonic() - started < 10


_SUBVERTED_READER = r"""
import sys, time
from hermetic_build.api import AnalysisError
from rules.conda import pypi_deps
pypi_deps._TIMEOUT_S = 20
# a subverted METADATA reader: 512 MiB on stdout, then it holds on
pypi_deps._READ_METADATA = "import sys, time\nb = b'x' * (1 << 20)\nfor _ in range(512): sys.stdout.buffer.write(b)\n" \
    "sys.stdout.flush()\ntime.sleep(60)\n"
started = time.monotonic()
try:
    pypi_deps.read_wheel_metadata(sys.argv[1], "w 1.0")
except AnalysisError as exc:
    print(exc)
# VmHWM: this process's own peak (ru_maxrss keeps, across exec, the peak of the process it was forked
# from: pytest's own, 575 MiB late in a CI run)
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.monotonic() - started, peak_kib >> 10)
"""


def test_a_metadata_reader_that_writes_without_end_is_ended_at_its_answers_bound(tmp_path):
    """The sandboxed reader parses a hostile wheel, so it may be subverted: what it writes was captured
    whole (subprocess.run's capture_output) until the 60 s timeout, 3.7 GiB of hb's memory in 3 s. Now
    its answer is read to at most MAX_ANSWER_BYTES and it is ended there, at once (measured in a fresh
    process: 512 MiB written took its memory past 512 MiB and the whole timeout before)."""
    import pathlib
    import subprocess
    import sys

    wheel = tmp_path / "w-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    root = pathlib.Path(pypi_deps.__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _SUBVERTED_READER, str(wheel)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the sandboxed reader of its METADATA was ended: it wrote more than" in lines[0]
    seconds, max_rss_mib = float(lines[-1].split()[0]), int(lines[-1].split()[1])
    assert seconds < 10
    assert max_rss_mib < 300


def test_a_metadata_file_is_followed_to_http_and_https_only(tmp_path):
    """An index's redirect of a PEP 658 file is followed over http(s) only, as the build's fetches are
    (urllib, used before, refused file: but opened ftp: connections)."""
    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", "ftp://127.0.0.1:9/t.metadata")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server, base = _serve(redirect)
    try:
        with pytest.raises(AnalysisError, match="only http and https URLs are followed"):
            fetch_metadata([Wheel("t", "1.0", f"{base}/t-1.0-py3-none-any.whl", "2" * 64)],
                           MetadataCache(tmp_path / "cache"))
    finally:
        server.shutdown()
