"""Remote cache benchmark: the second machine's build with a warm remote vs a cold local build of the
example, bytes transferred, and per-request overhead for 1,000 small entries vs raw http.client; the
same for a REAPI cache (grpc://, a BuildGrid server) when the reapi extra is installed, with its
per-request cost next to the HTTP cache's.

    python3 benchmarks/remote.py            # everything
    python3 benchmarks/remote.py grpc       # only the REAPI cache: per-request, then second machine
    python3 benchmarks/remote.py exec [N]   # remote execution: an N-genrule fan-out (default 200) built
                                            # locally with -j 2 vs on 1 and 2 `hb worker`s of a BuildGrid
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


FANOUT = """\
[genrule(name = "g%d" % i, srcs = ["in.txt"], outs = ["g%d.txt" % i], cmd = "(echo %d; cat $(SRCS)) > $(OUTS)" % i)
 for i in range(N)]
genrule(name = "all", srcs = [":g%d" % i for i in range(N)], outs = ["all.txt"], cmd = "cat $(SRCS) > $(OUTS)")
"""


def run_measured(argv: list[str], cwd: Path, env: dict) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB of the hb process, its --json "actions"): hb runs as a user runs it, a child of
    a forked helper whose getrusage(RUSAGE_CHILDREN) then holds only that hb process."""
    import resource
    import subprocess

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper
        os.close(read)
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        try:
            actions = json.loads(proc.stdout)["actions"]
        except (ValueError, KeyError):
            actions = None
        os.write(write, json.dumps([wall, rss, proc.returncode, actions, proc.stderr[-2000:]]).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    wall, rss, code, out, err = json.loads(b"".join(chunks))
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {err}")
    return wall, rss, out


def remote_execution(n: int, reps: int = 3) -> None:
    """An n-genrule fan-out (each genrule: one small file from one source) plus the genrule that
    gathers them, built from an empty cache: locally with -j 2, and with --remote-executor on one and
    on two hb workers of a BuildGrid (Execution + Bots, PostgreSQL scheduler) on this machine, with
    -j 8 (actions in flight). Each repetition changes the source, so neither cache can answer."""
    import statistics

    from support import BuildGridExecution

    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-rexec-"))
    server = BuildGridExecution(tmp / "bgd", keepalive=30)
    workers = []
    results: dict[str, list[tuple[float, int]]] = {"local -j 2": [], "1 remote worker": [], "2 remote workers": []}
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        hb = [sys.executable, "-m", "hermetic_build.cli"]
        for rep in range(reps):
            for config in results:
                want = {"1 remote worker": 1, "2 remote workers": 2}.get(config, 0)
                while len(workers) < want:
                    workers.append(server.worker(tmp / "workers", f"w{len(workers) + 1}"))
                while len(workers) > want:
                    workers.pop().stop()
                root = tmp / f"ws-{rep}-{config.replace(' ', '-')}"
                (root / "p").mkdir(parents=True)
                (root / "hermetic.toml").write_text("")
                (root / "p" / "BUILD.hermetic").write_text(FANOUT.replace("range(N)", f"range({n})"))
                (root / "p" / "in.txt").write_text(f"repetition {rep} {config}\n")
                run_env = {**env, "HB_CACHE_DIR": str(tmp / f"cache-{rep}-{config.replace(' ', '-')}")}
                argv = hb + ["build", "--json", "//p:all"]
                argv += ["-j", "2"] if not want else ["-j", "8", "--remote-executor", server.url]
                os.sync()
                wall, rss, actions = run_measured(argv, root, run_env)
                assert actions == {"executed": n + 1, "cached": 0}, actions
                results[config].append((wall, rss))
                print(f"  rep {rep + 1} {config}: {wall:.2f} s, hb peak RSS {rss / 1024:.0f} MiB", flush=True)
        base = statistics.median(w for w, _ in results["local -j 2"])
        print(f"[exec] {n}-genrule fan-out from an empty cache, {reps} repetitions, whole hb process wall time "
              f"(baseline: hb build -j 2, all actions in local bubblewrap sandboxes):")
        for config, rows in results.items():
            walls = [w for w, _ in rows]
            med = statistics.median(walls)
            print(f"  {config:18s} min {min(walls):7.2f} s  median {med:7.2f} s  ratio to local {med / base:5.2f}  "
                  f"hb peak RSS {max(r for _, r in rows) / 1024:.0f} MiB")
    finally:
        for w in workers:
            w.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["exec"]:
        remote_execution(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        return
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
