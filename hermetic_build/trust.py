"""Settings of hermetic.toml that reach outside the workspace take effect only once you trust them.

A checkout's hermetic.toml comes with its BUILD files, and BUILD files are hostile (SECURITY.md). Most
settings only shape that checkout's own build, but some hand the checkout what belongs to you:

- `cache_dir`: the directory whose results (and whose saved analysis and no-op state, which hb loads
  as Python objects) hb takes as its own. A cache that came with the checkout, or that another user
  of the machine prepared, could hand you any result, or run code in hb's process;
- `remote_cache`, `remote_executor`: a host that gets your HB_REMOTE_USER/HB_REMOTE_PASSWORD and the
  outputs, and whose results land in your local cache, which every workspace shares;
- `env_allowlist`: the values of your variables (tokens, keys), passed into actions, their records
  and remote engines;
- `rule_modules` other than hb's own: Python modules imported into hb's process;
- `starlark_memory_mb`, `starlark_timeout_s` above their defaults: the budget that keeps a BUILD file
  from exhausting the machine.

Such a setting is refused until you run `hb trust` in the workspace, which shows them and records
them, for this checkout's real path and these values, in a file of yours
($XDG_CONFIG_HOME/hermetic-build/trusted-settings.json). A changed value is asked again. The same
things named on the command line or in the environment (--remote-cache, HB_CACHE_DIR) are your
choice and need no trust. The idea is Nix's for a flake's nixConfig (accept-flake-config).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import Location, UsageError

TRUST_FILE_VERSION = 1
MAX_TRUST_FILE_BYTES = 16 << 20

# setting -> what it lets the checkout do
WHY = {
    "cache_dir": "hb takes the results in this directory, and the state it keeps there, as its own",
    "remote_cache": "sends HB_REMOTE_USER/HB_REMOTE_PASSWORD and outputs to this host and takes its results "
                    "into your local cache",
    "remote_executor": "sends actions (with allow-listed variables) to this engine and takes its results "
                       "into your local cache",
    "env_allowlist": "passes the values of these variables of yours into actions, their records and remotes",
    "rule_modules": "imports these Python modules into hb's process",
    "starlark_memory_mb": "raises the memory a BUILD file may use above the default 2048",
    "starlark_timeout_s": "raises the time a BUILD file may take above the default 60 s",
}
_DEFAULTS_THAT_NEED_NO_TRUST = {"rule_modules": ["rules"], "env_allowlist": []}
_LIMITS = {"starlark_memory_mb": 2048, "starlark_timeout_s": 60}


@dataclass(frozen=True)
class PrivilegedSetting:
    """One setting of hermetic.toml that needs your trust: its name, its value as written and where."""

    key: str
    value: object  # the TOML value: a string, a list of strings or an integer
    location: Location

    def shown(self) -> str:
        return f"{self.key} = {json.dumps(self.value)}"


def privileged(key: str, value) -> bool:
    """Whether hermetic.toml's `key = value` needs your trust (see the module)."""
    if key in _LIMITS:
        return isinstance(value, int) and value > _LIMITS[key]
    if key in _DEFAULTS_THAT_NEED_NO_TRUST:
        return value != _DEFAULTS_THAT_NEED_NO_TRUST[key]
    return key in WHY


def trust_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "hermetic-build" / "trusted-settings.json"


def _read(path: Path) -> dict:
    """The trust file: {"version": 1, "workspaces": {real path: {setting: value}}}; none is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TRUST_FILE_BYTES + 1)
    except FileNotFoundError:
        return {"version": TRUST_FILE_VERSION, "workspaces": {}}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        obj = json.loads(data) if len(data) <= MAX_TRUST_FILE_BYTES else None
    except (ValueError, RecursionError):
        obj = None
    if not (isinstance(obj, dict) and obj.get("version") == TRUST_FILE_VERSION
            and isinstance(obj.get("workspaces"), dict)
            and all(isinstance(v, dict) for v in obj["workspaces"].values())):
        raise UsageError(f"{path} is not a trust file hb wrote",
                         hint="move it away; `hb trust` in each workspace you trust records it again")
    return obj


def _key(root: Path) -> str:
    return str(root.resolve())


def untrusted(root: Path, settings: tuple[PrivilegedSetting, ...]) -> list[PrivilegedSetting]:
    """The settings of `settings` that were not trusted for this workspace with these values."""
    if not settings:
        return []
    trusted = _read(trust_file())["workspaces"].get(_key(root), {})
    return [s for s in settings if s.key not in trusted or trusted[s.key] != s.value]


def require_trusted(root: Path, settings: tuple[PrivilegedSetting, ...]) -> None:
    """Raise a UsageError naming every setting of `settings` that is not trusted yet."""
    missing = untrusted(root, settings)
    if not missing:
        return
    lines = "\n".join(f"    line {s.location.line}: {s.shown()}: {WHY[s.key]}" for s in missing)
    raise UsageError(
        f"this workspace's hermetic.toml sets what a checkout may not choose for you until you trust it:\n{lines}",
        location=missing[0].location,
        hint=f"read them; if you trust them, run `hb trust` in {root} (recorded for this checkout in "
             f"{trust_file()}, asked again when they change), or choose for yourself: HB_CACHE_DIR, "
             "--remote-cache, --remote-executor")


def record(root: Path, settings: tuple[PrivilegedSetting, ...]) -> Path:
    """Trust `settings` for the workspace at `root` (replacing what was trusted for it before)."""
    return _update(root, {s.key: s.value for s in settings})


def revoke(root: Path) -> Path:
    return _update(root, None)


def _update(root: Path, values: dict | None) -> Path:
    path = trust_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.parent / ".trusted-settings.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two hb processes trusting at once must not lose an entry
        data = _read(path)
        if values:
            data["workspaces"][_key(root)] = values
        else:
            data["workspaces"].pop(_key(root), None)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".trusted-settings.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path
