"""A Remote Execution API v2 cache as a remote store (grpc://host:port[/instance], grpcs://...).

Only the standard REAPI services are used (Capabilities, ContentAddressableStorage, ActionCache,
google.bytestream.ByteStream), through the message classes BuildGrid ships and grpcio channels, so
any REAPI cache works (BuildGrid, bazel-remote, Buildbarn, ...). Both are imported lazily: hb works
without the `reapi` extra until a grpc:// URL is used.

Digest mapping. REAPI servers address blobs by SHA-256; hb keys everything by BLAKE3:
* a blob is stored under its SHA-256 digest (hb computes both hashes of every blob it uploads);
* an hb action key K (64 hex) is looked up in the ActionCache under the Action digest
  sha256(K as ASCII bytes)/64;
* the REAPI ActionResult stored there has one output file `hb/action-result.json`, whose digest is
  the SHA-256 of hb's signed action-result envelope (remote.Signer: the HMAC with
  HB_REMOTE_HMAC_KEY covers the key and the result), stored as a CAS blob; and one output file
  `hb/blake3/<BLAKE3 hex>` per blob the result refers to (outputs, every directory and file blob of
  a tree output, stdout, stderr) whose digest is that blob's SHA-256 digest. That is the
  BLAKE3 -> SHA-256 mapping a reader learns with the result; servers that check an entry's
  referenced blobs (BuildGrid, bazel-remote) keep or drop the entry with its blobs.
Every blob read back is checked against both its SHA-256 and its BLAKE3 digest; a blob that does
not match is rejected (counted in the stats) and reported as missing."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from blake3 import blake3

from ..digest import CHUNK, Digest, digest_bytes
from .base import MAX_ENTRY_BYTES, ActionResult, NewFile, Store
from .remote import RemoteAuthError, RemoteStats, RemoteUnavailable, Signer

RESULT_PATH = "hb/action-result.json"
MAP_PREFIX = "hb/blake3/"
RETRIES = 3
BACKOFF_SECONDS = 0.2
GRPC_MESSAGE_LIMIT = 4 << 20  # grpcio's default maximum message size, both ways
BATCH_OVERHEAD = 64 << 10  # room for the request's other fields within a batch
STREAM_CHUNK = 1 << 20  # ByteStream chunk size
ITEM_OVERHEAD = 192  # bytes a blob adds to a batch message besides its data (digest, status, framing)
FIND_MISSING_BATCH = 10_000
BLIND_UPLOAD_BYTES = 1 << 20  # upload_sha sends this much without a FindMissingBlobs round trip first
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_RESERVED_SEGMENTS = {"blobs", "uploads", "actions", "actionResults", "operations", "capabilities",
                      "compressed-blobs"}


class ReapiUnsupported(RemoteUnavailable):
    """The server does not offer what hb needs (SHA-256 digests, an action cache)."""


def parse_url(url: str, instance_name: str | None = None) -> tuple[str, bool, str]:
    """(target host:port, secure, instance name) of grpc://host[:port][/instance] or grpcs://...
    The instance in the URL wins over the remote_instance_name setting."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("grpc", "grpcs") or not parsed.hostname:
        raise ValueError(f"not a grpc(s)://host:port URL: {url}")
    secure = parsed.scheme == "grpcs"
    port = parsed.port or (443 if secure else 80)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    instance = parsed.path.strip("/") or (instance_name or "").strip("/")
    if instance:
        parts = instance.split("/")
        if any(p in ("", ".", "..") or p in _RESERVED_SEGMENTS for p in parts):
            raise ValueError(f"instance name {instance!r} has an empty or reserved path segment")
    return f"{host}:{port}", secure, instance


def _protos():
    try:
        import grpc
        from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
        from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
        from buildgrid._protos.google.bytestream import bytestream_pb2 as bs_pb2
        from buildgrid._protos.google.bytestream import bytestream_pb2_grpc as bs_grpc
    except ImportError as exc:
        raise ImportError(f"a grpc:// remote cache needs the reapi extra "
                          f"(pip install 'hermetic-build[reapi]'): {exc}") from None
    return grpc, re_pb2, re_grpc, bs_pb2, bs_grpc


