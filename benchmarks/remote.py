"""Remote cache benchmark: the second machine's build with a warm remote vs a cold local build of the
example, bytes transferred, and per-request overhead for 1,000 small entries vs raw http.client; the
same for a REAPI cache (grpc://, a BuildGrid server) when the reapi extra is installed, with its
per-request cost next to the HTTP cache's.

Every row is whole processes as a user runs them (harness.py: >= 3 runs, min and median wall time,
peak RSS, `sync` before each timed run): each second-machine run is `hb build` in a fresh copy of the
example with an empty local cache; each per-request run is one process doing the 1,000 requests (its
wall time includes Python's start-up and imports; the per-request cost measured inside it is printed
beside it).

    python3 benchmarks/remote.py            # everything
    python3 benchmarks/remote.py grpc       # only the REAPI cache: per-request, then second machine
    python3 benchmarks/remote.py exec [N]   # remote execution: an N-genrule fan-out (default 200) built
                                            # locally with -j 2 vs on 1 and 2 `hb worker`s of a BuildGrid
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import Bench, Cmd, CommandFailed, run_once  # noqa: E402

# tests/support (and pytest with it) is imported only by the parent: the child processes measured
# below import what they use and nothing else

TARGETS = ("//channel:test-channel", "//env:nlp-env", "//data:stats")
HB = (sys.executable, "-m", "hermetic_build.cli")
N = 1000


def example_copy(root: Path, cache: Path, template: Path | None = None):
    from support import Workspace

    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(template or REPO / "examples", root, ignore=shutil.ignore_patterns("hb-out"))
    return Workspace(root, cache)


def hb_env(ws) -> dict:
    env = ws.env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def second_machine(kind: str, url: str, tmp: Path, locked: Path, runs: int) -> Bench:
    a = example_copy(tmp / f"{kind}-a", tmp / f"{kind}-cache-a", locked)
    a.hb("build", "--remote-cache", url, "--remote-upload", *TARGETS, timeout=900)
    bench = Bench(f"[{kind}] second machine: the example's {', '.join(TARGETS)} with a warm remote cache")
    copies: dict = {}

    def fresh(name: str):
        def before(i: int) -> None:
            copies[name] = example_copy(tmp / f"{kind}-{name}", tmp / f"{kind}-cache-{name}", locked)
        return before

    def cmd(name: str, *argv: str):
        return lambda i: Cmd((*HB, *argv), copies[name].root, hb_env(copies[name]))

    warm = bench.measure("hb build --remote-cache URL (fresh copy, empty local cache)",
                         cmd("b", "build", "--json", "--remote-cache", url, *TARGETS), runs=runs, before=fresh("b"),
                         timeout=900)
    summary = json.loads(warm.last.stdout)
    stats = json.loads(copies["b"].hb("cache", "stats", "--json").stdout)["last_build"]["remote"]
    cold = bench.measure("hb build, no remote (fresh copy, empty local cache)", cmd("c", "build", *TARGETS),
                         runs=runs, before=fresh("c"), timeout=900,
                         baseline="the same build on an empty local cache with no remote: every action runs here")
    bench.ratio(warm, cold, "second machine warm remote / cold local")
    bench.note(f"warm remote, last run: {summary['actions']['executed']} actions executed, "
               f"{stats['bytes_down'] / 1024:.0f} KiB down in {stats['blobs_down']} blobs")
    for name in ("a", "b", "c"):
        shutil.rmtree(tmp / f"{kind}-{name}", ignore_errors=True)
        shutil.rmtree(tmp / f"{kind}-cache-{name}", ignore_errors=True)
    return bench


# ----- per-request cost: each side is one child process doing N requests --------------------------------


def child_hb_http(url: str, offset: int) -> dict:
    """N small action-cache entries PUT and GET (+ verify) through hb's HttpStore."""
    import time

    from hermetic_build.digest import digest_bytes
    from hermetic_build.store.base import ActionResult, OutputEntry
    from hermetic_build.store.http import HttpStore
    from hermetic_build.store.remote import Signer

    store = HttpStore(url, signer=Signer(b"bench-key"))
    d = digest_bytes(b"x")
    result = ActionResult((OutputEntry("hb-out/p/x/o", "file", d),), 0, d, d)
    keys = [f"{i + offset:064x}" for i in range(N)]
    t0 = time.perf_counter()
    for k in keys:
        store.put_action_result(k, result)
    t1 = time.perf_counter()
    got = [store.get_action_result(k) for k in keys]
    t2 = time.perf_counter()
    assert all(r == result for r in got)
    return {"AC PUT": (t1 - t0) / N, "AC GET": (t2 - t1) / N}


