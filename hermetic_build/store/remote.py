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
from .base import ActionResult, InvalidEntry, Store, load_json


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
    rejected_entries: int = 0  # action-cache entries ignored (unsigned, badly signed or malformed)
    unsigned_entries: int = 0  # of those: unsigned or badly signed, while HB_REMOTE_HMAC_KEY is set
    rejected_blobs: int = 0  # blobs whose content did not match their digest
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def reject_entry(self, key: str, why: str) -> None:
        """An action-cache entry was ignored: count it (a miss) and keep why, for the summary."""
        signature = why in (UNSIGNED, BAD_SIGNATURE)
        with self._lock:
            self.rejected_entries += 1
            self.unsigned_entries += signature
            self.ac_misses += 1
            if len(self.errors) < 100:
                self.errors.append(f"ignored action-cache entry {key[:12]}: {why}")

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


UNSIGNED = "unsigned entry"
BAD_SIGNATURE = "bad signature"


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
        """(result, None), or (None, why it was rejected). Never raises on malformed input."""
        try:
            envelope = load_json(data)
            if not isinstance(envelope, dict) or not envelope.keys() <= {"key", "result", "hmac"} \
                    or "result" not in envelope:
                raise InvalidEntry("not an action-cache envelope")
            result = ActionResult.from_json(envelope["result"])  # validated first: then safe to re-encode
            body = json.dumps(envelope["result"], sort_keys=True, separators=(",", ":")).encode()
        except InvalidEntry as exc:
            return None, f"malformed entry: {exc}"
        if envelope.get("key") != action_key:
            return None, "entry recorded for another action key"
        if self.key:
            mac = envelope.get("hmac")
            if not mac:
                return None, UNSIGNED
            if not isinstance(mac, str) or not hmac.compare_digest(mac.encode(), self._mac(action_key, body).encode()):
                return None, BAD_SIGNATURE
        return result, None

    def _mac(self, action_key: str, body: bytes) -> str:
        return hmac.new(self.key, action_key.encode() + b"\n" + body, hashlib.sha256).hexdigest()


class GuardedRemote(Store):
    """Wraps a remote store: the first failure disables it for this build with one warning line,
    unless the remote is required (then it is an error naming the remote).

    Remote stores do not retry a request that timed out, so an unresponsive remote (a frozen
    server) costs one timeout (per thread that was waiting on it), then none: it is disabled."""

    def __init__(self, remote: Store, *, required: bool, warn, url: str):
        self.remote = remote
        self.required = required
        self.warn = warn
        self.url = url
        self.disabled = False
        self._lock = threading.Lock()
        self._unsigned_noted = False

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

    def fetch_file(self, digest: Digest, dest, **kwargs) -> bool:
        return self._call(False, self.remote.fetch_file, digest, dest, **kwargs)

    def prefetch(self, digests, sink) -> None:
        """Batched reads, for remotes that have them (REAPI): sink(digest, data) per verified blob."""
        prefetch = getattr(self.remote, "prefetch", None)
        if prefetch is not None:
            self._call(None, prefetch, digests, sink)

    def get_action_result(self, key: str):
        if not self._unsigned_noted:
            self._note_unsigned()
        return self._call(None, self.remote.get_action_result, key)

    def _note_unsigned(self) -> None:
        signer = getattr(self.remote, "signer", None)
        with self._lock:
            if self._unsigned_noted:
                return
            self._unsigned_noted = True
        if signer is not None and not signer.key and not self.disabled:
            self.warn(f"remote action results are not signed: anyone who can write to {self.url} can change "
                      "your outputs; set HB_REMOTE_HMAC_KEY (a secret shared by the machines that write and "
                      "read this cache) so that hb accepts only results signed with it")

    def put_action_result(self, key: str, result: ActionResult) -> None:
        self._call(None, self.remote.put_action_result, key, result)

    @property
    def stats(self):
        return self.remote.stats
