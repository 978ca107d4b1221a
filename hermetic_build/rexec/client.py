"""Running hb actions on a REAPI v2 engine (`--remote-executor grpc://host:port[/instance]`).

Each action becomes a REAPI Action and Command: the Command runs `python3 -m
hermetic_build.worker_exec .hb/action.json` in an input root holding the action's inputs at their
paths (REAPI Directory form, SHA-256 on the wire) and its canonical description; output_paths are the
declared outputs; the platform says `OSFamily=linux` and `hb-kind=<kind>`. The blobs the server
lacks are uploaded (FindMissingBlobs, then batches or ByteStream), the action runs through
Execution.Execute (a long-running operation, followed with WaitExecution when the stream breaks;
UNAVAILABLE retried with backoff), and the outputs come back into the local store: every file
checked against its SHA-256 and stored under its BLAKE3, every directory validated and converted
into an hb tree (merkle.py), so a remote result is verified like any remote blob.

Only the standard services are used (Capabilities, CAS, ByteStream, Execution), through the
message classes BuildGrid ships and grpcio: any REAPI engine works."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time

from ..action import Action
from ..digest import Digest
from ..errors import ActionFailed, RemoteError
from ..sandbox import FIXED_PATH
from ..store.base import ActionResult, InvalidEntry, OutputEntry
from ..store.factory import signer_from_env
from ..store.reapi import ReapiStore
from ..store.remote import RemoteUnavailable, Signer
from ..tree import MissingBlob
from .description import DESCRIPTION_PATH, encode
from .merkle import (BlobIngest, ClaimedIngest, InputRoot, RemoteTreeError, hb_tree_to_reapi, reapi_tree_to_hb,
                     sha256_of_blob)
from .outputs import CLAIMS_PATH, MAX_CLAIMS_BYTES, RemoteBlobIndex, decode_claims

# -P: a runner that runs the Command as written (BuildGrid's, Buildbarn's) starts it in the input root,
# which `-m` alone puts first on sys.path: a package `hermetic_build` sent with the inputs would be
# imported instead of the runner's hb, and run on the runner's machine outside every sandbox
WORKER_ARGV = ("python3", "-P", "-m", "hermetic_build.worker_exec", DESCRIPTION_PATH)
EXECUTE_RETRIES = 5
BACKOFF_SECONDS = 0.5
MAX_OUTPUT_LOG = 16 << 20


class RemoteExecutionError(RemoteError):
    """The engine could not run an action (as opposed to the action's command failing)."""


def platform_properties(action: Action) -> list[tuple[str, str]]:
    return sorted([("OSFamily", "linux"), ("hb-kind", action.kind)])


class _Blobs:
    """Blobs of the build's store, read through it (so a blob only a remote cache had is brought
    into the local store first): what hb_tree_to_reapi reads trees and files through. A blob left
    on the engine is named by its SHA-256 (remote_sha256) and its path is a _LazyPath: it is only
    downloaded if the engine turns out to lack it and it must be uploaded again."""

    def __init__(self, store, local):
        self.store, self.local = store, local

    def get_blob(self, digest: Digest):
        return self.store.get_blob(digest)

    def remote_sha256(self, digest: Digest) -> str | None:
        known = getattr(self.store, "remote_sha256", None)
        return known(digest) if known is not None else None

    def blob_path(self, digest: Digest):
        if not self.local.has_blob(digest) and self.remote_sha256(digest) is not None:
            return _LazyPath(self, digest)
        return self.local_path(digest)

    def local_path(self, digest: Digest):
        if not self.local.has_blob(digest):
            data = self.store.get_blob(digest)
            if data is None:
                raise MissingBlob(digest)
            self.local.put_blob(data)
        return self.local.blob_path(digest)


class _LazyPath(os.PathLike):
    """The local path of a blob left on the engine, downloaded when first opened."""

    def __init__(self, blobs: _Blobs, digest: Digest):
        self.blobs, self.digest = blobs, digest

    def __fspath__(self) -> str:
        return str(self.blobs.local_path(self.digest))


class RemoteExecutor:
    def __init__(self, url: str, *, local, store=None, instance_name: str | None = None, timeout: float = 10.0,
                 cafile: str | None = None, action_timeout: float = 3600.0):
        self.url = url
        self.cas = ReapiStore(url, signer=Signer(None), timeout=timeout, cafile=cafile,
                              instance_name=instance_name, local=local)
        self.pb = self.cas.protos
        from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

        self._grpc = self.cas._grpc
        self.execution = re_grpc.ExecutionStub(self.cas.channel)
        self.local = local
        self.blobs = _Blobs(store if store is not None else local, local)
        self.action_timeout = action_timeout
        self._sha_memo: dict = {}
        self._dir_memo: dict = {}
        self.ingest = BlobIngest(self.cas, local)
        self._checked = False
        self._lock = threading.Lock()
        self.workers: dict[str, int] = {}  # worker name -> actions it ran (from execution metadata)
        self.download = "all"  # or "minimal" (leave_outputs)
        self.index: RemoteBlobIndex | None = None
        # With HB_REMOTE_HMAC_KEY set, hb accepts only results it can vouch for: the engine's action
        # cache (which workers, or anyone allowed to call UpdateActionResult, write unsigned) is
        # never consulted; every Execute runs the action, and the client signs what it records.
        self.skip_cache_lookup = signer_from_env().key is not None

    def close(self) -> None:
        self.cas.close()

    def leave_outputs(self, store, index: RemoteBlobIndex) -> None:
        """--remote-download=minimal: outputs whose BLAKE3 the worker claims stay on the engine and
        are recorded in `index`; inputs are read through `store` (a LazyOutputs over that index)."""
        self.download, self.index = "minimal", index
        self.blobs = _Blobs(store, self.local)

    # ----- capabilities ----------------------------------------------------------------------------
    def check(self) -> None:
        """Once: the engine must execute with SHA-256 digests."""
        if self._checked:
            return
        with self._lock:
            if self._checked:
                return
            pb = self.pb
            caps = self.cas._rpc(self.cas._caps_stub.GetCapabilities,
                                 pb.GetCapabilitiesRequest(instance_name=self.cas.instance), what="GetCapabilities")
            if caps is None or not caps.HasField("execution_capabilities") \
                    or not caps.execution_capabilities.exec_enabled:
                raise RemoteExecutionError(f"{self.url} does not offer remote execution (no execution capabilities)",
                                           hint="check the instance name and that the engine has an execution service")
            functions = set(caps.execution_capabilities.digest_functions) \
                | {caps.execution_capabilities.digest_function}
            if pb.DigestFunction.SHA256 not in functions:
                raise RemoteExecutionError(f"{self.url} does not execute with SHA256 digests")
            self._checked = True

    # ----- one action ------------------------------------------------------------------------------
    def build_action(self, action: Action, source_paths: dict, input_entries: dict, env: dict,
                     source_date_epoch: int):
        """(Action digest, the blobs to upload) for `action`: its input root, Command and Action."""
        pb = self.pb
        root = InputRoot(pb)
        with self._lock:
            for f in action.inputs:
                if f.is_source:
                    path = source_paths[f.path]
                    data_sha, size = _sha256_file(path)
                    root.add_file(f.path, data_sha, size, stat.S_IMODE(os.stat(path).st_mode), path)
                    continue
                entry = input_entries[f.path]
                if entry.kind == "dir":
                    sha, size = hb_tree_to_reapi(pb, self.blobs, entry.digest, root.upload, self._sha_memo,
                                                 self._dir_memo)
                    root.add_tree(f.path, sha, size)
                else:
                    blob = self.blobs.blob_path(entry.digest)
                    sha = sha256_of_blob(self.blobs, entry.digest, self._sha_memo)
                    root.add_file(f.path, sha, entry.digest.size, 0o755 if entry.executable else 0o644, blob)
        root.add_bytes(DESCRIPTION_PATH, encode(action, env, source_date_epoch))
        root_digest = root.finish()
        properties = [pb.Platform.Property(name=k, value=v) for k, v in platform_properties(action)]
        command = pb.Command(arguments=list(WORKER_ARGV),
                             environment_variables=[pb.Command.EnvironmentVariable(name="PATH", value=FIXED_PATH)],
                             output_paths=sorted([CLAIMS_PATH] + [o.path for o in action.outputs]),
                             platform=pb.Platform(properties=properties))
        command_sha, command_size = root.upload.add_message(command)
        message = pb.Action(command_digest=pb.Digest(hash=command_sha, size_bytes=command_size),
                            input_root_digest=root_digest, platform=pb.Platform(properties=properties))
        message.timeout.FromSeconds(int(self.action_timeout))
        action_sha, action_size = root.upload.add_message(message)
        return pb.Digest(hash=action_sha, size_bytes=action_size), root.upload.blobs

    def execute(self, action: Action, source_paths: dict, input_entries: dict, env: dict,
                source_date_epoch: int) -> ActionResult:
        self.check()
        action_digest, blobs = self.build_action(action, source_paths, input_entries, env, source_date_epoch)
        self.cas.upload_sha(blobs)
        response = self._run(action_digest, action)
        return self._result(action, response)

    def _run(self, action_digest, action: Action):
        """Execute, following the operation until it is done; WaitExecution when the stream ends
        or breaks; UNAVAILABLE retried with backoff. Returns the ExecuteResponse."""
        grpc, pb = self._grpc, self.pb
        name, failures, last = None, 0, ""
        while failures <= EXECUTE_RETRIES:
            try:
                if name is None:
                    stream = self.execution.Execute(
                        pb.ExecuteRequest(instance_name=self.cas.instance, action_digest=action_digest,
                                          skip_cache_lookup=self.skip_cache_lookup),
                        timeout=self.action_timeout)
                else:
                    stream = self.execution.WaitExecution(pb.WaitExecutionRequest(name=name),
                                                          timeout=self.action_timeout)
                for operation in stream:
                    name = operation.name or name
                    if operation.done:
                        return self._unpack(operation, action)
                last = "the operation stream ended before the action was done"
            except grpc.RpcError as exc:
                code = exc.code()
                last = f"{code.name}: {exc.details()}"
                if code == grpc.StatusCode.NOT_FOUND and name is not None:
                    name = None  # the engine forgot the operation (restarted): execute again
                elif code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.CANCELLED):
                    raise RemoteExecutionError(f"{action.owner}: {action.mnemonic}: the engine refused it: {last}",
                                               hint=f"remote executor {self.url}") from None
            failures += 1
            time.sleep(BACKOFF_SECONDS * (2 ** min(failures, 4)))
        raise RemoteUnavailable(f"{action.owner}: {action.mnemonic}: {last}")

    def _unpack(self, operation, action: Action):
        pb = self.pb
        if operation.HasField("error"):
            raise RemoteExecutionError(f"{action.owner}: {action.mnemonic}: the engine could not run it: "
                                       f"{operation.error.message} (status {operation.error.code})")
        response = pb.ExecuteResponse()
        if not operation.response.Unpack(response):
            raise RemoteExecutionError(f"{action.owner}: {action.mnemonic}: the engine answered no ExecuteResponse")
        if response.status.code != 0:
            raise RemoteExecutionError(f"{action.owner}: {action.mnemonic}: the engine could not run it: "
                                       f"{response.status.message} (status {response.status.code})",
                                       detail=self._logs(response.result) or None)
        if response.cached_result and self.skip_cache_lookup:
            raise RemoteExecutionError(f"{action.owner}: {action.mnemonic}: the engine answered from its action "
                                       "cache although asked not to (skip_cache_lookup): an unsigned result "
                                       "is not accepted while HB_REMOTE_HMAC_KEY is set")
        return response

    def _log_blob(self, raw: bytes, digest, read: dict | None = None) -> bytes:
        if raw:
            return bytes(raw)
        if read is not None and digest.hash in read:
            return read[digest.hash]
        if digest.hash:
            return self.cas.read_sha(digest.hash, digest.size_bytes, limit=MAX_OUTPUT_LOG) or b""
        return b""

    def _read_small(self, digests) -> dict[str, bytes]:
        """The small blobs among `digests` (stdout, stderr, the claims), verified, in one BatchReadBlobs:
        sha256 -> bytes. What is not there is read one by one afterwards, as before."""
        pairs = {(d.hash, d.size_bytes) for d in digests if d is not None and d.hash and 0 < d.size_bytes}
        pairs = [(sha, size) for sha, size in pairs if size <= min(MAX_OUTPUT_LOG, MAX_CLAIMS_BYTES)]
        read: dict[str, bytes] = {}
        if pairs:
            self.cas.read_sha_many(pairs, read.__setitem__)
        return read

    def _logs(self, result) -> str:
        out = self._log_blob(result.stdout_raw, result.stdout_digest).decode(errors="replace")[-4000:]
        err = self._log_blob(result.stderr_raw, result.stderr_digest).decode(errors="replace")[-4000:]
        detail = ""
        if out.strip():
            detail += f"--- stdout ---\n{out}\n"
        if err.strip():
            detail += f"--- stderr ---\n{err}\n"
        return detail

    def _result(self, action: Action, response) -> ActionResult:
        result = response.result
        worker = result.execution_metadata.worker or "?"
        with self._lock:
            self.workers[worker] = self.workers.get(worker, 0) + 1
        where = f"on {worker} ({self.url})"
        if result.exit_code != 0:
            raise ActionFailed(f"{action.owner}: {action.mnemonic} failed remotely {where}: "
                               f"command exited with status {result.exit_code}",
                               hint="re-run without --remote-executor and with --keep-sandbox to inspect it locally",
                               detail=self._logs(result) or None)
        files = {f.path: f for f in result.output_files}
        dirs = {d.path: d for d in result.output_directories}
        outputs, left = [], []  # left: (Digest, sha256) of output files left on the engine
        try:
            claims_node = files.get(CLAIMS_PATH) if self.download == "minimal" else None
            read = self._read_small([result.stdout_digest if not result.stdout_raw else None,
                                     result.stderr_digest if not result.stderr_raw else None,
                                     claims_node.digest if claims_node is not None else None])
            claims = self._claims(claims_node, read)
            for out in action.outputs:
                if out.is_directory:
                    node = dirs.get(out.path)
                    if node is None:
                        raise ActionFailed(f"{action.owner}: {action.mnemonic}: declared output {out.path} was not "
                                           f"created {where}", detail=self._logs(result) or None)
                    outputs.append(OutputEntry(out.path, "dir", self._tree(node.tree_digest, claims, left)))
                    continue
                node = files.get(out.path)
                if node is None:
                    raise ActionFailed(f"{action.owner}: {action.mnemonic}: declared output {out.path} was not "
                                       f"created {where}", detail=self._logs(result) or None)
                sha, size = node.digest.hash, node.digest.size_bytes
                if sha in claims:
                    digest = Digest(claims[sha], size)
                    left.append((digest, sha))
                else:
                    self.ingest.ingest([(sha, size)])
                    digest = self.ingest.digest_of(sha)
                outputs.append(OutputEntry(out.path, "file", digest, bool(node.is_executable)))
        except RemoteTreeError as exc:
            raise RemoteExecutionError(f"{action.owner}: {action.mnemonic}: the outputs {where} were refused: {exc}")
        self._leave(left)
        stdout = self.local.put_blob(self._log_blob(result.stdout_raw, result.stdout_digest, read))
        stderr = self.local.put_blob(self._log_blob(result.stderr_raw, result.stderr_digest, read))
        self.local.flush()
        return ActionResult(tuple(outputs), 0, stdout, stderr,
                            {"mnemonic": action.mnemonic, "owner": str(action.owner), "remote.worker": worker})

    def _claims(self, node, read: dict) -> dict[str, str]:
        """The worker's SHA-256 -> BLAKE3 claims (CLAIMS_PATH), checked against the schema; {} when it
        sent none (an older worker: every output is then downloaded)."""
        if node is None:
            return {}
        data = read.get(node.digest.hash)
        if data is None:
            data = self.cas.read_sha(node.digest.hash, node.digest.size_bytes, limit=MAX_CLAIMS_BYTES)
        if data is None:
            raise RemoteTreeError(f"{CLAIMS_PATH} is missing on the server or does not match its digest")
        try:
            return decode_claims(data)
        except InvalidEntry as exc:
            raise RemoteTreeError(str(exc)) from None

    def _leave(self, left: list[tuple[Digest, str]]) -> None:
        """Record outputs left on the engine (those this machine holds already need no record)."""
        left = [(d, sha) for d, sha in left if not self.local.has_blob(d)]
        if not left:
            return
        for digest, sha in left:
            self.cas.learn_sha256(digest, sha, present=True)
        self.index.add(left)

    def _tree(self, digest, claims: dict, left: list) -> Digest:
        pb = self.pb
        data = self.cas.read_sha(digest.hash, digest.size_bytes, limit=256 << 20)
        if data is None:
            raise RemoteTreeError(f"tree {digest.hash}/{digest.size_bytes} is missing or corrupt")
        tree = pb.Tree()
        try:
            tree.ParseFromString(data)
        except Exception:  # noqa: BLE001 - a malformed message from the server
            raise RemoteTreeError(f"tree {digest.hash} is not a Tree message") from None
        children = {hashlib.sha256(c.SerializeToString(deterministic=True)).hexdigest(): c for c in tree.children}
        ingest = ClaimedIngest(self.ingest, claims) if claims else self.ingest
        root = reapi_tree_to_hb(pb, tree.root, children, ingest)
        if claims:
            left.extend((d, sha) for sha, d in ingest.left.items())
        return root


def _sha256_file(path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
