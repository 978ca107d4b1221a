"""Remote cache benchmark: the second machine's build with a warm remote vs a cold local build of the
example, bytes transferred, and per-request overhead for 1,000 small entries vs raw http.client; the
same for a REAPI cache (grpc://, a BuildGrid server) when the reapi extra is installed, with its
per-request cost next to the HTTP cache's.

    python3 benchmarks/remote.py            # everything
    python3 benchmarks/remote.py grpc       # only the REAPI cache: per-request, then second machine
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import BuildGridCache, NginxCache, Registry, Workspace  # noqa: E402

TARGETS = ("//channel:test-channel", "//env:nlp-env", "//data:stats")


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def example_copy(root: Path, cache: Path, template: Path | None = None) -> Workspace:
    shutil.copytree(template or REPO / "examples", root, ignore=shutil.ignore_patterns("hb-out"))
    ws = Workspace(root, cache)
    return ws


def second_machine(kind: str, url: str, tmp: Path, locked: Path) -> None:
    a = example_copy(tmp / f"{kind}-a", tmp / f"{kind}-cache-a", locked)
    a.hb("build", "--remote-cache", url, "--remote-upload", *TARGETS, timeout=900)
    b = example_copy(tmp / f"{kind}-b", tmp / f"{kind}-cache-b", locked)
    warm, proc = timed(lambda: b.hb("build", "--json", "--remote-cache", url, *TARGETS, timeout=900))
    summary = json.loads(proc.stdout)
    stats = json.loads(b.hb("cache", "stats", "--json").stdout)["last_build"]["remote"]
    c = example_copy(tmp / f"{kind}-c", tmp / f"{kind}-cache-c", locked)
    cold, _ = timed(lambda: c.hb("build", *TARGETS, timeout=900))
    print(f"[{kind}] second machine, warm remote: {warm:.2f} s, {summary['actions']['executed']} actions executed, "
          f"{stats['bytes_down'] / 1024:.0f} KiB down in {stats['blobs_down']} blobs; cold local build: {cold:.2f} s "
          f"(ratio {warm / cold:.2f})")


def per_request(server: NginxCache, n: int = 1000) -> None:
    from hermetic_build.store.base import ActionResult, OutputEntry
    from hermetic_build.store.http import HttpStore
    from hermetic_build.store.remote import Signer
    from hermetic_build.digest import digest_bytes

    store = HttpStore(server.url, signer=Signer(b"bench-key"))
    d = digest_bytes(b"x")
    result = ActionResult((OutputEntry("hb-out/p/x/o", "file", d),), 0, d, d)
    keys = [f"{i:064x}" for i in range(n)]
    put_hb, _ = timed(lambda: [store.put_action_result(k, result) for k in keys])
    get_hb, _ = timed(lambda: [store.get_action_result(k) for k in keys])
    body = Signer(b"bench-key").seal(keys[0], result)
    conn = http.client.HTTPConnection("127.0.0.1", server.port)

    def raw(method, key, data=None):
        conn.request(method, f"/ac/{key}", body=data, headers={"Content-Length": str(len(data))} if data else {})
        return conn.getresponse().read()

    put_raw, _ = timed(lambda: [raw("PUT", f"{i + n:064x}", body) for i in range(n)])
    get_raw, _ = timed(lambda: [raw("GET", f"{i + n:064x}") for i in range(n)])
    print(f"[http] {n} small action-cache entries: hb PUT {put_hb / n * 1e6:.0f} us, GET+verify {get_hb / n * 1e6:.0f} us "
          f"per request; raw http.client PUT {put_raw / n * 1e6:.0f} us, GET {get_raw / n * 1e6:.0f} us "
          f"(ratios {put_hb / put_raw:.1f}x, {get_hb / get_raw:.1f}x)")


def per_request_store(kind: str, store, n: int = 1000) -> tuple[float, float, float, float]:
    """Per-request seconds for n small action-cache entries (put, get+verify) and n small blobs
    (put, get+verify) through an hb store."""
    from hermetic_build.store.base import ActionResult, OutputEntry

    d = store.put_blob(b"x")
    result = ActionResult((OutputEntry("hb-out/p/x/o", "file", d),), 0, d, d)
    keys = [f"{i + 7 * n:064x}" for i in range(n)]
    blobs = [f"small blob {kind} {i}".encode() for i in range(n)]
    put_ac, _ = timed(lambda: [store.put_action_result(k, result) for k in keys])
    get_ac, got = timed(lambda: [store.get_action_result(k) for k in keys])
    assert all(r == result for r in got)
    put_b, digests = timed(lambda: [store.put_blob(b) for b in blobs])
    get_b, datas = timed(lambda: [store.get_blob(x) for x in digests])
    assert datas == blobs
    print(f"[{kind}] {n} small entries through the store: action cache PUT {put_ac / n * 1e6:.0f} us, "
          f"GET+verify {get_ac / n * 1e6:.0f} us; blobs PUT {put_b / n * 1e6:.0f} us, GET+verify "
          f"{get_b / n * 1e6:.0f} us per request")
    return put_ac / n, get_ac / n, put_b / n, get_b / n


def grpc_vs_http(tmp: Path, servers: list) -> str:
    from hermetic_build.store.http import HttpStore
    from hermetic_build.store.reapi import ReapiStore
    from hermetic_build.store.remote import Signer

    nginx = NginxCache(tmp / "nginx-pr")
    servers.append(nginx)
    bgd = BuildGridCache(tmp / "bgd")
    servers.append(bgd)
    http_t = per_request_store("http", HttpStore(nginx.url, signer=Signer(b"bench-key")))
    grpc_t = per_request_store("grpc", ReapiStore(bgd.url, signer=Signer(b"bench-key"), timeout=10))
    names = ("AC PUT", "AC GET", "blob PUT", "blob GET")
    print("[grpc vs http] per request: " + ", ".join(f"{n} {g / h:.1f}x" for n, g, h in zip(names, grpc_t, http_t)))
    return bgd.url


def main() -> None:
    if sys.argv[1:] == ["grpc"]:
        tmp = Path(tempfile.mkdtemp(prefix="hb-bench-remote-"))
        servers = []
        try:
            url = grpc_vs_http(tmp, servers)
            locked = tmp / "locked"
            ws = example_copy(locked, tmp / "cache-lock")
            ws.hb("lock", "//env:nlp-lock", timeout=900)
            second_machine("grpc", url, tmp, locked)
        finally:
            for s in servers:
                s.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        return

    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-remote-"))
    servers = []
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        locked = tmp / "locked"
        ws = example_copy(locked, tmp / "cache-lock")
        ws.hb("lock", "//env:nlp-lock", timeout=900)
        # the lock's file:// URLs point into this copy's hb-out, which the other copies can read
        nginx = NginxCache(tmp / "nginx")
        servers.append(nginx)
        second_machine("http", nginx.url, tmp, locked)
        registry = Registry(tmp / "registry")
        servers.append(registry)
        second_machine("oci", f"oci://{registry.host}/hb/cache", tmp, locked)
        per_request(nginx)
        try:
            import grpc  # noqa: F401

            url = grpc_vs_http(tmp, servers)
            second_machine("grpc", url, tmp, locked)
        except ImportError:
            print("[grpc] skipped: the reapi extra (buildgrid, grpcio) is not installed")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
