"""A remote that sends without end or trickles (red-team findings F1-F4), against the real `hb`
command and real servers: an endless body on a blob or on an action-cache miss, a trickling server,
a Content-Length that is not the blob's size, an HMAC-signed entry whose blob was replaced by a huge
file, an endless manifest from an oci:// cache, and a lock whose URL is file:///dev/zero. Each build
must end in a few seconds with the documented outcome (a rejected blob, a miss, a warning and a local
build, or a clear error), and hb's memory and disk must stay small: it reads at most what it expects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import NginxCache, free_port, stop, wait_for_http
from test_adv_stores import _ac_entry, _ws

pytestmark = pytest.mark.slow

SERVER = Path(__file__).resolve().parent.parent / "servers" / "hostile_cache.py"
MAX_RSS_KIB = 300 << 10  # hb's whole peak memory: a build here takes well under this; the attacks took GBs
KEY = {"HB_REMOTE_HMAC_KEY": "team-secret"}


class HostileCache:
    """tests/servers/hostile_cache.py on a free port: an honest cache until `misbehave` names paths."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.root, self.rules, self.log = workdir / "root", workdir / "rules.json", workdir / "requests.log"
        self.root.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--root", str(self.root), "--port", str(self.port),
             "--rules", str(self.rules), "--log", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_http(self.url + "/", self.proc)

    def misbehave(self, **rules: str) -> None:
        """{substring of a path: mode} (hostile_cache.py lists the modes); read on every request."""
        self.rules.write_text(json.dumps(rules))

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def hostile(tmp_path):
    server = HostileCache(tmp_path / "hostile")
    yield server
    server.stop()


def run_measured(ws, *args, env_extra=None, timeout: float = 60):
    """hb build --json ARGS in ws: (exit status, stdout, stderr, seconds, peak RSS in KiB of hb)."""
    env = {**ws.env(), **(env_extra or {})}
    out, err = ws.root / ".out", ws.root / ".err"
    started = time.monotonic()
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "--json", *args],
                                cwd=ws.root, env=env, stdout=o, stderr=e)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of hb itself
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr
    return proc.returncode, out.read_text(), stderr, seconds, usage.ru_maxrss


def _two_workspaces(tmp_path, server_url: str, target: str, env_extra=None):
    """Workspace a builds `target` and uploads it to the remote; b (empty cache) is returned."""
    a = _ws(tmp_path / "a", tmp_path / "cache-a")
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "--remote-cache", server_url,
                           "--remote-upload", target], cwd=a.root, env={**a.env(), **(env_extra or {})},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return a, _ws(tmp_path / "b", tmp_path / "cache-b")


def _output_hash(cache: Path, kind: str) -> str:
    return _ac_entry(cache, kind)[1]["outputs"][0]["digest"].split("/")[0]


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _rebuilt(stdout: str) -> None:
    assert json.loads(stdout)["actions"] == {"executed": 1, "cached": 0}


# ----- F1: the http cache ---------------------------------------------------------------------------
def test_endless_body_on_a_directory_blob_is_rejected_and_rebuilt(tmp_path, hostile):
    a, b = _two_workspaces(tmp_path, hostile.url, "//p:t")
    hostile.misbehave(**{_output_hash(a.cache, "dir"): "endless"})
    status, out, err, seconds, rss = run_measured(b, "--remote-cache", hostile.url, "//p:t")
    assert status == 0, err
    _rebuilt(out)
    assert "remote cache: rejected 1 blobs whose content did not match their digest" in err
    assert (b.root / "hb-out/p/t/d/top.txt").read_text() == "top\n"
    assert rss < MAX_RSS_KIB and seconds < 30, (rss, seconds)


def test_endless_body_on_a_file_blob_writes_at_most_one_byte_more(tmp_path, hostile):
    a, b = _two_workspaces(tmp_path, hostile.url, "//p:g")
    hostile.misbehave(**{_output_hash(a.cache, "file"): "endless"})
    status, out, err, seconds, rss = run_measured(b, "--remote-cache", hostile.url, "//p:g")
    assert status == 0, err
    _rebuilt(out)
    assert "remote cache: rejected 1 blobs whose content did not match their digest" in err
    assert (b.root / "hb-out/p/g/x.txt").read_text() == "built\n"
    assert _bytes_under(b.cache) < 1 << 20 and not list((b.cache / "tmp").glob("*"))
    assert rss < MAX_RSS_KIB and seconds < 30, (rss, seconds)


