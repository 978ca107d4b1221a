"""OCI 1.1 artifacts that point at an image (`subject` + `artifactType`, empty config): making them,
adding them to an OCI image layout a user owns, and finding them again in a layout or a registry
(the referrers API, else the distribution spec's fallback tag `sha256-<hex>`). Generic OCI, no rule:
`hb attest` (core) and the oci rules (`oci_bundle`, `hb push`) share it.

Everything read back is treated as hostile: digests are recomputed, names are single components,
links in a layout are never followed."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .boundedjson import loads_bounded
from .errors import UsageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"  # artifactType and layer media type of a signed statement
TITLE = "org.opencontainers.image.title"
KIND_ANNOTATION = "dev.hermetic-build.artifact"
ENVELOPE_NAME = "provenance.dsse.json"
MAX_ARTIFACT_BYTES = 64 << 20
# artifacts of one type about one image that hb reads (a push --sign adds one per key): a registry or
# layout listing more is refused before any is read, and those read are checked one at a time, so a
# list of thousands costs neither an hour nor N times an envelope's memory
MAX_ARTIFACTS = 64
LOOKUP_SECONDS = 120  # reading them from a registry: past this no further request is made


def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha256_of(data), "size": len(data), **extra}


def artifact_manifest(subject: dict, artifact_type: str, layers: list[tuple[str, bytes, str]]) -> bytes:
    """An OCI 1.1 artifact manifest: empty config, one layer per (file name, bytes, media type),
    `subject` = the descriptor of the image it is about."""
    return canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": descriptor(EMPTY_CONFIG, EMPTY_JSON),
        "layers": [descriptor(media_type, data, annotations={TITLE: name}) for name, data, media_type in layers],
        "subject": subject,
    })


def _hex(digest: str) -> str:
    algorithm, _, hexdigest = str(digest).partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise UsageError(f"{str(digest)[:80]!r} is not a sha256 digest")
    return hexdigest


# ----- OCI image layouts -----------------------------------------------------------------------------------
def _layout_file(layout: Path, *parts: str) -> Path:
    """A path inside the layout whose every component is a real directory or file, never a link."""
    path = layout
    for part in parts:
        path = path / part
        if os.path.islink(path):
            raise UsageError(f"{path} is a symbolic link; hb does not read or write an image layout through links")
    return path


def read_layout_blob(layout: Path, digest: str, limit: int = MAX_ARTIFACT_BYTES) -> bytes:
    path = _layout_file(layout, "blobs", "sha256", _hex(digest))
    try:
        if path.stat().st_size > limit:
            raise UsageError(f"{path} is larger than {limit} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read blob {digest} of {layout}: {exc.strerror}") from None
    if sha256_of(data) != digest:
        raise UsageError(f"blob {digest} of {layout} does not match its digest")
    return data


def read_index(layout: Path) -> dict:
    try:
        index = loads_bounded(_layout_file(layout, "index.json").read_bytes(), f"{layout}/index.json")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{layout}/index.json is not a readable OCI image index: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise UsageError(f"{layout}/index.json is not an OCI image index")
    return index


def _write_new(path: Path, data: bytes) -> None:
    """Write `data` to path through a new temporary file renamed into place (never through a link, never
    into a file another path shares, e.g. a hard link)."""
    fd, tmp = tempfile.mkstemp(prefix=".hb-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def attach_to_layout(layout: Path, subject_digest: str, artifact_type: str, name: str, data: bytes,
                     kind: str) -> dict:
    """Add `data` (file `name`) to an OCI layout as an artifact about the image `subject_digest` (which
    the layout's index must list), replacing an earlier artifact of the same kind about it. Returns the
    artifact manifest's descriptor as listed in index.json."""
    index = read_index(layout)
    images = [m for m in index["manifests"] if isinstance(m, dict) and m.get("digest") == subject_digest
              and not m.get("artifactType")]
    if not images:
        raise UsageError(f"{layout}/index.json lists no image {subject_digest}",
                         hint="attach to the layout of the image the statement is about")
    subject = {k: images[0][k] for k in ("mediaType", "digest", "size")}
    blobs = _layout_file(layout, "blobs", "sha256")
    if not blobs.is_dir():
        raise UsageError(f"{layout} has no blobs/sha256 directory")
    manifest = artifact_manifest(subject, artifact_type, [(name, data, artifact_type)])
    for blob in (EMPTY_JSON, data, manifest):
        dest = _layout_file(layout, "blobs", "sha256", _hex(sha256_of(blob)))
        if not dest.exists():
            _write_new(dest, blob)
    entry = descriptor(OCI_MANIFEST, manifest, artifactType=artifact_type, annotations={KIND_ANNOTATION: kind})
    kept = [m for m in index["manifests"] if not (
        isinstance(m, dict) and m.get("annotations", {}).get(KIND_ANNOTATION) == kind
        and _subject_in_layout(layout, m) == subject_digest)]
    index["manifests"] = kept + [entry]
    _write_new(_layout_file(layout, "index.json"), canonical(index))
    return entry


def _subject_in_layout(layout: Path, entry: dict) -> str | None:
    try:
        return loads_bounded(read_layout_blob(layout, entry["digest"]), entry["digest"]).get("subject", {}).get("digest")
    except (UsageError, ValueError, KeyError, TypeError, AttributeError):
        return None


def layout_artifacts(layout: Path, subject_digest: str, artifact_type: str) -> Iterator[bytes]:
    """The first layer of each artifact of `artifact_type` in a layout whose subject is `subject_digest`,
    read one at a time as the caller asks (at most MAX_ARTIFACTS, each at most MAX_ARTIFACT_BYTES): a
    layout from elsewhere costs one artifact's memory, as a registry's does."""
    entries = [e for e in read_index(layout)["manifests"] if isinstance(e, dict) and e.get("artifactType") == artifact_type]
    _at_most(entries, f"{layout}/index.json", artifact_type)
    return _layout_artifacts(layout, entries, subject_digest)


def _layout_artifacts(layout: Path, entries: list[dict], subject_digest: str) -> Iterator[bytes]:
    for entry in entries:
        manifest = _parse_manifest(read_layout_blob(layout, entry.get("digest", "")))
        if manifest.get("subject", {}).get("digest") == subject_digest and manifest.get("layers"):
            yield read_layout_blob(layout, manifest["layers"][0]["digest"])


def _at_most(entries: list, where: str, artifact_type: str) -> None:
    if len(entries) > MAX_ARTIFACTS:
        raise UsageError(f"{where} lists {len(entries)} artifacts of type {artifact_type}; hb reads at most "
                         f"{MAX_ARTIFACTS} about one image", hint="remove stale artifacts, or verify the envelope "
                         "file with --subject")


def parse_json(data: bytes, what: str):
    """Outside JSON: a UsageError naming `what` for anything json refuses, nesting too deep included."""
    try:
        return loads_bounded(data, what)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{what} is not JSON: {str(exc)[:200]}") from None


def _parse_manifest(data: bytes) -> dict:
    """An artifact manifest: an object, `subject` an object, `layers` a list of descriptors whose
    digests are sha256 digests (checked here, before any of them names a request or a file)."""
    manifest = parse_json(data, "an artifact manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers", []), list) \
            or not isinstance(manifest.get("subject", {}), dict):
        raise UsageError("an artifact manifest is not an OCI manifest")
    for layer in manifest.get("layers", []):
        if not isinstance(layer, dict):
            raise UsageError("an artifact manifest lists a layer that is not a descriptor")
        _hex(layer.get("digest"))
    return manifest