def child_raw_http(url: str, offset: int) -> dict:
    """The same N PUTs and GETs of a sealed entry with http.client on one keep-alive connection."""
    import http.client
    import time

    from hermetic_build.digest import digest_bytes
    from hermetic_build.store.base import ActionResult, OutputEntry
    from hermetic_build.store.remote import Signer

    d = digest_bytes(b"x")
    body = Signer(b"bench-key").seal(f"{offset:064x}", ActionResult((OutputEntry("hb-out/p/x/o", "file", d),), 0, d, d))
    conn = http.client.HTTPConnection(*url.removeprefix("http://").split(":"))

    def raw(method, key, data=None):
        conn.request(method, f"/ac/{key}", body=data, headers={"Content-Length": str(len(data))} if data else {})
        return conn.getresponse().read()

    keys = [f"{i + offset:064x}" for i in range(N)]
    t0 = time.perf_counter()
    for k in keys:
        raw("PUT", k, body)
    t1 = time.perf_counter()
    got = [raw("GET", k) for k in keys]
    t2 = time.perf_counter()
    assert all(g == body for g in got)
    return {"AC PUT": (t1 - t0) / N, "AC GET": (t2 - t1) / N}


def child_store(kind: str, url: str, offset: int) -> dict:
    """N small action-cache entries and N small blobs, PUT and GET + verify, through an hb store."""
    import time

    from hermetic_build.store.base import ActionResult, OutputEntry
    from hermetic_build.store.remote import Signer

    if kind == "grpc":
        from hermetic_build.store.reapi import ReapiStore

        store = ReapiStore(url, signer=Signer(b"bench-key"), timeout=10)
    else:
        from hermetic_build.store.http import HttpStore

        store = HttpStore(url, signer=Signer(b"bench-key"))
    d = store.put_blob(b"x")
    result = ActionResult((OutputEntry("hb-out/p/x/o", "file", d),), 0, d, d)
    keys = [f"{i + offset:064x}" for i in range(N)]
    blobs = [f"small blob {kind} {offset} {i}".encode() for i in range(N)]
    t = [time.perf_counter()]
    for k in keys:
        store.put_action_result(k, result)
    t.append(time.perf_counter())
    got = [store.get_action_result(k) for k in keys]
    t.append(time.perf_counter())
    digests = [store.put_blob(b) for b in blobs]
    t.append(time.perf_counter())
    datas = [store.get_blob(x) for x in digests]
    t.append(time.perf_counter())
    assert all(r == result for r in got) and datas == blobs
    return {name: (t[i + 1] - t[i]) / N for i, name in enumerate(("AC PUT", "AC GET", "blob PUT", "blob GET"))}


CHILDREN = {"hb-http": lambda url, off: child_hb_http(url, off), "raw-http": child_raw_http,
            "store-http": lambda url, off: child_store("http", url, off),
            "store-grpc": lambda url, off: child_store("grpc", url, off)}


def child_cmd(name: str, url: str):
    """The command of run i of child `name`: its keys are its own (no two runs or children share one)."""
    base = list(CHILDREN).index(name)
    return lambda i: Cmd((sys.executable, __file__, "--child", name, url, str((base * 100 + i + 1) * N)))


def inner(row) -> dict:
    """Median per-request seconds the child processes measured inside themselves."""
    runs = [json.loads(r.stdout) for r in row.runs]
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


def us(values: dict) -> str:
    return ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in values.items())


def per_request(server, runs: int) -> Bench:
    bench = Bench(f"[http] {N} small action-cache entries, one process each")
    hb = bench.measure(f"hb HttpStore: {N} PUT then {N} GET + verify", child_cmd("hb-http", server.url), runs=runs)
    raw = bench.measure(f"http.client: {N} PUT then {N} GET", child_cmd("raw-http", server.url), runs=runs,
                        baseline="the same sealed entries PUT and GET with http.client on one keep-alive "
                                 "connection, no hb store (imports only hb's Signer to seal the body)")
    bench.ratio(hb, raw, "whole process hb / http.client")
    h, r = inner(hb), inner(raw)
    bench.note(f"per request, inside the processes: hb {us(h)}; http.client {us(r)} (ratios "
               + ", ".join(f"{k} {h[k] / r[k]:.1f}x" for k in h) + ")")
    return bench


