"""What every remote store shares: its errors, the signing of action-cache entries, and a guard that
turns a failing remote into a warning (or, with --remote-required, an error)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field

from ..digest import Digest
from ..errors import RemoteError
from .base import ActionResult, Store


class RemoteUnavailable(Exception):
    """The remote did not answer usefully (connection refused, timeout, 5xx)."""


class RemoteAuthError(Exception):
    """The remote refused our credentials (401/403)."""


@dataclass
class RemoteStats:
    ac_hits: int = 0
    ac_misses: int = 0
    blobs_down: int = 0
    bytes_down: int = 0
    blobs_up: int = 0
    bytes_up: int = 0
    rejected_entries: int = 0  # unsigned or badly signed action-cache entries ignored
    rejected_blobs: int = 0  # blobs whose content did not match their digest
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class Signer:
    """HMAC-SHA256 over the action key and the result, with a team key.

    Binding the key means a signed result cannot be replayed under another action's key."""

    def __init__(self, key: bytes | None):
        self.key = key

    def seal(self, action_key: str, result: ActionResult) -> bytes:
        body = result.encode()
        envelope = {"key": action_key, "result": json.loads(body)}
        if self.key:
            envelope["hmac"] = self._mac(action_key, body)
        return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()

    def open(self, action_key: str, data: bytes) -> tuple[ActionResult | None, str | None]:
        """(result, None), or (None, why it was rejected)."""
        try:
            envelope = json.loads(data)
            body = json.dumps(envelope["result"], sort_keys=True, separators=(",", ":")).encode()
            result = ActionResult.decode(body)
        except (ValueError, KeyError, TypeError):
            return None, "unreadable entry"
        if envelope.get("key") != action_key:
            return None, "entry recorded for another action key"
        if self.key:
            mac = envelope.get("hmac")
            if not mac:
                return None, "unsigned entry"
            if not hmac.compare_digest(mac, self._mac(action_key, body)):
                return None, "bad signature"
        return result, None

    def _mac(self, action_key: str, body: bytes) -> str:
        return hmac.new(self.key, action_key.encode() + b"\n" + body, hashlib.sha256).hexdigest()


class GuardedRemote(Store):
    """Wraps a remote store: the first failure disables it for this build with one warning line,
    unless the remote is required (then it is an error naming the remote)."""

    def __init__(self, remote: Store, *, required: bool, warn, url: str):
        self.remote = remote
        self.required = required
        self.warn = warn
        self.url = url
        self.disabled = False
        self._lock = threading.Lock()

    def _call(self, default, fn, *args, **kwargs):
        if self.disabled:
            return default
        try:
            return fn(*args, **kwargs)
        except RemoteAuthError as exc:
            return self._fail(default, f"{self.url} refused the credentials: {exc}",
                              "set HB_REMOTE_USER/HB_REMOTE_PASSWORD (or a registry login in ~/.docker/config.json)")
        except RemoteUnavailable as exc:
            return self._fail(default, f"{self.url} is unavailable: {exc}", None)
        except Exception as exc:  # noqa: BLE001 - a remote never fails a build unless it is required
            return self._fail(default, f"{self.url} failed: {type(exc).__name__}: {exc}", None)

    def _fail(self, default, message: str, hint: str | None):
        if self.required:
            raise RemoteError(message, hint=hint or "drop --remote-required to build locally when it fails")
        with self._lock:
            if not self.disabled:
                self.disabled = True
                self.warn(f"remote cache: {message}; building locally")
        return default

    def probe(self, upload: bool) -> None:
        """Check at the start that the remote answers (and accepts writes, when uploading), so a
        required remote fails before any work rather than halfway."""
        from ..digest import digest_bytes

        self._call(False, self.remote.has_blob, digest_bytes(b""))
        if upload:
            self._call(None, self.remote.put_blob, b"")

    def has_blob(self, digest: Digest) -> bool:
        return self._call(False, self.remote.has_blob, digest)

    def get_blob(self, digest: Digest):
        return self._call(None, self.remote.get_blob, digest)

    def put_blob(self, data: bytes, *, fsync: bool = True):
        return self._call(None, self.remote.put_blob, data)

    def put_file(self, path, *, move: bool = False, fsync: bool = True):
        return self._call(None, self.remote.put_file, path)

    def fetch_file(self, digest: Digest, dest) -> bool:
        return self._call(False, self.remote.fetch_file, digest, dest)

    def get_action_result(self, key: str):
        return self._call(None, self.remote.get_action_result, key)

    def put_action_result(self, key: str, result: ActionResult) -> None:
        self._call(None, self.remote.put_action_result, key, result)

    @property
    def stats(self):
        return self.remote.stats