class _Verifier:
    """SHA-256 (and, for hb's own digests, BLAKE3) of bytes as they arrive, bounded by the size expected."""

    def __init__(self, size: int, blake3_hex: str | None = None):
        self.expected, self.blake3_hex = size, blake3_hex
        self.b3 = blake3() if blake3_hex is not None else None
        self.s2, self.size = hashlib.sha256(), 0

    def update(self, data: bytes) -> bool:
        self.size += len(data)
        if self.size > self.expected:
            return False
        if self.b3 is not None:
            self.b3.update(data)
        self.s2.update(data)
        return True

    def matches(self, digest: Digest, sha: str) -> bool:
        return digest.size == self.expected and digest.hash == self.blake3_hex and self.complete(sha)

    def complete(self, sha: str) -> bool:
        return (self.size == self.expected and self.s2.hexdigest() == sha
                and (self.b3 is None or self.b3.hexdigest() == self.blake3_hex))


class ReapiStore(Store):
    def __init__(self, url: str, *, signer: Signer, timeout: float = 10.0, cafile: str | None = None,
                 instance_name: str | None = None, local=None):
        self.target, secure, self.instance = parse_url(url, instance_name)
        self.url = url
        grpc, self._pb, re_grpc, self._bs_pb, bs_grpc = _protos()
        self._grpc = grpc
        options = [("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT + BATCH_OVERHEAD),
                   ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT + BATCH_OVERHEAD)]
        if secure:
            root = Path(cafile).read_bytes() if cafile else None
            self._channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(root), options)
        else:
            self._channel = grpc.insecure_channel(self.target, options)
        self._caps_stub = re_grpc.CapabilitiesStub(self._channel)
        self._cas = re_grpc.ContentAddressableStorageStub(self._channel)
        self._ac = re_grpc.ActionCacheStub(self._channel)
        self._bytestream = bs_grpc.ByteStreamStub(self._channel)
        self._timeout = timeout
        self.signer = signer
        self.local = local  # to read the directory blobs of trees being recorded
        self.stats = RemoteStats()
        self._sha256: dict[str, str] = {digest_bytes(b"").hash: EMPTY_SHA256}  # blake3 hex -> sha256 hex
        self._uploaded: set[str] = set()  # sha256 of blobs known to be on the server
        self._lock = threading.Lock()
        self._checked = False
        self.batch_limit = GRPC_MESSAGE_LIMIT - BATCH_OVERHEAD
        self.update_enabled = True

    def close(self) -> None:
        self._channel.close()

    @property
    def channel(self):
        """The gRPC channel, for the other REAPI services on the same endpoint (Execution, Bots)."""
        return self._channel

    @property
    def endpoint(self) -> str:
        """host:port/instance: what names this server's CAS (two stores with the same one share blobs)."""
        return f"{self.target}/{self.instance}"

    def learn_sha256(self, digest: Digest, sha: str, *, present: bool = False) -> None:
        """Remember that hb's blob `digest` is the server's blob `sha` (learnt elsewhere: an output
        left on the engine); present: it is known to be on the server (no upload needed)."""
        with self._lock:
            self._sha256[digest.hash] = sha
            if present:
                self._uploaded.add(sha)

    @property
    def protos(self):
        """The REAPI v2 message module (BuildGrid's generated classes)."""
        return self._pb

    # ----- transport -------------------------------------------------------------------------------
    def _rpc(self, method, request, *, timeout: float | None = None, what: str = ""):
        """Call a unary (or unary-stream/stream-unary) method; NOT_FOUND returns None. UNAVAILABLE
        and the like are retried with backoff; a deadline exceeded is not (the remote is then
        disabled for the build)."""
        grpc = self._grpc
        last = None
        for attempt in range(RETRIES):
            try:
                return method(request() if callable(request) else request, timeout=timeout or self._timeout)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                if code == grpc.StatusCode.NOT_FOUND:
                    return None
                message = f"{code.name if code else 'error'} for {what}: {detail}"
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise RemoteAuthError(message) from None
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) \
                        and attempt + 1 < RETRIES:
                    last = message
                    time.sleep(BACKOFF_SECONDS * (2 ** attempt))
                    continue
                raise RemoteUnavailable(message) from None
        raise RemoteUnavailable(last or f"no answer for {what}")

    def _check_capabilities(self) -> None:
        """Once per store: the server must offer SHA-256 digests; its batch limit is respected."""
        if self._checked:
            return
        with self._lock:
            if self._checked:
                return
            pb = self._pb
            caps = self._rpc(self._caps_stub.GetCapabilities,
                             pb.GetCapabilitiesRequest(instance_name=self.instance), what="GetCapabilities")
            if caps is None or not caps.HasField("cache_capabilities"):
                raise ReapiUnsupported(f"{self.target} offers no REAPI cache (no cache capabilities)")
            cache = caps.cache_capabilities
            if pb.DigestFunction.SHA256 not in cache.digest_functions:
                names = ", ".join(pb.DigestFunction.Value.Name(f) for f in cache.digest_functions) or "none"
                raise ReapiUnsupported(f"{self.target} does not offer SHA256 digests (it offers {names})")
            if caps.HasField("low_api_version") and caps.low_api_version.major > 2:
                raise ReapiUnsupported(f"{self.target} needs REAPI {caps.low_api_version.major}, hb speaks 2")
            server_max = cache.max_batch_total_size_bytes
            limit = GRPC_MESSAGE_LIMIT if server_max <= 0 else min(server_max, GRPC_MESSAGE_LIMIT)
            self.batch_limit = max(limit - min(BATCH_OVERHEAD, limit // 16), 0)
            self.update_enabled = not cache.HasField("action_cache_update_capabilities") \
                or cache.action_cache_update_capabilities.update_enabled
            self._checked = True

    def _digest(self, sha: str, size: int):
        return self._pb.Digest(hash=sha, size_bytes=size)

    def _resource(self, sha: str, size: int, upload: bool) -> str:
        prefix = f"{self.instance}/" if self.instance else ""
        if upload:
            return f"{prefix}uploads/{uuid.uuid4()}/blobs/{sha}/{size}"
        return f"{prefix}blobs/{sha}/{size}"

    # ----- CAS -------------------------------------------------------------------------------------
    def _missing(self, pairs: list[tuple[str, int]]) -> set[str]:
        """The sha256 hashes of `pairs` (sha256, size) that the server does not have."""
        self._check_capabilities()
        missing: set[str] = set()
        for start in range(0, len(pairs), FIND_MISSING_BATCH):
            chunk = pairs[start:start + FIND_MISSING_BATCH]
            request = self._pb.FindMissingBlobsRequest(
                instance_name=self.instance, blob_digests=[self._digest(s, n) for s, n in chunk])
            response = self._rpc(self._cas.FindMissingBlobs, request, what="FindMissingBlobs")
            if response is None:
                missing.update(s for s, _ in chunk)
            else:
                missing.update(d.hash for d in response.missing_blob_digests)
        return missing

    def has_blob(self, digest: Digest) -> bool:
        self._check_capabilities()
        sha = self._sha256.get(digest.hash)
        if sha is None:
            return False
        return not self._missing([(sha, digest.size)])

    def find_missing(self, digests) -> list[Digest]:
        digests = list(digests)
        known = [(d, self._sha256.get(d.hash)) for d in digests]
        missing = self._missing([(sha, d.size) for d, sha in known if sha is not None]) if known else set()
        return [d for d, sha in known if sha is None or sha in missing]

    def _read_small(self, sha: str, size: int) -> bytes | None:
        request = self._pb.BatchReadBlobsRequest(instance_name=self.instance, digests=[self._digest(sha, size)])
        response = self._rpc(self._cas.BatchReadBlobs, request, what="BatchReadBlobs")
        if response is None:
            return None
        for item in response.responses:
            if item.digest.hash != sha:
                continue
            if item.status.code == 0:
                return item.data
            if item.status.code == self._grpc.StatusCode.NOT_FOUND.value[0]:
                return None
            if item.status.code in (self._grpc.StatusCode.PERMISSION_DENIED.value[0],
                                    self._grpc.StatusCode.UNAUTHENTICATED.value[0]):
                raise RemoteAuthError(f"BatchReadBlobs: {item.status.message}")
            raise RemoteUnavailable(f"BatchReadBlobs: status {item.status.code}: {item.status.message}")
        return None

    def _read_bytes(self, sha: str, size: int) -> bytes | None:
        """A blob of known-bounded size, by batch or stream; not verified here."""
        if size <= self.batch_limit:
            return self._read_small(sha, size)
        parts, total = [], [0]

        def sink(chunk):
            parts.append(chunk)
            total[0] += len(chunk)
            return total[0] <= size

        found = self._stream_read(sha, size, sink)
        return None if found is None else b"".join(parts)

    def _put_bytes(self, sha: str, data: bytes) -> None:
        if len(data) <= self.batch_limit:
            self._batch_update([(sha, data)])
        else:
            self._stream_write(sha, len(data), data)

    def _stream_read(self, sha: str, size: int, sink) -> bool | None:
        """ByteStream Read of a blob into sink(chunk) -> bool (False: too much, stop).
        None if the server does not have it."""
        request = self._bs_pb.ReadRequest(resource_name=self._resource(sha, size, upload=False))
        deadline = self._timeout + size / (8 << 20)  # the timeout, plus 1 s per 8 MiB
        grpc = self._grpc
        try:
            for response in self._bytestream.Read(request, timeout=deadline):
                if not sink(response.data):
                    return False
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise RemoteAuthError(f"{code.name} for ByteStream.Read: {exc.details()}") from None
            raise RemoteUnavailable(f"{code.name} for ByteStream.Read: {exc.details()}") from None
        return True

    def get_blob(self, digest: Digest) -> bytes | None:
        self._check_capabilities()
        sha = self._sha256.get(digest.hash)
        if sha is None:
            return None
        verifier = _Verifier(digest.size, digest.hash)
        if digest.size <= self.batch_limit:
            data = self._read_small(sha, digest.size)
            if data is None:
                return None
            verifier.update(data)
        else:
            parts = []

            def sink(chunk):
                parts.append(chunk)
                return verifier.update(chunk)

            found = self._stream_read(sha, digest.size, sink)
            if found is None:
                return None
            data = b"".join(parts)
        if not verifier.matches(digest, sha):
            self.stats.add(rejected_blobs=1)
            return None
        self.stats.add(blobs_down=1, bytes_down=len(data))
        return data

    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        self._check_capabilities()
        sha = self._sha256.get(digest.hash)
        if sha is None:
            return False
        return self._download(sha, _Verifier(digest.size, digest.hash), dest, dir_fd=dir_fd, mode=mode)

    def _download(self, sha: str, verifier: _Verifier, dest, *, dir_fd: int | None, mode: int | None) -> bool:
        """Write the blob sha256 to a new file dest, renamed into place only once `verifier` accepts
        every byte (size, SHA-256 and, where hb knows it, BLAKE3)."""
        size = verifier.expected
        out = NewFile(dest, dir_fd=dir_fd, mode=mode)
        try:
            def sink(chunk):
                if not verifier.update(chunk):
                    return False
                out.write(chunk)
                return True

            if size == 0:
                found = sha == EMPTY_SHA256 or None
            elif size <= self.batch_limit:
                data = self._read_small(sha, size)
                found = data is not None and sink(data)
            else:
                found = self._stream_read(sha, size, sink)
            if not found or not verifier.complete(sha):
                out.discard()
                if found:
                    self.stats.add(rejected_blobs=1)
                return False
            out.commit()
        except BaseException:
            out.discard()
            raise
        self.stats.add(blobs_down=1, bytes_down=size)
        return True

    def prefetch(self, digests, sink) -> None:
        """Read many small blobs in few BatchReadBlobs calls (a tree about to be written out):
        sink(digest, data) for each one found and verified. Blobs without a known SHA-256, or too
        large for a batch, are left to fetch_file."""
        self._check_capabilities()
        wanted: dict[str, Digest] = {}
        for d in digests:
            sha = self._sha256.get(d.hash)
            if sha is not None and 0 < d.size <= self.batch_limit:
                wanted.setdefault(sha, d)
        batch, total = [], 0
        for sha, d in sorted(wanted.items(), key=lambda item: item[1].size):
            if batch and (total + d.size > self.batch_limit or len(batch) >= 5000):
                self._read_batch(batch, sink)
                batch, total = [], 0
            batch.append((sha, d))
            total += d.size
        if batch:
            self._read_batch(batch, sink)

    def _read_batch(self, batch: list[tuple[str, Digest]], sink) -> None:
        request = self._pb.BatchReadBlobsRequest(
            instance_name=self.instance, digests=[self._digest(sha, d.size) for sha, d in batch])
        response = self._rpc(self._cas.BatchReadBlobs, request, what="BatchReadBlobs")
        if response is None:
            return
        by_sha = dict(batch)
        for item in response.responses:
            d = by_sha.pop(item.digest.hash, None)
            if d is None or item.status.code != 0:
                continue
            verifier = _Verifier(d.size, d.hash)
            if not (verifier.update(item.data) and verifier.matches(d, item.digest.hash)):
                self.stats.add(rejected_blobs=1)
                continue
            self.stats.add(blobs_down=1, bytes_down=d.size)
            sink(d, item.data)

    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest:
        digest = digest_bytes(data)
        self._upload(digest, hashlib.sha256(data).hexdigest(), data)
        return digest

    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest:
        b3, s2, size = blake3(), hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                b3.update(chunk)
                s2.update(chunk)
                size += len(chunk)
        digest = Digest(b3.hexdigest(), size)
        self._upload(digest, s2.hexdigest(), Path(path))
        return digest

    def _upload(self, digest: Digest, sha: str, source) -> None:
        """source: the bytes, or a file to stream. Small blobs go in one BatchUpdateBlobs (no
        FindMissingBlobs first: that would be a second round trip for as many bytes); large ones
        are streamed with ByteStream Write unless FindMissingBlobs says the server has them."""
        self._check_capabilities()
        with self._lock:
            self._sha256[digest.hash] = sha
            if sha in self._uploaded:
                return
        size = digest.size
        if size <= self.batch_limit:
            data = source if isinstance(source, (bytes, bytearray)) else source.read_bytes()
            self._batch_update([(sha, data)])
        elif self._missing([(sha, size)]):
            self._stream_write(sha, size, source)
        else:
            size = 0
        with self._lock:
            self._uploaded.add(sha)
        if size:
            self.stats.add(blobs_up=1, bytes_up=size)

    def _batch_update(self, blobs: list[tuple[str, bytes]]) -> None:
        pb = self._pb
        request = pb.BatchUpdateBlobsRequest(
            instance_name=self.instance,
            requests=[pb.BatchUpdateBlobsRequest.Request(digest=self._digest(sha, len(data)), data=data)
                      for sha, data in blobs])
        response = self._rpc(self._cas.BatchUpdateBlobs, request, what="BatchUpdateBlobs")
        if response is None:
            raise RemoteUnavailable("BatchUpdateBlobs: NOT_FOUND")
        for item in response.responses:
            if item.status.code != 0:
                if item.status.code in (self._grpc.StatusCode.PERMISSION_DENIED.value[0],
                                        self._grpc.StatusCode.UNAUTHENTICATED.value[0]):
                    raise RemoteAuthError(f"BatchUpdateBlobs: {item.status.message}")
                raise RemoteUnavailable(f"BatchUpdateBlobs: status {item.status.code}: {item.status.message}")

    def _stream_write(self, sha: str, size: int, source) -> None:
        resource = self._resource(sha, size, upload=True)
        bs = self._bs_pb

        def requests():
            offset = 0
            if isinstance(source, (bytes, bytearray)):
                view = memoryview(source)
                chunks = (bytes(view[i:i + STREAM_CHUNK]) for i in range(0, len(view), STREAM_CHUNK))
            else:
                def from_file():
                    with open(source, "rb") as f:
                        while chunk := f.read(STREAM_CHUNK):
                            yield chunk
                chunks = from_file()
            first = True
            for chunk in chunks:
                last = offset + len(chunk) >= size
                yield bs.WriteRequest(resource_name=resource if first else "", write_offset=offset,
                                      data=chunk, finish_write=last)
                first = False
                offset += len(chunk)
            if offset != size:
                raise RemoteUnavailable(f"{source} changed while it was uploaded")

        deadline = self._timeout + size / (8 << 20)
        response = self._rpc(self._bytestream.Write, requests, timeout=deadline, what="ByteStream.Write")
        if response is None or response.committed_size not in (size, -1):
            raise RemoteUnavailable(f"ByteStream.Write committed {getattr(response, 'committed_size', 0)} "
                                    f"of {size} bytes")

    # ----- action cache ----------------------------------------------------------------------------
    def _action_digest(self, key: str):
        data = key.encode()
        return self._digest(hashlib.sha256(data).hexdigest(), len(data))

    def get_action_result(self, key: str) -> ActionResult | None:
        self._check_capabilities()
        request = self._pb.GetActionResultRequest(instance_name=self.instance,
                                                  action_digest=self._action_digest(key))
        found = self._rpc(self._ac.GetActionResult, request, what="GetActionResult")
        if found is None:
            self.stats.add(ac_misses=1)
            return None
        envelope, mapping = None, {}
        for f in found.output_files:
            sha, size = f.digest.hash, f.digest.size_bytes
            if not _HEX64.match(sha) or size < 0:
                return self._reject(key, "malformed entry: an output digest is not sha256")
            if f.path == RESULT_PATH:
                envelope = (sha, size)
            elif f.path.startswith(MAP_PREFIX) and _HEX64.match(f.path[len(MAP_PREFIX):]):
                mapping[f.path[len(MAP_PREFIX):]] = sha
        if envelope is None:
            return self._reject(key, f"malformed entry: no {RESULT_PATH}")
        sha, size = envelope
        if size > MAX_ENTRY_BYTES:
            return self._reject(key, "malformed entry: result larger than an entry may be")
        sealed = self._read_bytes(sha, size)
        if sealed is None or len(sealed) != size or hashlib.sha256(sealed).hexdigest() != sha:
            return self._reject(key, "result blob missing or corrupt")
        result, why = self.signer.open(key, sealed)
        if result is None:
            return self._reject(key, why)
        with self._lock:
            self._sha256.update(mapping)
        self.stats.add(ac_hits=1)
        return result

    def _reject(self, key: str, why: str) -> None:
        self.stats.reject_entry(key, why)

    def put_action_result(self, key: str, result: ActionResult) -> None:
        self._check_capabilities()
        if not self.update_enabled:
            raise RemoteUnavailable(f"{self.target} does not accept action-cache updates")
        blobs: dict[str, Digest] = {}
        for out in result.outputs:
            blobs[out.digest.hash] = out.digest
            if out.kind == "dir":
                self._collect_tree(out.digest, blobs)
        for d in (result.stdout, result.stderr):
            if d is not None:
                blobs[d.hash] = d
        pb = self._pb
        files = []
        for b3, digest in sorted(blobs.items()):
            sha = self._sha256.get(b3)
            if sha is None or sha not in self._uploaded:  # not uploaded by this process: do it now
                if self.local is None:
                    raise RemoteUnavailable(f"blob {b3[:12]} of the result was not uploaded")
                if self.put_file(self.local.blob_path(digest)) != digest:  # no longer the blob: a result
                    from ..tree import MissingBlob  # without it; its producer runs again

                    self.local.remove_corrupt_blob(digest)
                    raise MissingBlob(digest)
                sha = self._sha256[b3]
            files.append(pb.OutputFile(path=MAP_PREFIX + b3, digest=self._digest(sha, digest.size)))
        sealed = self.signer.seal(key, result)
        sealed_sha = hashlib.sha256(sealed).hexdigest()
        self._put_bytes(sealed_sha, sealed)
        files.insert(0, pb.OutputFile(path=RESULT_PATH, digest=self._digest(sealed_sha, len(sealed))))
        entry = pb.ActionResult(output_files=files, exit_code=result.exit_code)
        request = pb.UpdateActionResultRequest(instance_name=self.instance, action_digest=self._action_digest(key),
                                               action_result=entry)
        if self._rpc(self._ac.UpdateActionResult, request, what="UpdateActionResult") is None:
            raise RemoteUnavailable("UpdateActionResult: NOT_FOUND")
        self.stats.add(blobs_up=1, bytes_up=len(sealed))

    def _collect_tree(self, digest: Digest, blobs: dict) -> None:
        if self.local is None:
            return
        from ..tree import MissingBlob, walk_tree

        try:
            for _path, entry in walk_tree(self.local, digest):
                if entry.digest is not None:
                    blobs[entry.digest.hash] = entry.digest
        except MissingBlob:  # recorded without its tree: the mapping lists what was found
            pass

    # ----- by SHA-256 (remote execution: Actions, Commands, Directories, input and output files) ----
    def upload_sha(self, blobs: dict[str, tuple[int, object]]) -> int:
        """blobs: sha256 -> (size, the bytes or a file to stream). Uploads those the server lacks
        (one FindMissingBlobs per 10,000; small ones together in BatchUpdateBlobs up to the batch
        limit, large ones through ByteStream); up to BLIND_UPLOAD_BYTES in all are sent without
        asking. Returns the number of bytes sent."""
        self._check_capabilities()
        with self._lock:
            todo = {sha: item for sha, item in blobs.items() if sha not in self._uploaded}
        if sum(size for size, _src in todo.values()) <= min(BLIND_UPLOAD_BYTES, self.batch_limit // 2) and all(
                isinstance(src, (bytes, bytearray, str, Path)) for _size, src in todo.values()):
            # all of it in one BatchUpdateBlobs: cheaper than asking first (a source that is not plain
            # bytes or a path, e.g. an output left on the engine and read only when needed, is asked for)
            missing = set(todo)
        else:
            missing = self._missing([(sha, size) for sha, (size, _src) in todo.items()]) if todo else set()
        sent, batch, total = 0, [], 0
        for sha in sorted(missing, key=lambda s: todo[s][0]):
            size, source = todo[sha]
            if size > self.batch_limit:
                self._stream_write(sha, size, source)
            else:
                if batch and total + size + ITEM_OVERHEAD > self.batch_limit:
                    self._batch_update(batch)
                    batch, total = [], 0
                data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
                batch.append((sha, bytes(data)))
                total += size + ITEM_OVERHEAD
            sent += size
        if batch:
            self._batch_update(batch)
        with self._lock:
            self._uploaded.update(todo)
        self.stats.add(blobs_up=len(missing), bytes_up=sent)
        return sent

    def read_sha(self, sha: str, size: int, limit: int = 1 << 30) -> bytes | None:
        """The blob sha256/size, checked against both; None if absent or not what it should be."""
        self._check_capabilities()
        if not _HEX64.match(sha) or not 0 <= size <= limit:
            return None
        if size == 0:
            return b"" if sha == EMPTY_SHA256 else None
        data = self._read_bytes(sha, size)
        if data is None:
            return None
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            self.stats.add(rejected_blobs=1)
            return None
        self.stats.add(blobs_down=1, bytes_down=size)
        return data

    def read_sha_many(self, pairs, sink) -> None:
        """sink(sha, data) for each (sha256, size) of pairs found and verified; small blobs come
        in BatchReadBlobs batches, large ones are left to fetch_sha (not passed to sink)."""
        self._check_capabilities()
        wanted = {sha: size for sha, size in pairs if 0 < size <= self.batch_limit and _HEX64.match(sha)}
        batch, total = [], 0

        def flush():
            request = self._pb.BatchReadBlobsRequest(
                instance_name=self.instance, digests=[self._digest(s, n) for s, n in batch])
            response = self._rpc(self._cas.BatchReadBlobs, request, what="BatchReadBlobs")
            for item in (response.responses if response is not None else ()):
                n = wanted.get(item.digest.hash)
                if n is None or item.status.code != 0:
                    continue
                if len(item.data) != n or hashlib.sha256(item.data).hexdigest() != item.digest.hash:
                    self.stats.add(rejected_blobs=1)
                    continue
                self.stats.add(blobs_down=1, bytes_down=n)
                sink(item.digest.hash, item.data)

        for sha, size in sorted(wanted.items(), key=lambda item: item[1]):
            if batch and (total + size + ITEM_OVERHEAD > self.batch_limit or len(batch) >= 5000):
                flush()
                batch, total = [], 0
            batch.append((sha, size))
            total += size + ITEM_OVERHEAD
        if batch:
            flush()

    def fetch_sha(self, sha: str, size: int, dest, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        """Write the blob sha256/size to a new file dest (renamed into place once verified)."""
        self._check_capabilities()
        if not _HEX64.match(sha) or size < 0:
            return False
        return self._download(sha, _Verifier(size), dest, dir_fd=dir_fd, mode=mode)
