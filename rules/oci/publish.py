"""`hb push LABEL REF` (OCI distribution API) and `hb load LABEL` (a Docker-API daemon) for images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hermetic_build.api import (
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryPushError,
    RegistryRef,
    RegistryUnavailable,
    UsageError,
)

from .layout import OCI_MANIFEST, LayoutError, read_layout, write_docker_archive


def default_repo_tags(label, attrs) -> list[str]:
    if attrs.get("repo_tags"):
        return list(attrs["repo_tags"])
    return [f"{(label.package or 'hb').replace('/', '-')}/{label.name}:{attrs.get('tag') or 'latest'}".lower()]


def _image(request):
    try:
        return read_layout(Path(request.outputs[0]), request.attrs.get("tag") or "latest")
    except LayoutError as exc:
        raise RegistryPushError(f"{request.label}: {exc}") from None


def push_image(request, after=None) -> str:
    """Push the image; then `after(client, ref, manifest_digest)` (e.g. its attached artifacts), whose
    (count, how) result is reported."""
    if request.options.get("signer") is not None and after is None:
        raise UsageError(f"{request.label} is an image without attached provenance; nothing to sign",
                         hint="push an oci_bundle that attaches an oci_provenance of it, with --sign")
    image = _image(request)
    options = request.options
    cafile = options.get("cafile") or os.environ.get("HB_REGISTRY_CA")
    try:
        ref = RegistryRef.parse(request.destination,
                                default_secure=False if options.get("plain_http") else (True if cafile else None))
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. hb push //env:nlp 127.0.0.1:5000/team/nlp:v1") from None
    if ref.reference and ref.reference.startswith("sha256:"):
        raise UsageError(f"push to a tag, not a digest ({request.destination}); the digest is printed after the push")
    tag = ref.reference or image.ref_name
    client = RegistryClient(ref.host, secure=ref.secure, cafile=cafile)
    where = f"{ref.host}/{ref.repository}"
    manifest = image.manifest_json
    blobs = [manifest["config"]] + manifest["layers"]
    uploaded = skipped = mounted = 0
    sent = 0
    try:
        for blob in blobs:
            digest, size = blob["digest"], blob["size"]
            if client.blob_size(ref.repository, digest) is not None:
                skipped += 1
                continue
            if any(client.mount_blob(ref.repository, digest, source) for source in options.get("mount_from") or ()):
                mounted += 1
                continue
            client.upload_blob(ref.repository, image.blob(digest), digest, size,
                               chunk_size=options.get("chunk_size") or None)
            uploaded += 1
            sent += size
        pushed = client.put_manifest(ref.repository, tag, image.manifest, OCI_MANIFEST)
        attached = after(client, ref, pushed) if after is not None else None
    except RegistryAuthError as exc:
        raise RegistryPushError(f"push to {where} was refused: {exc}",
                          hint="check the credentials: HB_REGISTRY_USER / HB_REGISTRY_PASSWORD, or `docker login "
                               f"{ref.host}` (~/.docker/config.json); a 403 means this user may not push there") from None
    except RegistryUnavailable as exc:
        raise RegistryPushError(f"push to {where} failed: {exc}",
                          hint="for a registry with a private CA pass --ca FILE (or HB_REGISTRY_CA); "
                               "for a plain-HTTP registry pass --plain-http") from None
    except RegistryError as exc:
        hint = None
        if exc.status == 400 and not ref.secure:
            hint = (f"{ref.host} answered 400 to plain HTTP: it probably speaks TLS; pass --ca FILE "
                    "(its CA certificate) to push over https")
        raise RegistryPushError(f"push to {where} failed: {exc}", hint=hint) from None
    if pushed != image.manifest_digest:
        raise RegistryPushError(f"{where} stored manifest {pushed}, but the local one is {image.manifest_digest}")
    request.reporter.info(f"{uploaded} blobs uploaded ({sent} bytes), {skipped} already there, {mounted} mounted")
    if attached is not None:
        request.reporter.info(f"{attached[0]} attached artifacts pushed (listed by the {attached[1]})")
    return f"{where}:{tag}@{pushed}"


def load_image(request) -> str:
    import docker
    from docker.errors import DockerException

    image = _image(request)
    host = request.options.get("docker_host") or os.environ.get("DOCKER_HOST")
    try:
        client = docker.DockerClient(base_url=host) if host else docker.from_env()
        client.ping()
    except DockerException as exc:
        raise RegistryPushError(f"no Docker-API daemon answers at {host or 'the default socket'}: {exc}",
                          hint="start dockerd or `podman system service`, and pass --docker-host unix:///path/to.sock "
                               "(or set DOCKER_HOST)") from None
    repo_tags = default_repo_tags(request.label, request.attrs)
    with tempfile.TemporaryDirectory(prefix="hb-load-") as tmp:
        archive = Path(tmp) / "image.tar"
        write_docker_archive(image, archive, repo_tags)
        try:
            with open(archive, "rb") as f:
                loaded = client.images.load(f)
        except DockerException as exc:
            raise RegistryPushError(f"the daemon at {host or 'the default socket'} refused the image: {exc}") from None
    names = sorted({t for img in loaded for t in img.tags}) or [img.id for img in loaded]
    return f"loaded {', '.join(names)} (manifest {image.manifest_digest})"
