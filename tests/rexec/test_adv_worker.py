"""Hostile leases handed straight to `hb worker`'s lease handling (rexec/worker.py BotWorker._work),
with an in-memory CAS: whoever can submit work to the engine writes the Action, the Command and the
whole input root. Each test checks that nothing happened outside the action's directory."""

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as pb
from buildgrid._protos.google.rpc import code_pb2, status_pb2
from google.protobuf import any_pb2

from hermetic_build.action import Action, File
from hermetic_build.label import Label
from hermetic_build.rexec import description
from hermetic_build.rexec.client import WORKER_ARGV
from hermetic_build.rexec.merkle import BlobIngest, Upload, hb_tree_to_reapi
from hermetic_build.rexec.worker import WORKER_MODULE, BotWorker
from hermetic_build.sandbox import FIXED_PATH
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import store_tree


class MemoryCas:
    """The SHA-256 side of a CAS, in memory, verifying reads as ReapiStore does."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}

    def add(self, data: bytes):
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return pb.Digest(hash=sha, size_bytes=len(data))

    def _get(self, sha, size):
        data = self.blobs.get(sha)
        if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            return None
        return data

    def read_sha(self, sha, size, limit=1 << 30):
        return self._get(sha, size) if 0 <= size <= limit else None

    def read_sha_many(self, pairs, sink):
        for sha, size in pairs:
            data = self._get(sha, size)
            if data is not None:
                sink(sha, data)

    def fetch_sha(self, sha, size, dest, *, dir_fd=None, mode=None):
        data = self._get(sha, size)
        if data is None:
            return False
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if mode is None else mode, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def upload_sha(self, blobs):
        for sha, (_n, data) in blobs.items():
            self.blobs[sha] = data if isinstance(data, bytes) else open(data, "rb").read()
        return 0


def make_worker(tmp_path, preload=False) -> BotWorker:
    w = BotWorker.__new__(BotWorker)
    w.cas, w.pb, w.code_pb, w.status_pb = MemoryCas(), pb, code_pb2, status_pb2
    w.bot_id = "test-worker"
    w.workdir = tmp_path / "worker"
    w.workdir.mkdir(mode=0o700)
    w.store = LocalStore(w.workdir / "cache")
    w.ingest = BlobIngest(w.cas, w.store)
    w._sha_memo, w.log, w.done, w.ran, w.preload, w._mp, w._confined = {}, lambda line: None, set(), 0, preload, None, None
    return w


def shell_action(cmd: str, inputs=("p/in.txt",), outputs=("p/o.txt",), **kw) -> bytes:
    fields = dict(owner=Label("p", "g"), mnemonic="Genrule", kind="shell", version="1",
                  inputs=tuple(File(p) for p in inputs), outputs=tuple(File(p, Label("p", "g")) for p in outputs),
                  params_json=json.dumps({"cmd": cmd}), platform="linux-64", env_allowlist=(),
                  description="Genrule //p:g")
    fields.update(kw)
    return description.encode(Action(**fields), {}, 0)


def lease(worker, tmp_path, build_root, env=(("PATH", FIXED_PATH),), outputs=("p/o.txt",), argv=WORKER_ARGV,
          timeout=0):
    """The lease payload of an action whose input root is the directory build_root(root) makes (that
    may run `timeout` seconds, 0: no limit)."""
    src = tmp_path / "input-root"
    src.mkdir()
    build_root(src)
    scratch = LocalStore(tmp_path / "client-cache")
    upload = Upload()
    root_sha, root_size = hb_tree_to_reapi(pb, scratch, store_tree(scratch, src), upload, {}, {})
    worker.cas.upload_sha(upload.blobs)
    command = pb.Command(arguments=list(argv),
                         environment_variables=[pb.Command.EnvironmentVariable(name=k, value=v) for k, v in env],
                         output_paths=sorted([".hb/outputs.json", *outputs]))
    action = pb.Action(command_digest=worker.cas.add(command.SerializeToString()),
                       input_root_digest=pb.Digest(hash=root_sha, size_bytes=root_size))
    action.timeout.seconds = timeout
    payload = any_pb2.Any()
    payload.Pack(action)
    return payload


def basic_root(cmd="cp p/in.txt p/o.txt", **kw):
    def build(root):
        (root / "p").mkdir()
        (root / "p" / "in.txt").write_text("hello\n")
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(cmd, **kw))
    return build


def test_an_honest_lease_runs(tmp_path):
    worker = make_worker(tmp_path)
    status, result = worker._work(lease(worker, tmp_path, basic_root()))
    assert status.code == code_pb2.OK, status.message
    assert result.exit_code == 0
    assert [f.path for f in result.output_files] == [".hb/outputs.json", "p/o.txt"]


def _evil_program(path, canary):
    path.write_text(f"#!/bin/sh\necho pwned > {canary}\nexit 1\n")
    os.chmod(path, 0o755)


@pytest.mark.parametrize("preload", [False, True])
def test_the_commands_environment_cannot_choose_what_the_worker_runs(tmp_path, preload):
    """PATH=.hb made worker_exec look up bubblewrap in the input root's .hb/ (which stays in the action
    directory, the working directory of worker_exec): the input root's `bwrap` ran on the worker's
    host, outside any sandbox, as the worker's user."""
    canary = tmp_path / "pwned"
    base = basic_root()

    def build(root):
        base(root)
        for name in ("bwrap", "python3", "bash", "true"):
            _evil_program(root / ".hb" / name, canary)

    worker = make_worker(tmp_path, preload=preload)
    status, _result = worker._work(lease(worker, tmp_path, build, env=(("PATH", ".hb:" + FIXED_PATH),)))
    assert not canary.exists(), "the input root's program ran on the worker"
    assert status.code != code_pb2.OK