# ----- registries ------------------------------------------------------------------------------------------
def has_referrers_api(client, repository: str, digest: str) -> bool:
    from .registry import RegistryError

    try:
        status, headers, _ = client.request("GET", f"/v2/{repository}/referrers/{digest}",
                                            scope=client._scope(repository, False), expect=(200, 404))
    except RegistryError:
        return False
    return status == 200 and headers.get("Content-Type", "").startswith(OCI_INDEX)


def registry_referrers(client, repository: str, digest: str) -> list[dict]:
    """The descriptors of the artifacts about `digest`: the referrers API where the registry has it,
    else the fallback index under the tag sha256-<hex>. The list must be an index whose entries are
    objects (UsageError otherwise)."""
    from .registry import RegistryAuthError, RegistryError

    where = f"{client.host}/{repository}"
    try:
        status, headers, data = client.request("GET", f"/v2/{repository}/referrers/{digest}",
                                               scope=client._scope(repository, False), expect=(200, 404))
    except RegistryAuthError:
        raise
    except RegistryError:  # a registry that does not know the route at all
        status, headers, data = 404, {}, b""
    if not (status == 200 and headers.get("Content-Type", "").startswith(OCI_INDEX)):
        found = client.get_manifest(repository, "sha256-" + _hex(digest))
        data = found[0] if found else b'{"manifests": []}'
    index = parse_json(data, f"the list of artifacts about {digest} from {where}")
    listed = index.get("manifests", []) if isinstance(index, dict) else None
    if not isinstance(listed, list) or not all(isinstance(d, dict) for d in listed):
        raise UsageError(f"the list of artifacts about {digest} from {where} is not an OCI image index")
    return listed


def registry_artifacts(client, repository: str, subject_digest: str, artifact_type: str) -> Iterator[bytes]:
    """The first layer of each artifact of `artifact_type` about `subject_digest` in a registry, one at a
    time (the caller stops at the one it wants), every manifest and blob checked against its digest.
    At most MAX_ARTIFACTS, within LOOKUP_SECONDS (plus one request's own deadline)."""
    from .bounded import read_blob

    where = f"{client.host}/{repository}"
    entries = [e for e in registry_referrers(client, repository, subject_digest) if e.get("artifactType") == artifact_type]
    _at_most(entries, f"{where} (the artifacts about {subject_digest})", artifact_type)
    for entry in entries:
        _hex(entry.get("digest"))  # a tag or a path would name other content than the digest the list gives
    end = time.monotonic() + LOOKUP_SECONDS
    for entry in entries:
        if time.monotonic() > end:
            raise UsageError(f"{where} took more than {LOOKUP_SECONDS} s to serve the artifacts about {subject_digest}")
        got = client.get_manifest(repository, entry["digest"])  # checked against the digest
        if got is None:
            continue
        manifest = _parse_manifest(got[0])
        if manifest.get("subject", {}).get("digest") != subject_digest or not manifest.get("layers"):
            continue
        layer = manifest["layers"][0]
        size = layer.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_ARTIFACT_BYTES:
            continue
        blob = client.get_blob(repository, layer["digest"], lambda response: read_blob(response, size), size=size)
        if blob is not None and len(blob) == size and sha256_of(blob) == layer["digest"]:
            yield blob
