"""Hostile action kinds inside the confined worker_exec (rexec/confine.py): a kind's Python runs what a
client's params make it run, so these kinds try what such Python could do from inside the sandbox.
Each runs on a real BotWorker (test_adv_worker.make_worker), with and without the fork server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from buildgrid._protos.google.rpc import code_pb2

sys.path.insert(0, str(Path(__file__).parent))
from test_adv_worker import lease, make_worker, shell_action  # noqa: E402

ESCAPE_KIND = '''
import os

from hermetic_build.api import register_action_kind


def run(execution):
    found = []
    # the host's sysctls: kernel.core_pattern runs a program as root outside every namespace. Opened
    # for writing and closed, never written.
    try:
        os.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))
        found.append("SYSCTL-WRITABLE")
    except OSError as exc:
        found.append(f"sysctl refused: {exc.strerror}")
    # with the fork server, stdout is a file the worker reads back after the action: make it a link
    # to a file of the worker's host
    try:
        stdout = os.readlink("/proc/self/fd/1")
        if stdout.startswith("/") and not stdout.startswith("pipe:"):
            os.unlink(stdout)
            os.symlink(execution.params["secret"], stdout)
            found.append("stdout relinked")
    except OSError as exc:
        found.append(f"relink refused: {exc.strerror}")
    execution.path(execution.action.outputs[0]).write_text("\\n".join(found) + "\\n")


register_action_kind("test.escape", "1", run)
'''


def escape_lease(tmp_path, preload: bool) -> dict:
    """Run the escape kind on a worker; what it found, and the stdout the worker reported."""
    secret = tmp_path / "host" / "secret.txt"

    def build(root):
        (root / ".hb").mkdir()
        (root / ".hb" / "action.json").write_bytes(shell_action(
            "", inputs=(), kind="test.escape", version="1", mnemonic="Escape",
            params_json=json.dumps({"secret": str(secret)})))

    worker = make_worker(tmp_path, preload=preload)
    status, result = worker._work(lease(worker, tmp_path, build))
    assert status.code == code_pb2.OK, status.message
    assert worker._confined
    out = next((f for f in result.output_files if f.path == "p/o.txt"), None)
    return {"found": worker.cas.blobs[out.digest.hash].decode() if out else "",
            "stdout": worker.cas.blobs.get(result.stdout_digest.hash, b"").decode(errors="replace"),
            "stderr": worker.cas.blobs.get(result.stderr_digest.hash, b"").decode(errors="replace"),
            "exit": result.exit_code}


def open_to_confined(path: Path) -> None:
    """pytest's directories are 0700: a worker running as root starts the sandbox as another user
    (confine.CONFINED_ID), which must reach the rule modules bound read-only."""
    import tempfile

    top = Path(tempfile.gettempdir()).resolve()
    for p in [path, *path.parents]:
        if p == top or p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o755)


def install_test_kind(tmp_path: Path, monkeypatch, module: str, source: str, path: list[str]) -> None:
    """A rule module `module` (registering a test kind) for the worker: HB_RULE_MODULES names it, the
    worker's PYTHONPATH (what it binds for the confined worker_exec) finds it first, then `path`."""
    from hermetic_build.rexec import confine

    if confine.nesting_works() is not None:
        pytest.fail(f"bubblewrap does not nest here: {confine.nesting_works()}")
    open_to_confined(tmp_path)
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / f"{module}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(modules), *path])))
    monkeypatch.setenv("HB_RULE_MODULES", f"rules,{module}")


def _interpreter() -> tuple[str, list[str]]:
    """The Python the worker runs with, and what it needs on PYTHONPATH. As root, the worker starts the
    sandbox as another user, who must be able to read the interpreter: where this one lies under root's
    home (pyenv), the system's Python of the same version with this one's site-packages."""
    import site
    import sysconfig

    system = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.geteuid() == 0 and os.path.exists(system) and not sysconfig.get_paths()["stdlib"].startswith("/usr/"):
        return system, [*site.getsitepackages()]
    return sys.executable, []


def _run(tmp_path, monkeypatch, preload) -> dict:
    """escape_lease in a fresh process (the fork server is started once per process, with the rule
    modules of that moment), with _interpreter()."""
    from hermetic_build.rexec import confine

    python, extra = _interpreter()
    hb_root = str(Path(confine.__file__).resolve().parent.parent.parent)
    install_test_kind(tmp_path, monkeypatch, "escape_kind", ESCAPE_KIND, [hb_root, *extra])
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret.txt").write_text("HOST-SECRET\n")
    here = Path(__file__).parent
    script = (f"import sys, json; sys.path[:0] = {[str(here.parent), str(here)]!r}\n"
              "from pathlib import Path\nfrom test_adv_confine import escape_lease\n"
              f"if __name__ == '__main__':\n    print(json.dumps(escape_lease(Path({str(tmp_path)!r}), {preload!r})))\n")
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "run_escape.py").write_text(script)
    proc = subprocess.run([python, str(tmp_path / "runner" / "run_escape.py")], capture_output=True,
                          text=True, timeout=300, cwd=here.parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preload", [False, True])
def test_a_kind_cannot_write_the_hosts_sysctls(tmp_path, monkeypatch, preload):
    """The host's /proc is bound into the sandbox (for the nested bubblewrap) and writable; a worker
    running as root mapped the kind's uid 1000 to the host's uid 0, and the kernel lets uid 0 write
    /proc/sys without any capability: kernel.core_pattern ('|/action/dir/x') would run a program as
    root on the host at the next crash."""
    got = _run(tmp_path, monkeypatch, preload)
    assert "SYSCTL-WRITABLE" not in got["found"] and "sysctl refused" in got["found"], got


def test_a_kind_cannot_have_the_worker_read_a_file_through_its_log(tmp_path, monkeypatch):
    """With the fork server, worker_exec's stdout and stderr are files in the directory the confined
    kind can write; the worker read them back following links: a kind that replaced its stdout with a
    link to a host file had the worker upload that file as the action's stdout."""
    got = _run(tmp_path, monkeypatch, True)
    assert "stdout relinked" in got["found"], got  # it could (its directory is writable); the worker did not follow
    assert "HOST-SECRET" not in got["stdout"] + got["stderr"], got
