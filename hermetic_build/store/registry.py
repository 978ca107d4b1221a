"""An OCI registry as a remote cache (oci://host/repository).

Blobs are registry blobs (addressed there by sha256). An action-cache entry is a small OCI manifest
tagged `ac-<action key>`: its config blob is the signed action result, and its layers list every blob
the result refers to (for a tree: every directory and file blob), each annotated with its BLAKE3
digest. So every stored blob is reachable from a manifest, and registry garbage collection keeps what
is in use. The BLAKE3 -> sha256 mapping is learned from those manifests and from uploads."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

from blake3 import blake3

from ..bounded import copy_at_most, length_fits, read_at_most, read_blob
from ..digest import CHUNK, Digest, digest_bytes
from ..registry import OCI_MANIFEST, RegistryAuthError, RegistryClient, RegistryError, RegistryRef, RegistryUnavailable
from .base import MAX_ENTRY_BYTES, ActionResult, InvalidEntry, NewFile, Store, load_json
from .remote import RemoteAuthError, RemoteStats, RemoteUnavailable, Signer

RESULT_MEDIA_TYPE = "application/vnd.hermetic-build.action-result.v1+json"
BLOB_MEDIA_TYPE = "application/vnd.hermetic-build.blob.v1"
BLAKE3_ANNOTATION = "dev.hermetic-build.blake3"
KEY_ANNOTATION = "dev.hermetic-build.action-key"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class RegistryStore(Store):
    def __init__(self, url: str, *, signer: Signer, timeout: float, cafile: str | None, local):
        self.ref = RegistryRef.parse(url)
        self.url = url
        self.client = RegistryClient(self.ref.host, secure=self.ref.secure, cafile=cafile, timeout=timeout)
        self.repo = self.ref.repository
        self.signer = signer
        self.local = local  # to read directory blobs of trees being recorded
        self.stats = RemoteStats()
        self._sha256: dict[str, str] = {}  # blake3 hex -> sha256 hex
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RegistryAuthError as exc:
            raise RemoteAuthError(str(exc)) from None
        except RegistryUnavailable as exc:
            raise RemoteUnavailable(str(exc)) from None
        except RegistryError as exc:
            if exc.status and exc.status >= 500:
                raise RemoteUnavailable(str(exc)) from None
            raise RemoteUnavailable(str(exc)) from None

    # ----- CAS -------------------------------------------------------------------------------------
    def has_blob(self, digest: Digest) -> bool:
        sha = self._sha256.get(digest.hash)
        if sha is None:
            return False
        return self._call(self.client.blob_size, self.repo, f"sha256:{sha}") == digest.size

    def get_blob(self, digest: Digest) -> bytes | None:
        sha = self._sha256.get(digest.hash)
        if sha is None:
            return None

        def read(response) -> bytes | bool:
            # at most digest.size + 1 bytes; False: a Content-Length other than the blob's size (unread)
            data = read_blob(response, digest.size)
            return False if data is None else data

        data = self._call(self.client.get_blob, self.repo, f"sha256:{sha}", read, size=digest.size)
        if data is None:
            return None
        if data is False or digest_bytes(data) != digest or hashlib.sha256(data).hexdigest() != sha:
            self.stats.add(rejected_blobs=1)
            return None
        self.stats.add(blobs_down=1, bytes_down=len(data))
        return data

    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        sha = self._sha256.get(digest.hash)
        if sha is None:
            return False
        holder = []

        def stream(response):
            if not length_fits(response, digest.size):
                return None, None
            out = NewFile(dest, dir_fd=dir_fd, mode=mode)
            holder.append(out)
            b3, s2 = blake3(), hashlib.sha256()

            def write(chunk: bytes) -> None:
                b3.update(chunk)
                s2.update(chunk)
                out.write(chunk)

            # at most digest.size + 1 bytes reach the disk: one more than the blob has is a mismatch
            size = copy_at_most(response, write, digest.size)
            return Digest(b3.hexdigest(), size), s2.hexdigest()

        try:
            got = self._call(self.client.get_blob, self.repo, f"sha256:{sha}", stream, size=digest.size)
            if got != (digest, sha):
                for out in holder:
                    out.discard()
                if got is not None:
                    self.stats.add(rejected_blobs=1)
                return False
            for out in holder[:-1]:
                out.discard()
            holder[-1].commit()
        except BaseException:
            for out in holder:
                out.discard()
            raise
        self.stats.add(blobs_down=1, bytes_down=digest.size)
        return True

    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest:
        digest = digest_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        self._upload(digest, sha, data, len(data))
        return digest

    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest:
        b3, s2, size = blake3(), hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                b3.update(chunk)
                s2.update(chunk)
                size += len(chunk)
        digest = Digest(b3.hexdigest(), size)
        self._upload(digest, s2.hexdigest(), path, size)
        return digest

    def _upload(self, digest: Digest, sha: str, source, size: int) -> None:
        with self._lock:
            self._sha256[digest.hash] = sha
            if sha in self._uploaded:
                return
        if self._call(self.client.blob_size, self.repo, f"sha256:{sha}") is None:
            self._call(self.client.upload_blob, self.repo, source, f"sha256:{sha}", size)
            self.stats.add(blobs_up=1, bytes_up=size)
        with self._lock:
            self._uploaded.add(sha)

    # ----- action cache ----------------------------------------------------------------------------
    def get_action_result(self, key: str) -> ActionResult | None:
        found = self._call(self.client.get_manifest, self.repo, f"ac-{key}")
        if found is None:
            self.stats.add(ac_misses=1)
            return None
        try:
            config_sha, mapping = _parse_manifest(found[0])
        except InvalidEntry as exc:
            return self._reject(key, f"malformed manifest: {exc}")
        sealed = self._call(self.client.get_blob, self.repo, f"sha256:{config_sha}",
                            lambda r: read_at_most(r, MAX_ENTRY_BYTES), size=MAX_ENTRY_BYTES)
        if sealed is None or hashlib.sha256(sealed).hexdigest() != config_sha:
            return self._reject(key, "config blob missing or corrupt")
        result, why = self.signer.open(key, sealed)
        if result is None:
            return self._reject(key, why)
        with self._lock:
            self._sha256.update(mapping)
        self.stats.add(ac_hits=1)
        return result

    def _reject(self, key: str, why: str):
        self.stats.reject_entry(key, why)
        return None

    def put_action_result(self, key: str, result: ActionResult) -> None:
        blobs: dict[str, Digest] = {}
        for out in result.outputs:
            blobs[out.digest.hash] = out.digest
            if out.kind == "dir":
                self._collect_tree(out.digest, blobs)
        for d in (result.stdout, result.stderr):
            if d is not None:
                blobs[d.hash] = d
        layers = []
        for b3, digest in sorted(blobs.items()):
            sha = self._sha256.get(b3)
            if sha is None or sha not in self._uploaded:  # not uploaded by this process: do it now
                path = self.local.blob_path(digest)
                sha = self.local.sha256_verified(digest)  # checked against its BLAKE3 in the same pass
                self._upload(digest, sha, path, digest.size)
            layers.append({"mediaType": BLOB_MEDIA_TYPE, "digest": f"sha256:{sha}", "size": digest.size,
                           "annotations": {BLAKE3_ANNOTATION: b3}})
        sealed = self.signer.seal(key, result)
        config_sha = hashlib.sha256(sealed).hexdigest()
        if config_sha not in self._uploaded:
            self._call(self.client.upload_blob, self.repo, sealed, f"sha256:{config_sha}", len(sealed))
            self._uploaded.add(config_sha)
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": RESULT_MEDIA_TYPE,
            "config": {"mediaType": RESULT_MEDIA_TYPE, "digest": f"sha256:{config_sha}", "size": len(sealed)},
            "layers": layers, "annotations": {KEY_ANNOTATION: key},
        }
        data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        self._call(self.client.put_manifest, self.repo, f"ac-{key}", data, OCI_MANIFEST)
        self.stats.add(blobs_up=1, bytes_up=len(data))

    def _collect_tree(self, digest: Digest, blobs: dict) -> None:
        from ..tree import MissingBlob, walk_tree

        try:
            for _path, entry in walk_tree(self.local, digest):
                if entry.digest is not None:
                    blobs[entry.digest.hash] = entry.digest
        except MissingBlob:  # recorded without its tree: the layers list what was found
            pass


def _parse_manifest(data: bytes) -> tuple[str, dict[str, str]]:
    """(sha256 of the config blob, {blake3 hex: sha256 hex} of the layers) of an action-cache
    manifest; InvalidEntry unless every digest is well-formed (they become request paths)."""
    manifest = load_json(data, limit=16 * MAX_ENTRY_BYTES)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise InvalidEntry("no config")
    config = manifest["config"].get("digest")
    if not isinstance(config, str) or not config.startswith("sha256:") or not _HEX64.match(config[7:]):
        raise InvalidEntry("config digest is not sha256:<64 hex>")
    layers = manifest.get("layers", [])
    if not isinstance(layers, list):
        raise InvalidEntry("layers is not a list")
    mapping = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise InvalidEntry("a layer is not an object")
        annotations = layer.get("annotations") or {}
        b3 = annotations.get(BLAKE3_ANNOTATION) if isinstance(annotations, dict) else None
        digest = layer.get("digest")
        if b3 is None:
            continue
        if not isinstance(b3, str) or not _HEX64.match(b3) or not isinstance(digest, str) \
                or not digest.startswith("sha256:") or not _HEX64.match(digest[7:]):
            raise InvalidEntry("a layer digest is not well-formed")
        mapping[b3] = digest[7:]
    return config[7:], mapping