def grpc_vs_http(tmp: Path, servers: list, runs: int) -> tuple[str, Bench]:
    from support import BuildGridCache, NginxCache

    nginx = NginxCache(tmp / "nginx-pr")
    servers.append(nginx)
    bgd = BuildGridCache(tmp / "bgd")
    servers.append(bgd)
    bench = Bench(f"[grpc vs http] {N} small action-cache entries and {N} small blobs through hb's stores")
    http_row = bench.measure("hb HttpStore (nginx WebDAV)", child_cmd("store-http", nginx.url), runs=runs,
                             baseline="the same requests through hb's HTTP cache store against nginx")
    grpc_row = bench.measure("hb ReapiStore (BuildGrid)", child_cmd("store-grpc", bgd.url), runs=runs)
    bench.ratio(grpc_row, http_row, "whole process grpc / http")
    g, h = inner(grpc_row), inner(http_row)
    bench.note(f"per request, inside the processes: grpc {us(g)}; http {us(h)} (ratios "
               + ", ".join(f"{k} {g[k] / h[k]:.1f}x" for k in g) + ")")
    return bgd.url, bench


FANOUT = """\
[genrule(name = "g%d" % i, srcs = ["in.txt"], outs = ["g%d.txt" % i], cmd = "(echo %d; cat $(SRCS)) > $(OUTS)" % i)
 for i in range(N)]
genrule(name = "all", srcs = [":g%d" % i for i in range(N)], outs = ["all.txt"], cmd = "cat $(SRCS) > $(OUTS)")
"""


def run_measured(argv: list[str], cwd: Path, env: dict) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB of the largest process of hb's tree, its --json "actions"): hb runs
    as a user runs it, through harness.run_once (a child subreaper: sandboxed actions count)."""
    try:
        run = run_once(Cmd(tuple(argv), cwd, env))
    except CommandFailed as exc:
        raise RuntimeError(str(exc)) from None
    try:
        actions = json.loads(run.stdout)["actions"]
    except (ValueError, KeyError):
        actions = None
    return run.seconds, run.max_rss_kib, actions


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
    if sys.argv[1:2] == ["--child"]:
        name, url, offset = sys.argv[2:5]
        print(json.dumps(CHILDREN[name](url, int(offset))))
        return
    if sys.argv[1:2] == ["exec"]:
        remote_execution(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
        return
    from support import NginxCache, Registry

    only_grpc = sys.argv[1:] == ["grpc"]
    runs = 3
    os.environ["PYTHONPATH"] = str(REPO)  # every hb this script starts runs this tree
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-remote-"))
    servers = []
    try:
        locked = tmp / "locked"
        ws = example_copy(locked, tmp / "cache-lock")
        ws.hb("lock", "//env:nlp-lock", timeout=900)
        # the lock's file:// URLs point into this copy's hb-out, which the other copies can read
        if only_grpc:
            url, bench = grpc_vs_http(tmp, servers, runs)
            print(bench.markdown(), flush=True)
            print(second_machine("grpc", url, tmp, locked, runs).markdown(), flush=True)
            return
        nginx = NginxCache(tmp / "nginx")
        servers.append(nginx)
        print(second_machine("http", nginx.url, tmp, locked, runs).markdown(), flush=True)
        registry = Registry(tmp / "registry")
        servers.append(registry)
        print(second_machine("oci", f"oci://{registry.host}/hb/cache", tmp, locked, runs).markdown(), flush=True)
        print(per_request(nginx, runs).markdown(), flush=True)
        try:
            import grpc  # noqa: F401
        except ImportError:
            print("[grpc] skipped: the reapi extra (buildgrid, grpcio) is not installed")
            return
        url, bench = grpc_vs_http(tmp, servers, runs)
        print(bench.markdown(), flush=True)
        print(second_machine("grpc", url, tmp, locked, runs).markdown(), flush=True)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
