"""OCI image layouts (index.json, oci-layout, blobs/sha256) and docker-archive tarballs, as bytes
with one canonical JSON encoding so that the same inputs always give the same manifest digest."""

from __future__ import annotations

import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hermetic_build.api import canonical_oci_json, descriptor, loads_bounded, sha256_of  # noqa: F401 - re-exported

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


canonical = canonical_oci_json  # OCI JSON as hb writes it: sorted keys, no spaces (hermetic_build/referrers.py)


def epoch_rfc3339(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")  # the only digests hb reads blobs by
MAX_JSON_BLOB_BYTES = 16 << 20  # a manifest or config (a registry's manifests are capped the same)
# JSON that hb's own actions write and others read whole from the cache (an index, layers.json, an SBOM):
# a result from a remote cache may claim any size, so a larger one is refused unread (small_blob)
MAX_JSON_BYTES = 256 << 20


def blob_path(layout: Path, digest: str) -> Path:
    """Where the blob `digest` lives in the layout. Digests come from manifests and indexes, which
    are outside bytes: anything but sha256 and 64 lowercase hex digits is refused (a "digest" of
    `sha256:/etc/passwd` or `sha256:../x` would name a file outside the layout)."""
    if not isinstance(digest, str) or not SHA256_DIGEST.match(digest):
        raise LayoutError(f"{layout}: {str(digest)[:100]!r} is not a sha256 digest (sha256: and 64 lowercase hex "
                          "digits)")
    return layout / "blobs" / "sha256" / digest[len("sha256:"):]


def write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_of(data)
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_layout(layout: Path, manifest: bytes, config: bytes, platform: dict, ref_name: str) -> str:
    """Write config, manifest, index.json and oci-layout (layer blobs are placed by the caller)."""
    write_blob(layout, config)
    digest = write_blob(layout, manifest)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [descriptor(OCI_MANIFEST, manifest, platform=platform,
                                      annotations={REF_NAME: ref_name})]}
    (layout / "index.json").write_bytes(canonical(index))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return digest


@dataclass(frozen=True)
class LayoutImage:
    """The one image of a layout, read back and checked against its digests."""

    layout: Path
    manifest: bytes
    manifest_digest: str
    config: bytes
    ref_name: str

    @property
    def manifest_json(self) -> dict:
        return loads_bounded(self.manifest, f"{self.layout}: manifest {self.manifest_digest}")

    @property
    def config_json(self) -> dict:
        return loads_bounded(self.config, f"{self.layout}: the config of {self.manifest_digest}")

    def blob(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


class LayoutError(Exception):
    pass


def read_layout(layout: Path, ref_name: str | None = None, digest: str | None = None) -> LayoutImage:
    try:
        return _read_layout(layout, ref_name, digest)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON of the wrong shape
        raise LayoutError(f"{layout}: not a readable OCI image layout: {type(exc).__name__}: {exc}") from None


def _read_layout(layout: Path, ref_name: str | None, digest: str | None) -> LayoutImage:
    if not (layout / "index.json").is_file():
        raise LayoutError(f"{layout} is not an OCI image layout (no index.json)")
    index = loads_bounded(_read_regular(layout / "index.json", layout, "index.json"), f"{layout}/index.json")
    manifests = index.get("manifests", [])
    if digest:
        chosen = [m for m in manifests if m["digest"] == digest]
    elif ref_name:
        chosen = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == ref_name]
    else:
        chosen = manifests
    if len(chosen) != 1:
        names = [m.get("annotations", {}).get(REF_NAME, m["digest"]) for m in manifests]
        raise LayoutError(f"{layout}: expected one image{f' named {ref_name}' if ref_name else ''}"
                          f"{f' with digest {digest}' if digest else ''}, found {len(chosen)} (images: {names})")
    entry = chosen[0]
    manifest = _read_checked(layout, entry["digest"])
    parsed = loads_bounded(manifest, f"{layout}: manifest {entry['digest']}")
    if parsed.get("mediaType", OCI_MANIFEST) == OCI_INDEX:
        raise LayoutError(f"{layout}: {entry['digest']} is an index of several platforms; pin one platform's manifest")
    config = _read_checked(layout, parsed["config"]["digest"])
    return LayoutImage(layout, manifest, entry["digest"], config,
                       entry.get("annotations", {}).get(REF_NAME, "latest"))


def _read_regular(path: Path, layout: Path, what: str, limit: int = MAX_JSON_BLOB_BYTES) -> bytes:
    """A regular file of at most `limit` bytes (never a device or FIFO, whose reads may not end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LayoutError(f"{layout}: {what} is missing") from None
    except OSError as exc:
        raise LayoutError(f"{layout}: {what} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise LayoutError(f"{layout}: {what} is not a regular file")
        if info.st_size > limit:
            raise LayoutError(f"{layout}: {what} is larger than {limit} bytes, more than any manifest or config")
        return f.read(limit + 1)


def _read_checked(layout: Path, digest: str) -> bytes:
    data = _read_regular(blob_path(layout, digest), layout, f"blob {digest}")
    if sha256_of(data) != digest:
        raise LayoutError(f"{layout}: blob {digest} does not match its digest (corrupt layout)")
    return data


def write_docker_archive(image: LayoutImage, out: Path, repo_tags: list[str], epoch: int = 0) -> None:
    """A tarball `docker load` accepts: manifest.json naming the config and layer blobs (gzip layers
    are accepted as they are) plus the OCI layout files, entries sorted, times fixed."""
    manifest = image.manifest_json
    layers = [layer["digest"] for layer in manifest["layers"]]
    config_digest = manifest["config"]["digest"]
    docker_manifest = [{"Config": f"blobs/sha256/{config_digest.split(':')[1]}", "RepoTags": repo_tags,
                        "Layers": [f"blobs/sha256/{d.split(':')[1]}" for d in layers]}]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [descriptor(OCI_MANIFEST, image.manifest,
                                      annotations={REF_NAME: image.ref_name,
                                                   "io.containerd.image.name": repo_tags[0] if repo_tags else ""})]}
    files: dict[str, Path | bytes] = {
        "manifest.json": canonical(docker_manifest),
        "index.json": canonical(index),
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        f"blobs/sha256/{image.manifest_digest.split(':')[1]}": image.manifest,
        f"blobs/sha256/{config_digest.split(':')[1]}": image.config,
    }
    for d in layers:
        files[f"blobs/sha256/{d.split(':')[1]}"] = image.blob(d)
    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, epoch
            if isinstance(content, bytes):
                import io

                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.size = os.path.getsize(content)
                with open(content, "rb") as src:
                    tar.addfile(info, src)