@pytest.mark.parametrize("name,value", [("LD_PRELOAD", ".hb/evil.so"), ("HB_RULE_MODULES", "antigravity"),
                                        ("PYTHONPATH", "."), ("BASH_ENV", ".hb/x")])
def test_only_the_path_hb_sends_is_accepted(tmp_path, name, value):
    worker = make_worker(tmp_path)
    status, _result = worker._work(lease(worker, tmp_path, basic_root(),
                                         env=sorted((("PATH", FIXED_PATH), (name, value)))))
    assert status.code == code_pb2.FAILED_PRECONDITION, status.message


def test_the_input_root_cannot_stand_in_for_hb(tmp_path):
    """`python -m` puts its working directory, the input root, first on sys.path: an input root holding
    a package `hermetic_build` was imported instead of the worker's hb (preload off), outside any sandbox."""
    canary = tmp_path / "pwned"
    base = basic_root()

    def build(root):
        base(root)
        (root / "hermetic_build").mkdir()
        (root / "hermetic_build" / "__init__.py").write_text(f"open({str(canary)!r}, 'w').write('pwned')\n")
        (root / "hermetic_build" / "worker_exec.py").write_text("")

    worker = make_worker(tmp_path, preload=False)
    status, result = worker._work(lease(worker, tmp_path, build))
    assert not canary.exists(), "the input root's hermetic_build was imported on the worker"


def test_the_command_hb_sends_keeps_the_input_root_off_sys_path(tmp_path):
    """Another REAPI runner (BuildGrid's, Buildbarn's) runs the Command as written, in the input root:
    `python3 -m hermetic_build.worker_exec` put the input root first on sys.path, so a package
    `hermetic_build` sent with the inputs ran on the runner's machine. hb's clients send `-P`."""
    import subprocess
    import sys

    canary = tmp_path / "pwned"
    root = tmp_path / "root"
    (root / "hermetic_build").mkdir(parents=True)
    (root / "hermetic_build" / "__init__.py").write_text(f"open({str(canary)!r}, 'w').write('pwned')\n")
    (root / "hermetic_build" / "worker_exec.py").write_text("")
    proc = subprocess.run([sys.executable, *WORKER_ARGV[1:]], cwd=root, capture_output=True, text=True,
                          env={"PATH": FIXED_PATH}, timeout=120)
    assert not canary.exists(), "the input root's hermetic_build was imported by the Command hb sends"
    assert proc.returncode == 2 and "refused .hb/action.json" in proc.stderr, proc.stderr  # the real worker_exec ran


def test_the_worker_takes_the_command_with_and_without_p(tmp_path):
    """Clients from before `-P` sent `python3 -m ...`: the worker runs both (it adds -P itself), nothing else."""
    worker = make_worker(tmp_path, preload=False)
    taken = (["python3", "-P", "-m", WORKER_MODULE, ".hb/action.json"], ["python3", "-m", WORKER_MODULE, ".hb/action.json"])
    refused = (["python3", "-P", "-m", WORKER_MODULE], ["python3", "-I", "-m", WORKER_MODULE, ".hb/action.json"],
               ["sh", "-P", "-m", WORKER_MODULE, ".hb/action.json"], [])
    for n, argv in enumerate(taken + refused):
        (tmp_path / str(n)).mkdir()
        status, result = worker._work(lease(worker, tmp_path / str(n), basic_root(), argv=argv))
        if argv in taken:
            assert status.code == code_pb2.OK and result.exit_code == 0, (argv, status.message)
        else:
            assert status.code == code_pb2.FAILED_PRECONDITION, (argv, status.message)


