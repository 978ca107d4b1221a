"""A hostile checkout's hermetic.toml (tenth session). It comes with the BUILD files, so it is as
hostile as they are; before `hb trust` existed it could:

- name a remote cache: hb sent it HB_REMOTE_USER/HB_REMOTE_PASSWORD and, with `env_allowlist` and
  `remote_upload`, the value of any variable of yours (a genrule echoing $AWS_SECRET_ACCESS_KEY into
  an output that was uploaded), and wrote its results into the local cache every workspace shares;
- name a cache directory that came with the checkout (or that another user prepared), whose pickled
  no-op and analysis state hb loads back: a planted `noop.pickle` ran code in hb's process.

Each test runs the real `hb` against the payload and fails on the code before `hb trust`."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

from blake3 import blake3

from support import NginxCache, Workspace

CANARY_CMD = "touch {canary}"


class _Payload:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (CANARY_CMD.format(canary=self.canary),))


def _checkout(root: Path, toml: str, build: str) -> Path:
    (root / "p").mkdir(parents=True)
    (root / "hermetic.toml").write_text(toml)
    (root / "p" / "BUILD.hermetic").write_text(build)
    return root


def _hb_without_cache_env(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """hb as a user runs it: no HB_CACHE_DIR, so hermetic.toml's cache_dir is the one used."""
    env = dict(os.environ)
    env.pop("HB_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", "hermetic_build.cli", *argv], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_checkout_cannot_send_your_credentials_and_variables_to_its_cache(tmp_path):
    server = NginxCache(tmp_path / "nginx", mode="auth")
    try:
        root = _checkout(tmp_path / "evil", f'env_allowlist = ["AWS_SECRET_ACCESS_KEY"]\nremote_cache = "{server.url}"\n'
                                             "remote_upload = true\n",
                         'genrule(name = "g", outs = ["o.txt"], cmd = "echo $AWS_SECRET_ACCESS_KEY > $(OUTS)")\n')
        ws = Workspace(root, tmp_path / "cache")
        before = len(server.requests())
        env = {"AWS_SECRET_ACCESS_KEY": "hunter2-secret", "HB_REMOTE_USER": NginxCache.USER,
               "HB_REMOTE_PASSWORD": NginxCache.PASSWORD}
        os.environ.update(env)
        try:
            proc = ws.hb("build", "//p:g", check=False)
            refused_requests = [r for r in server.requests()[before:] if " /ac/" in r or " /cas/" in r]
            refused_outputs = (root / "hb-out").exists()
            # the same build, trusted by its user, does reach the cache: the test's server works
            ws.hb("trust")
            ws.hb("build", "//p:g")
        finally:
            for name in env:
                os.environ.pop(name)
    finally:
        server.stop()
    assert proc.returncode == 2, proc.stderr
    assert "env_allowlist" in proc.stderr and "remote_cache" in proc.stderr and "hb trust" in proc.stderr
    assert refused_requests == []
    assert not refused_outputs
    uploaded = [p.read_bytes() for p in (server.root / "cas").iterdir()]
    assert b"hunter2-secret\n" in uploaded and len(server.requests()) > before


def _plant_state(cache: Path, workspace_root: Path, canary: Path) -> None:
    """A cache as hb makes one, with a no-op record and an analysis cache that run code when loaded."""
    state = cache / "workspaces" / blake3(str(workspace_root.resolve()).encode()).hexdigest()[:16]
    state.mkdir(parents=True)
    (cache / "hb-cache.json").write_text('{"layout": 1}')
    (state / "noop.pickle").write_bytes(pickle.dumps(_Payload(canary)))
    for name in ("analysis-0000000000000000.pickle",):
        (state / name).write_bytes(pickle.dumps(_Payload(canary)))


def test_a_cache_that_comes_with_the_checkout_is_refused(tmp_path):
    canary = tmp_path / "PWNED"
    root = _checkout(tmp_path / "evil", 'cache_dir = ".hbcache"\n',
                     'genrule(name = "g", outs = ["o.txt"], cmd = "echo hi > $(OUTS)")\n')
    _plant_state(root / ".hbcache", root, canary)
    for argv in (("build", "//p:g"), ("query", "//..."), ("trust",)):
        proc = _hb_without_cache_env(root, *argv)
        assert proc.returncode == 2 and "cache_dir' names a directory inside the workspace" in proc.stderr, proc.stderr
    assert not canary.exists()


def test_a_cache_another_user_prepared_is_used_only_once_trusted(tmp_path):
    canary = tmp_path / "PWNED"
    shared = tmp_path / "tmp-shared" / "hb-cache"  # /tmp/... on a machine with other users
    root = _checkout(tmp_path / "evil", f'cache_dir = "{shared}"\n',
                     'genrule(name = "g", outs = ["o.txt"], cmd = "echo hi > $(OUTS)")\n')
    _plant_state(shared, root, canary)
    proc = _hb_without_cache_env(root, "build", "//p:g")
    assert proc.returncode == 2 and f'line 1: cache_dir = "{shared}"' in proc.stderr, proc.stderr
    assert not canary.exists()
    # trusted, it is used as the user chose: (this payload then runs, as any code in a cache you trust)
    assert "cache_dir" in _hb_without_cache_env(root, "trust").stdout