def test_endless_body_on_an_action_cache_miss_is_a_plain_miss(tmp_path, hostile):
    b = _ws(tmp_path / "b", tmp_path / "cache-b")
    hostile.misbehave(**{"/ac/": "endless404"})
    status, out, err, seconds, rss = run_measured(b, "--remote-cache", hostile.url, "//p:g")
    assert status == 0, err
    _rebuilt(out)
    assert "warning: remote cache" not in err.replace("remote action results are not signed", "")
    assert any(r.startswith("GET /ac/") for r in hostile.requests())
    assert rss < MAX_RSS_KIB and seconds < 30, (rss, seconds)


@pytest.mark.parametrize("mode", ["drip", "drip-status"])
def test_a_trickling_server_is_one_timeout_then_a_local_build(tmp_path, hostile, mode):
    b = _ws(tmp_path / "b", tmp_path / "cache-b")
    hostile.misbehave(**{"/ac/": mode})
    status, out, err, seconds, rss = run_measured(b, "--remote-cache", hostile.url, "--remote-timeout", "1", "//p:g")
    assert status == 0, err
    _rebuilt(out)
    warnings = [line for line in err.splitlines() if "is unavailable" in line]
    assert len(warnings) == 1 and "TimeoutError: the answer did not complete within 1.1 s" in warnings[0], err
    assert "building locally" in warnings[0]
    assert seconds < 15, seconds  # one 1.1 s deadline (1 s + 1 MiB at 8 MiB/s), not a byte every 0.2 s for ever


def test_a_trickling_server_fails_a_required_remote_with_one_line(tmp_path, hostile):
    b = _ws(tmp_path / "b", tmp_path / "cache-b")
    hostile.misbehave(**{"/ac/": "drip"})
    status, _, err, seconds, _ = run_measured(b, "--remote-cache", hostile.url, "--remote-timeout", "1",
                                              "--remote-required", "//p:g")
    assert status == 7 and "TimeoutError: the answer did not complete within 1.1 s" in err, err
    assert seconds < 15, seconds


def test_a_content_length_other_than_the_blob_size_is_refused_unread(tmp_path, hostile):
    a, b = _two_workspaces(tmp_path, hostile.url, "//p:g")
    hostile.misbehave(**{_output_hash(a.cache, "file"): "long-length"})  # then the server goes silent for 30 s
    status, out, err, seconds, _ = run_measured(b, "--remote-cache", hostile.url, "--remote-timeout", "20", "//p:g")
    assert status == 0, err
    _rebuilt(out)
    assert "remote cache: rejected 1 blobs whose content did not match their digest" in err
    assert seconds < 15, seconds  # not waiting for the 1000 bytes promised


# ----- F2: a signed entry whose blob a writer without the key replaced ------------------------------
def test_a_huge_blob_under_a_signed_entry_is_refused_before_reading(tmp_path):
    server = NginxCache(tmp_path / "nginx")
    try:
        a, b = _two_workspaces(tmp_path, server.url, "//p:t", env_extra=KEY)
        blob = server.root / "cas" / _output_hash(a.cache, "dir")
        os.chmod(blob, 0o644)
        with open(blob, "r+b") as f:
            f.truncate(3 << 30)  # sparse: 3 GiB served, nothing on this disk
        status, out, err, seconds, rss = run_measured(b, "--remote-cache", server.url, "//p:t", env_extra=KEY)
    finally:
        server.stop()
    assert status == 0, err
    _rebuilt(out)
    assert "remote cache: rejected 1 blobs whose content did not match their digest" in err
    assert "unsigned" not in err
    assert rss < MAX_RSS_KIB and seconds < 30, (rss, seconds)


