"""One `uv pip compile` as a process: its exact inputs, started at once, its result or its end.

`hb lock` starts uv as a process and collects it later, so the uv runs of several platforms overlap
each other and the conda solves. It also starts, as soon as the lock begins, the uv runs whose inputs
the last successful `hb lock` of the same target recorded (state, never a build input): they run while
hb imports conda-lock, reads the environment and solves. A run is used only if the inputs computed
from this solve are byte for byte the recorded ones, so its result is the one a run started after the
solve would have given at the same moment (uv still asks PyPI); otherwise it is killed unused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

# the environment uv runs with: no UV_* / PIP_* settings of the user's shell change a lock
_ENV_KEPT = ("PATH", "HOME", "LANG", "SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy", "no_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_SCHEMA = 2  # 2: UvInputs.indexes
DEFAULT_UV_TIMEOUT_S = 900
DEFAULT_UV_MAX_MEMORY_MB = 4096
_MAX_STDERR = 1 << 20  # what of uv's stderr an error shows


@dataclass(frozen=True)
class UvLimits:
    """Bounds of one uv process. An index or find-links page is outside data, and uv bounds neither
    a page's size nor its whole time (its timeout is per read): a page sent as fast as loopback goes
    took uv to 10 GB of memory in 25 s, one sent a byte a second held it past any wait (reproduced).
    uv runs with RLIMIT_DATA (its heap: an allocation past it ends uv) and RLIMIT_FSIZE (no file it
    writes, in its cache or its scratch directory, grows past it) at max_memory_mb, and is killed
    timeout_s after it started. `where`: the settings that raise them, for the error's hint."""

    timeout_s: int = DEFAULT_UV_TIMEOUT_S
    max_memory_mb: int = DEFAULT_UV_MAX_MEMORY_MB
    where: str = "[conda] uv_timeout_s, uv_max_memory_mb in hermetic.toml"

    def apply(self) -> None:
        """In the child, before uv is executed (subprocess's preexec_fn): only getrlimit and setrlimit
        calls, no import (`resource` is imported with this module: an import in a child forked from a
        process with threads can wait for ever on a lock one of them held at the fork)."""
        size = self.max_memory_mb << 20
        for limit in (resource.RLIMIT_DATA, resource.RLIMIT_FSIZE):
            hard = resource.getrlimit(limit)[1]
            resource.setrlimit(limit, (size if hard == resource.RLIM_INFINITY else min(size, hard), hard))


@dataclass(frozen=True)
class UvInputs:
    """Everything a `uv pip compile` of one platform reads (file contents and arguments)."""

    platform: str
    requirements: str  # requirements.in
    constraints: str  # constraints.txt: the conda side's Python packages, pinned
    preferences: str  # an existing pylock.toml whose pins uv keeps where it can, or ""
    python_version: str
    uv_platform: str
    uv_env: tuple[tuple[str, str], ...]
    indexes: tuple[str, ...] = ()  # --index-url / --extra-index-url and their URLs (pypi.pip_index_args)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "UvInputs":
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != fields:
            raise ValueError("not a UvInputs record")
        return cls(**{**data, "uv_env": tuple(tuple(pair) for pair in data["uv_env"]),
                      "indexes": tuple(data["indexes"])})


@dataclass(frozen=True)
class UvResult:
    returncode: int
    stderr: str
    pylock: str  # the pylock.toml uv wrote ("" when it failed)
    timed_out: float = 0  # the limit in seconds uv ran past (it was killed), else 0
    limits: UvLimits = UvLimits()
    oversized: int = 0  # MAX_PYLOCK_BYTES, where uv wrote a pylock.toml larger than that (then pylock is "")


# what hb reads of the pylock.toml uv writes (a resolution of hundreds of packages is about 1 MB): uv
# writes what the indexes answer, within RLIMIT_FSIZE (4 GiB), and all of it was read and parsed here
MAX_PYLOCK_BYTES = 64 << 20


def uv_binary() -> str:
    import uv

    return uv.find_uv_bin()


class UvRun:
    """A started `uv pip compile` process in its own scratch directory."""

    def __init__(self, inputs: UvInputs, cache_dir: pathlib.Path, limits: UvLimits = UvLimits()):
        import time

        self.inputs = inputs
        self.limits = limits
        self._deadline = time.monotonic() + limits.timeout_s
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="hb-uv-"))
        (self._tmp / "requirements.in").write_text(inputs.requirements)
        (self._tmp / "constraints.txt").write_text(inputs.constraints)
        if inputs.preferences:
            (self._tmp / "pylock.toml").write_text(inputs.preferences)
        env = {k: os.environ[k] for k in _ENV_KEPT if k in os.environ}
        env.update(dict(inputs.uv_env))
        argv = [uv_binary(), "pip", "compile", "requirements.in", "--constraints", "constraints.txt",
                "--format", "pylock.toml", "-o", "pylock.toml", "--only-binary", ":all:", "--no-config",
                "--python-version", inputs.python_version, "--python-platform", inputs.uv_platform,
                "--cache-dir", str(cache_dir), "--quiet", "--no-header", *inputs.indexes]
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(argv, cwd=self._tmp, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=self._stderr, preexec_fn=limits.apply)

    def result(self) -> UvResult:
        import time

        try:
            timed_out = 0
            try:
                returncode = self._proc.wait(timeout=max(0.0, self._deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._proc.kill()
                returncode, timed_out = self._proc.wait(), self.limits.timeout_s
            self._stderr.seek(0)
            stderr = self._stderr.read(_MAX_STDERR).decode("utf-8", "replace")
            out = self._tmp / "pylock.toml"
            pylock, oversized = "", 0
            if returncode == 0 and out.is_file() and not timed_out:
                with open(out, "rb") as f:
                    data = f.read(MAX_PYLOCK_BYTES + 1)
                if len(data) > MAX_PYLOCK_BYTES:
                    oversized = MAX_PYLOCK_BYTES
                else:
                    pylock = data.decode("utf-8", "replace")
            return UvResult(returncode, stderr, pylock, timed_out, self.limits, oversized)
        finally:
            self._cleanup()

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        self._stderr.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


class Speculation:
    """The uv runs the last `hb lock` of one target made, started again at once; `take` hands one
    over only for identical inputs; `close` kills the rest; `record` keeps this lock's inputs."""

    def __init__(self, state_dir: pathlib.Path, label: str, cache_dir: pathlib.Path, limits: UvLimits = UvLimits()):
        self._path = state_dir / "uv-inputs" / f"{hashlib.sha256(label.encode()).hexdigest()[:32]}.json"
        self._runs: list[UvRun] = []
        for inputs in self._load():
            self._runs.append(UvRun(inputs, cache_dir, limits))

    def _load(self) -> list[UvInputs]:
        try:
            data = json.loads(self._path.read_text())
            if data.get("schema") != _SCHEMA:
                return []
            return [UvInputs.from_json(d) for d in data["runs"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []  # no record, or one hb cannot read: nothing is started early

    def take(self, inputs: UvInputs) -> UvRun | None:
        for run in self._runs:
            if run.inputs == inputs:
                self._runs.remove(run)
                return run
        return None

    def close(self) -> None:
        for run in self._runs:
            run.cancel()
        self._runs = []

    def record(self, inputs: list[UvInputs]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"schema": _SCHEMA, "runs": [i.to_json() for i in inputs]}, f, sort_keys=True)
        os.replace(tmp, self._path)