def test_local_only_kinds_never_run_on_a_worker(tmp_path):
    """Fetches (local_only: the network, or a layout on the machine's disk) never leave the client.
    A worker ran a conda.fetch sent straight to the engine: it requested whatever URL the description
    named from the worker's network (an internal host, a cloud metadata address)."""
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/internal/secret.conda"

        def build(root):
            (root / ".hb").mkdir()
            (root / ".hb" / "action.json").write_bytes(shell_action(
                "", inputs=(), outputs=("p/x.conda",), kind="conda.fetch", version="3", mnemonic="CondaFetch",
                params_json=json.dumps({"sha256": "0" * 64, "filename": "x.conda"}),
                hints_json=json.dumps({"urls": [url]})))

        worker = make_worker(tmp_path)
        status, result = worker._work(lease(worker, tmp_path, build, outputs=("p/x.conda",)))
    finally:
        server.shutdown()
    assert seen == [], "the worker fetched a URL for a local-only action"
    assert result is None or result.exit_code != 0


def _outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    return outside


def test_a_link_at_hb_cache_does_not_move_the_actions_directory(tmp_path):
    """worker_exec keeps its store and sandbox at .hb/cache of the input root: a link there made it
    create the store, the sandbox and the action's inputs wherever the link pointed."""
    outside = _outside(tmp_path)
    base = basic_root()

    def build(root):
        base(root)
        os.symlink(str(outside), root / ".hb" / "cache")

    worker = make_worker(tmp_path)
    status, result = worker._work(lease(worker, tmp_path, build))
    assert list(outside.iterdir()) == []
    assert result is None or result.exit_code != 0 or status.code != code_pb2.OK


def test_an_output_under_an_undeclared_link_creates_nothing_outside(tmp_path):
    """The input root may hold only the description and the declared inputs: an undeclared link
    `x -> /outside` and a declared output x/sub/o.txt had worker_exec create /outside/sub."""
    outside = _outside(tmp_path)

    def build(root):
        (root / "p").mkdir()
        (root / "p" / "in.txt").write_text("hello\n")
        os.symlink(str(outside), root / "x")
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action("cp p/in.txt x/sub/o.txt", outputs=("x/sub/o.txt",)))

    worker = make_worker(tmp_path)
    status, result = worker._work(lease(worker, tmp_path, build, outputs=("x/sub/o.txt",)))
    assert list(outside.iterdir()) == []
    assert result is None or result.exit_code != 0 or status.code != code_pb2.OK


def test_an_output_under_a_link_of_an_input_directory_creates_nothing_outside(tmp_path):
    outside = _outside(tmp_path)

    def build(root):
        (root / "d").mkdir()
        os.symlink(str(outside), root / "d" / "l")
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "true", inputs=(), outputs=("d/l/sub/o.txt",),
        ).replace(b'"inputs":[]', b'"inputs":[{"dir":true,"owner":"//p:d","path":"d"}]'))

    worker = make_worker(tmp_path)
    status, result = worker._work(lease(worker, tmp_path, build, outputs=("d/l/sub/o.txt",)))
    assert list(outside.iterdir()) == []
    assert result is None or result.exit_code != 0 or status.code != code_pb2.OK


@pytest.mark.parametrize("placed", [{"stolen": "SECRET"}, {"../../../../../../../../ESCAPE": "p/in.txt"}])
def test_python_kinds_read_and_write_only_inside_the_action(tmp_path, placed):
    """Kinds that run Python in worker_exec (outside bubblewrap) resolve paths their params name:
    oci.files with files={"stolen": "/abs/host/file"} copied a file of the worker's disk into the
    output uploaded to the client, and a `../` destination wrote outside the action's directory."""
    secret = tmp_path / "secret.txt"
    secret.write_text("worker's secret\n")
    escape = tmp_path / "ESCAPE"
    files = {k: (str(secret) if v == "SECRET" else v) for k, v in placed.items()}
    if "../../../../../../../../ESCAPE" in files:  # as many ../ as reach / from the sandbox, then down here
        files = {"../" * 40 + str(escape).lstrip("/"): "p/in.txt"}

    def build(root):
        (root / "p").mkdir()
        (root / "p" / "in.txt").write_text("hello\n")
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", outputs=("p/tree",), kind="oci.files", version="1", mnemonic="OciFiles",
            params_json=json.dumps({"files": files, "mode": ""})).replace(b'"dir":false,"owner":"//p:g"',
                                                                          b'"dir":true,"owner":"//p:g"'))

    worker = make_worker(tmp_path)
    status, result = worker._work(lease(worker, tmp_path, build, outputs=("p/tree",)))
    assert not escape.exists(), "worker_exec wrote outside the action's directory"
    assert not any(b"worker's secret" in data for data in worker.cas.blobs.values()), "a worker file was uploaded"


