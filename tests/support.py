"""Test support: temporary workspaces, the real `hb` command, and real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(__file__).resolve().parent / "data"  # copied from ../shared/data (PROVENANCE.md)


def require_tool(name: str) -> str:
    """A real tool the test needs. Missing tools fail the test (CI installs them), never skip it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get install)")
    return path


def copy_example(dest: Path, cache: Path) -> "Workspace":
    """examples/ as a fresh clone has it: its committed lock files, no hb-out."""
    shutil.copytree(REPO / "examples", dest, ignore=shutil.ignore_patterns("hb-out"))
    return Workspace(dest, cache)


class Workspace:
    def __init__(self, root: Path, cache: Path):
        self.root = root
        self.cache = cache

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def env(self) -> dict:
        env = dict(os.environ)
        env["HB_CACHE_DIR"] = str(self.cache)
        env.pop("COLUMNS", None)
        return env

    def hb(self, *args, check: bool = True, cwd: Path | None = None, timeout: float = 300):
        proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=cwd or self.root,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"hb {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def build_json(self, *labels: str, timeout: float = 600) -> dict:
        return json.loads(self.hb("build", "--json", *labels, timeout=timeout).stdout)


# ----- real servers on free 127.0.0.1 ports, stopped by PID -------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not answer in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class LoggedProcess:
    """A server or worker the tests started: its process (`proc`) and the log file it writes (`log`)."""

    proc: subprocess.Popen
    log: object

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