# ----- F3: an oci:// cache ------------------------------------------------------------------------------
def test_an_endless_manifest_from_an_oci_cache_is_refused(tmp_path, hostile):
    b = _ws(tmp_path / "b", tmp_path / "cache-b")
    hostile.misbehave(**{"/manifests/": "endless"})
    url = f"oci://127.0.0.1:{hostile.port}/team/cache"
    status, out, err, seconds, rss = run_measured(b, "--remote-cache", url, "//p:g")
    assert status == 0, err
    _rebuilt(out)
    warnings = [line for line in err.splitlines() if "is unavailable" in line]
    assert len(warnings) == 1 and f"answered with more than {16 << 20} bytes" in warnings[0], err
    assert any("/manifests/ac-" in r for r in hostile.requests())
    assert rss < MAX_RSS_KIB and seconds < 30, (rss, seconds)


# ----- F4: a lock whose URL never ends ----------------------------------------------------------------
LOCK = """\
version: 1
metadata:
  content_hash: {{}}
  channels: []
  platforms: [linux-64]
  sources: []
package:
- name: foo
  version: '1'
  manager: conda
  build: '0'
  platform: linux-64
  dependencies: {{}}
  url: {url}
  hash:
    sha256: 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881
  category: main
  optional: false
"""


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_lock_url_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    # named as the package (the lock reader refuses any other file name before a fetch is declared)
    target = tmp_path / kind / "foo-1-0.conda"
    target.parent.mkdir()
    if kind == "device":
        target.symlink_to("/dev/zero")  # a local channel may link its files: the link is followed, the device refused
    elif kind == "fifo":
        os.mkfifo(target)  # a FIFO nobody writes: opening it for reading would block
    else:
        target.mkdir()
    ws.write("p/BUILD.hermetic", 'conda_env(name = "e", lock = "conda-lock.yml", platform = "linux-64", '
                                 'prefix = "/opt/env")\n')
    ws.write("p/conda-lock.yml", LOCK.format(url=target.as_uri()))
    status, _, err, seconds, _ = run_measured(ws, "//p:e")
    assert status == 5, err
    assert f"{target.as_uri()} is {'a directory' if kind == 'directory' else 'a device, FIFO or socket'}, " \
           "not a package file" in err
    assert _bytes_under(ws.cache) < 1 << 20 and seconds < 30
    shutil.rmtree(ws.root / "hb-out", ignore_errors=True)


PIXI_LOCK = """\
version: 6
environments:
  default:
    channels:
    - url: https://conda.anaconda.org/conda-forge/
    packages:
      linux-64:
      - conda: {url}
packages:
- conda: {url}
  name: foo
  version: '1'
  build: '0'
  subdir: linux-64
  sha256: {sha256}
  md5: {md5}
  size: {size}
"""


def test_a_download_longer_than_the_size_a_pixi_lock_records_is_an_integrity_error(tmp_path):
    """pixi.lock records each archive's size: a download that goes past it is the wrong content
    (exit 6, as a hash mismatch), cut off at size + 1 bytes, and nothing is stored."""
    import hashlib

    archive = tmp_path / "channel" / "foo-1-0.conda"
    archive.parent.mkdir()
    archive.write_bytes(os.urandom(4 << 20))
    body = archive.read_bytes()
    ws = _ws(tmp_path / "ws", tmp_path / "cache")
    ws.write("p/BUILD.hermetic", 'conda_env(name = "e", lock = "pixi.lock", platform = "linux-64", '
                                 'prefix = "/opt/env")\n')
    ws.write("p/pixi.lock", PIXI_LOCK.format(url=archive.as_uri(), sha256=hashlib.sha256(body).hexdigest(),
                                             md5=hashlib.md5(body).hexdigest(), size=1000))
    status, _, err, seconds, _ = run_measured(ws, "//p:e")
    assert status == 6, err
    assert f"foo-1-0.conda from {archive.as_uri()} is larger than the 1000 bytes the lock records" in err, err
    assert "nothing was stored" in err
    assert _bytes_under(ws.cache) < 1 << 20 and seconds < 30