def test_a_mount_named_by_params_is_a_declared_input(tmp_path):
    """env.run binds params["tree"] read-only into the sandbox: naming a host directory there
    (`/home/worker`) showed its files to the command; a failing command's stdout goes back to the client."""
    host = tmp_path / "host-dir"
    host.mkdir()
    (host / "secret.txt").write_text("worker's secret\n")

    def build(root):
        (root / "p").mkdir()
        (root / "p" / "in.txt").write_text("hello\n")
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "cat /opt/env/secret.txt", outputs=("p/o.txt", "p/provenance.intoto.json"), kind="env.run",
            version="2", mnemonic="EnvRun",
            params_json=json.dumps({"tree": str(host), "prefix": "/opt/env", "env": {}, "cmd": "cat /opt/env/secret.txt; exit 1",
                                    "lock": {"content_hash": "x", "platform": "linux-64"}, "target": "//p:g"})))

    worker = make_worker(tmp_path)
    status, result = worker._work(lease(worker, tmp_path, build, outputs=("p/o.txt", "p/provenance.intoto.json")))
    assert not any(b"worker's secret" in data for data in worker.cas.blobs.values()), "a worker file was uploaded"


SLOPPY_KIND = '''
from hermetic_build.api import register_action_kind


def run(execution):
    """A kind that trusts its params (none of hb's does: they go through declared_input)."""
    found = []
    try:
        with open(execution.params["victim"], "w") as f:
            f.write("pwned")
        found.append("wrote")
    except OSError as exc:
        found.append(f"write refused: {exc.strerror}")
    try:
        with open(execution.params["secret"]) as f:
            found.append("read " + f.read())
    except OSError as exc:
        found.append(f"read refused: {exc.strerror}")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.sloppy", "1", run)
'''


def _sloppy_lease(tmp_path, preload: bool) -> str:
    """Run the sloppy kind on a worker (in this process, or with the fork server in a fresh one: it is
    started once per process, with the rule modules of that moment); its output, or fail."""
    secret, victim = tmp_path / "host" / "secret.txt", tmp_path / "host" / "victim.txt"

    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind="test.sloppy", version="1", mnemonic="Sloppy",
            params_json=json.dumps({"victim": str(victim), "secret": str(secret)})))

    worker = make_worker(tmp_path, preload=preload)
    status, result = worker._work(lease(worker, tmp_path, build))
    assert status.code == code_pb2.OK and result.exit_code == 0, (status.message, worker.cas.blobs.get(
        result.stderr_digest.hash if result else ""))
    assert worker._confined
    out = next(f for f in result.output_files if f.path == "p/o.txt")
    return worker.cas.blobs[out.digest.hash].decode()


@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_that_trusts_its_params_reaches_only_its_action_directory(tmp_path, monkeypatch, preload):
    """worker_exec runs a kind's Python in bubblewrap (rexec/confine.py) where it nests, forked from the
    fork server or not: a kind that opened a path of its params as given (oci.files, env.run and the
    docker archive did, before) wrote and read the worker's files. Confined, only the action's
    directory is writable and the host's files outside hb, Python and the rule modules are not there."""
    import subprocess
    import sys

    from test_adv_confine import install_test_kind

    install_test_kind(tmp_path, monkeypatch, "sloppy_kind", SLOPPY_KIND, [os.environ.get("PYTHONPATH", "")])
    secret, victim = tmp_path / "host" / "secret.txt", tmp_path / "host" / "victim.txt"
    secret.parent.mkdir()
    secret.write_text("HOST-SECRET\n")
    if preload:
        script = (f"import sys; sys.path[:0] = {[str(Path(__file__).parent.parent), str(Path(__file__).parent)]!r}\n"
                  "from pathlib import Path\nfrom test_adv_worker import _sloppy_lease\n"
                  f"if __name__ == '__main__':\n    print(_sloppy_lease(Path({str(tmp_path)!r}), True))\n")
        (tmp_path / "runner").mkdir()  # its directory is on sys.path, so visible read-only: not the secret's
        (tmp_path / "runner" / "run_sloppy.py").write_text(script)
        proc = subprocess.run([sys.executable, str(tmp_path / "runner" / "run_sloppy.py")], capture_output=True, text=True,
                              timeout=300, cwd=Path(__file__).parent.parent.parent)
        assert proc.returncode == 0, proc.stderr[-3000:]
        text = proc.stdout
    else:
        text = _sloppy_lease(tmp_path, False)
    assert not victim.exists(), "a kind's Python wrote a file of the worker's host"
    assert "HOST-SECRET" not in text and "read refused" in text and "write refused" in text, text