class Nginx:
    """nginx serving `root` read-only (static files), on a free port."""

    def __init__(self, root: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
            user root;
            worker_processes 1;
            daemon off;
            pid {workdir}/nginx.pid;
            error_log {workdir}/error.log;
            events {{ worker_connections 1024; }}
            http {{
                access_log {workdir}/access.log;
                client_body_temp_path {workdir}/body;
                proxy_temp_path {workdir}/proxy;
                fastcgi_temp_path {workdir}/fastcgi;
                uwsgi_temp_path {workdir}/uwsgi;
                scgi_temp_path {workdir}/scgi;
                server {{
                    listen 127.0.0.1:{self.port};
                    root {root};
                    location / {{ autoindex on; }}
                }}
            }}
        """)
        self.access_log = workdir / "access.log"
        self.proc = subprocess.Popen([require_tool("nginx"), "-c", str(conf), "-p", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        wait_for_http(self.url + "/", self.proc)

    def requests(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        stop(self.proc)


class NginxCache:
    """nginx with WebDAV PUT under /cas/ and /ac/: Bazel's HTTP cache layout. `mode` is "rw",
    "ro" (PUT forbidden: 403) or "auth" (basic auth with user hb / password secret)."""

    USER, PASSWORD = "hb", "secret"

    def __init__(self, workdir: Path, mode: str = "rw"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = workdir / "data"
        for sub in ("cas", "ac"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        auth = ""
        if mode == "auth":
            htpasswd = subprocess.run(["openssl", "passwd", "-apr1", self.PASSWORD], capture_output=True,
                                      text=True, check=True).stdout.strip()
            (workdir / "htpasswd").write_text(f"{self.USER}:{htpasswd}\n")
            auth = f'auth_basic "hb"; auth_basic_user_file {workdir}/htpasswd;'
        methods = "GET HEAD" if mode == "ro" else "GET HEAD PUT"
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
            user root;
            worker_processes 1;
            daemon off;
            pid {workdir}/nginx.pid;
            error_log {workdir}/error.log;
            events {{ worker_connections 256; }}
            http {{
                access_log {workdir}/access.log;
                client_body_temp_path {workdir}/body;
                proxy_temp_path {workdir}/proxy;
                fastcgi_temp_path {workdir}/fastcgi;
                uwsgi_temp_path {workdir}/uwsgi;
                scgi_temp_path {workdir}/scgi;
                server {{
                    listen 127.0.0.1:{self.port};
                    root {self.root};
                    client_max_body_size 0;
                    location / {{ return 404; }}
                    location ~ "^/(cas|ac)/[0-9a-f]{{64}}$" {{
                        {auth}
                        dav_methods PUT;
                        create_full_put_path on;
                        dav_access user:rw group:r all:r;
                        limit_except {methods} {{ deny all; }}
                    }}
                }}
            }}
        """)
        self.access_log = workdir / "access.log"
        self.proc = subprocess.Popen([require_tool("nginx"), "-c", str(conf), "-p", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        wait_for_http(self.url + "/", self.proc)

    def requests(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        stop(self.proc)


class Registry(LoggedProcess):
    """The Debian docker-registry (distribution 2.8) on a free port, storing under workdir."""

    def __init__(self, workdir: Path, *, htpasswd: tuple[str, str] | None = None, tls: tuple[Path, Path] | None = None):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log: {level: error}",
            f"storage: {{filesystem: {{rootdirectory: {self.storage}}}, delete: {{enabled: true}}}}",
            f"http: {{addr: {self.host}" + (f", tls: {{certificate: {tls[0]}, key: {tls[1]}}}" if tls else "") + "}",
        ]
        if htpasswd:
            user, password = htpasswd
            hashed = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True,
                                    check=True).stdout.strip()
            (workdir / "htpasswd").write_text(hashed + "\n")
            lines.append(f"auth: {{htpasswd: {{realm: hb-test, path: {workdir / 'htpasswd'}}}}}")
        conf = workdir / "config.yml"
        conf.write_text("\n".join(lines) + "\n")
        # its log goes to a file: an unread pipe fills up (an error line per missing blob) and then
        # the registry blocks on writing it, mid-request
        self.log = open(workdir / "registry.log", "w")
        self.proc = subprocess.Popen([require_tool("docker-registry"), "serve", str(conf)],
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)
        scheme = "https" if tls else "http"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        self.url = f"{scheme}://{self.host}"

    def blob_path(self, sha256: str) -> Path:
        return self.storage / "docker/registry/v2/blobs/sha256" / sha256[:2] / sha256 / "data"


class FaultyServer:
    def __init__(self, root: Path, workdir: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"faulty-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "servers" / "faulty_http.py"), "--root", str(root),
             "--port", str(self.port), "--log", str(self.log), *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        wait_for_http(self.url + "/", self.proc)

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        stop(self.proc)


# ----- conda environments -------------------------------------------------------------------------
VPKGS = {
    "linux-64": ["__unix", "__linux=5.10", "__glibc=2.36"],
    "osx-arm64": ["__unix", "__osx=13.0"],
}


def env_workspace(ws: Workspace, channel_url: str, dependencies: list[str], *, platforms=("linux-64",),
                  virtual_packages=None, env_platform: str = "linux-64", extra_build: str = "") -> None:
    """A package //env with an environment.yml, a conda_lock and a conda_env."""
    deps = "\n".join(f"  - {d}" for d in dependencies)
    ws.write("env/environment.yml", f"name: t\nchannels:\n  - {channel_url}\ndependencies:\n{deps}\n")
    vp = virtual_packages if virtual_packages is not None else {p: VPKGS[p] for p in platforms}
    ws.write("env/BUILD.hermetic", textwrap.dedent(f"""\
        conda_lock(
            name = "lock",
            platforms = {list(platforms)!r},
            virtual_packages = {vp!r},
        )
        conda_env(name = "env", lock = ":lock", platform = {env_platform!r})
    """) + extra_build)


def run_in_prefix(tree: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run a program of a staged environment with the tree placed at /opt/env (bubblewrap)."""
    return subprocess.run([require_tool("bwrap"), "--ro-bind", "/", "/", "--tmpfs", "/opt", "--ro-bind", str(tree),
                           "/opt/env", "--dev", "/dev", "--proc", "/proc", *argv],
                          capture_output=True, text=True, timeout=60)




def genrule_workspace(root: Path, cache: Path, build: str) -> Workspace:
    """A new workspace at root with package //p: its BUILD.hermetic (`build`) and p/in.txt."""
    root.mkdir(parents=True)
    (root / "hermetic.toml").write_text("")
    ws = Workspace(root, cache)
    ws.write("p/BUILD.hermetic", build)
    ws.write("p/in.txt", "hello remote\n")
    return ws


def start_bgd(server, bgd: Path, conf: Path) -> None:
    """Start `bgd server start conf` for a BuildGrid fixture (its port and log_path set) and wait until
    it listens; on failure the fixture is stopped and the log's tail raised."""
    server.log = open(server.log_path, "w")
    server.proc = subprocess.Popen([str(bgd), "server", "start", str(conf)], stdout=server.log,
                                   stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"bgd exited: {server.log_path.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"bgd did not listen on {server.port}: {server.log_path.read_text()[-4000:]}")


class BuildGridCache(LoggedProcess):
    """A real BuildGrid server (`bgd server start`) offering only the REAPI cache services
    (Capabilities, CAS, ByteStream, ActionCache) on a free 127.0.0.1 port. Its CAS is a disk
    storage under workdir, so a test can alter a stored blob (blob_path)."""

    def __init__(self, workdir: Path, instance: str = "", *, tls: tuple[Path, Path] | None = None):
        bgd = Path(sys.executable).parent / "bgd"
        if not bgd.exists():
            pytest.skip("BuildGrid (bgd) is not installed: pip install 'hermetic-build[reapi]'")
        self.port = free_port()
        self.instance = instance
        scheme = "grpcs" if tls else "grpc"
        self.url = f"{scheme}://127.0.0.1:{self.port}" + (f"/{instance}" if instance else "")
        workdir.mkdir(parents=True, exist_ok=True)
        channel = "insecure-mode: true"
        if tls:
            channel = (f"insecure-mode: false\n    credentials:\n      tls-server-cert: {tls[0]}\n"
                       f"      tls-server-key: {tls[1]}")
        self.storage = workdir / "storage"
        conf = workdir / "bgd.yml"
        conf.write_text(textwrap.dedent(f"""\
            server:
              - !channel
                address: "127.0.0.1:{self.port}"
                {{channel}}
            storages:
              - !disk-storage &cas-storage
                path: {self.storage}
            caches:
              - !lru-action-cache &ac
                storage: *cas-storage
                max-cached-refs: 100000
                allow-updates: true
            instances:
              - name: "{instance}"
                services:
                  - !action-cache
                    cache: *ac
                  - !cas
                    storage: *cas-storage
                  - !bytestream
                    storage: *cas-storage
            """).replace("{channel}", channel))
        self.log_path = workdir / "bgd.log"
        start_bgd(self, bgd, conf)

    def blob_path(self, sha256: str) -> Path:
        return self.storage / "cas" / "objects" / sha256[:2] / sha256[2:]


class Postgres:
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port (BuildGrid 0.4.4's scheduler refuses
    anything but PostgreSQL). Runs as the `postgres` user when started as root (postgres refuses root);
    its directory is a fresh one under /tmp that this user can enter. Stopped by PID."""

    def __init__(self):
        import pwd
        import shutil
        import tempfile

        initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
        if not initdb or not postgres:
            for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
                initdb, postgres = str(base / "initdb"), str(base / "postgres")
                break
        if not initdb or not Path(initdb).exists():
            pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="hb-pg-"))
        run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("PostgreSQL refuses to run as root and there is no `postgres` user")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        subprocess.run(run_as + [initdb, "-D", str(self.dir / "data"), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                                 "--no-sync"], check=True, capture_output=True)
        self.log = open(self.dir / "log", "w") if not run_as else subprocess.DEVNULL
        self.proc = subprocess.Popen(run_as + [postgres, "-D", str(self.dir / "data"), "-p", str(self.port), "-k",
                                               str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.3)

    def stop(self) -> None:
        import shutil

        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # runuser passes it on; postgres shuts down
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class BuildGridExecution:
    """A real BuildGrid server with the REAPI cache services and the Execution + Bots services (an
    sql scheduler on a throwaway PostgreSQL), on a free 127.0.0.1 port, instance `instance`. Bots whose
    session is silent for `keepalive` seconds are reaped and their leases given to others."""

    def __init__(self, workdir: Path, instance: str = "main", keepalive: int = 4):
        bgd = Path(sys.executable).parent / "bgd"
        if not bgd.exists():
            pytest.skip("BuildGrid (bgd) is not installed: pip install 'hermetic-build[reapi]'")
        pytest.importorskip("psycopg2")
        self.pg = Postgres()
        try:
            subprocess.run([sys.executable, "-c", "import sys; from sqlalchemy import create_engine; "
                            "from buildgrid.server.sql.models import Base; "
                            "Base.metadata.create_all(create_engine(sys.argv[1]))", self.pg.url],
                           check=True, capture_output=True, timeout=60)
        except BaseException:
            self.pg.stop()
            raise
        self.port = free_port()
        self.instance = instance
        self.url = f"grpc://127.0.0.1:{self.port}/{instance}"
        self.endpoint = f"grpc://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "bgd-exec.yml"
        conf.write_text(textwrap.dedent(f"""\
            server:
              - !channel
                address: "127.0.0.1:{self.port}"
                insecure-mode: true
            connections:
              - !sql-connection &sql
                connection-string: {self.pg.url}
                pool-size: 5
            storages:
              - !disk-storage &cas
                path: {workdir / "storage"}
            caches:
              - !lru-action-cache &ac
                storage: *cas
                max-cached-refs: 100000
                allow-updates: true
                cache-failed-actions: false
            schedulers:
              - !sql-scheduler &sched
                sql: *sql
                storage: *cas
                action-cache: *ac
                bot-session-keepalive-timeout: {keepalive}
                session-expiry-timer-interval: 1
                max-job-attempts: 5
                poll-interval: 0.1
                property-set: !dynamic-property-set
                  wildcard-property-keys: [hb-kind]
            instances:
              - name: "{instance}"
                services:
                  - !action-cache
                    cache: *ac
                  - !cas
                    storage: *cas
                  - !bytestream
                    storage: *cas
                  - !execution
                    scheduler: *sched
            thread-pool-size: 40
            """))
        self.log_path = workdir / "bgd.log"
        start_bgd(self, bgd, conf)

    def worker(self, workdir: Path, name: str) -> "HbWorker":
        return HbWorker(self, workdir, name)

    def stop(self) -> None:
        if getattr(self, "proc", None) is not None:
            stop(self.proc)
            self.log.close()
        self.pg.stop()


class HbWorker(LoggedProcess):
    """`hb worker --bots ... --instance ...` as a process (this tree's hb), logging to workdir/NAME.log."""

    def __init__(self, server: BuildGridExecution, workdir: Path, name: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "worker", "--bots", server.endpoint,
                                      "--instance", server.instance, "--id", name, "--workdir", str(workdir / name)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while "session" not in self.log_path.read_text() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hb worker exited: {self.log_path.read_text()}")
            time.sleep(0.1)

    def ran(self) -> int:
        return self.log_path.read_text().count(" ran ")
