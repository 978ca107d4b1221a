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
from pathlib import Path

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
        index = json.loads(_layout_file(layout, "index.json").read_bytes())
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
        return json.loads(read_layout_blob(layout, entry["digest"])).get("subject", {}).get("digest")
    except (UsageError, ValueError, KeyError, TypeError, AttributeError):
        return None


def layout_artifacts(layout: Path, subject_digest: str, artifact_type: str) -> list[bytes]:
    """The first layer of each artifact of `artifact_type` in a layout whose subject is `subject_digest`."""
    found = []
    for entry in read_index(layout)["manifests"]:
        if not isinstance(entry, dict) or entry.get("artifactType") != artifact_type:
            continue
        manifest = _parse_manifest(read_layout_blob(layout, entry.get("digest", "")))
        if manifest.get("subject", {}).get("digest") == subject_digest and manifest.get("layers"):
            found.append(read_layout_blob(layout, manifest["layers"][0]["digest"]))
    return found


def _parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise UsageError(f"an artifact manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers", []), list):
        raise UsageError("an artifact manifest is not an OCI manifest")
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
    else the fallback index under the tag sha256-<hex>."""
    from .registry import RegistryAuthError, RegistryError

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
    try:
        listed = json.loads(data).get("manifests", [])
    except (ValueError, AttributeError):
        listed = []
    return [d for d in listed if isinstance(d, dict)]


def registry_artifacts(client, repository: str, subject_digest: str, artifact_type: str) -> list[bytes]:
    """The first layer of each artifact of `artifact_type` about `subject_digest` in a registry, every
    manifest and blob checked against its digest."""
    found = []
    for entry in registry_referrers(client, repository, subject_digest):
        if entry.get("artifactType") != artifact_type:
            continue
        got = client.get_manifest(repository, entry.get("digest", ""))  # checked against the digest
        if got is None:
            continue
        manifest = _parse_manifest(got[0])
        if manifest.get("subject", {}).get("digest") != subject_digest or not manifest.get("layers"):
            continue
        layer = manifest["layers"][0]
        if not isinstance(layer.get("size"), int) or layer["size"] > MAX_ARTIFACT_BYTES:
            continue
        blob = client.get_blob(repository, layer.get("digest", ""))
        if blob is not None and sha256_of(blob) == layer["digest"]:
            found.append(blob)
    return found
