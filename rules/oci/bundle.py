"""oci_bundle: an image with its SBOMs and provenance attached as OCI artifacts that point at it
(OCI image-spec 1.1 `subject` + `artifactType`), in one OCI image layout, and `hb push` of all of it.

The layout's index.json names the image (by its ref name) and each artifact manifest (annotated with
what it is); a registry with the referrers API indexes the artifacts by their subject; for one without
it (distribution 2.8, the Debian docker-registry) `hb push` also writes the distribution spec's fallback:
an image index of the referrers under the tag `sha256-<image digest hex>`."""

from __future__ import annotations


from hermetic_build.api import (
    DSSE_TYPE,
    ActionFailed,
    check_statement,
    envelope_bytes,
    DefaultInfo,
    MissingBlob,
    UsageError,
    artifact_manifest,
    attr,
    has_referrers_api,
    layout_artifacts,
    loads_bounded,
    lookup_tree,
    register_action_kind,
    rule,
    small_blob,
    walk_tree,
)

from .layout import MAX_JSON_BYTES, OCI_INDEX, OCI_MANIFEST, REF_NAME, canonical, descriptor, sha256_of

EMPTY_JSON = b"{}"
# what an attachment's files are, by file name: (artifactType, layer media type)
ARTIFACT_TYPES = {
    "sbom.spdx.json": ("application/spdx+json", "application/spdx+json"),
    "sbom.cdx.json": ("application/vnd.cyclonedx+json", "application/vnd.cyclonedx+json"),
    "provenance.intoto.json": ("application/vnd.in-toto+json", "application/vnd.in-toto+json"),
}
KIND_ANNOTATION = "dev.hermetic-build.artifact"


def _oci_bundle_impl(ctx):
    from .image import OciImageInfo, required_dep

    dep, image = required_dep(ctx, "image", OciImageInfo, "an oci_image target")
    attachments = []
    for target in ctx.deps("attach"):
        files = target.files
        if len(files) != 1 or not files[0].is_directory:
            ctx.fail(f"attach: {target.label} is not an oci_sbom or oci_provenance target")
        attachments.append(files[0])
    if not attachments:
        ctx.fail("attach names nothing", hint='e.g. attach = [":nlp-sbom", ":nlp-provenance"]')
    out = ctx.declare_directory(".")
    ctx.actions.declare(
        mnemonic="OciBundle", kind="oci.bundle", inputs=[image.layout, *attachments], outputs=[out],
        params={"layout": image.layout.path, "ref_name": image.ref_name,
                "attachments": [f.path for f in attachments], "epoch": ctx.settings.source_date_epoch},
        description=f"OciBundle {ctx.label}",
    )
    return [DefaultInfo(files=(out,)), OciImageInfo(out, image.ref_name, image.repo_tags, image.layer_indexes,
                                                    image.packages, image.base_reference, image.base_digest,
                                                    image.lockfiles)]


def _run_bundle(execution) -> None:
    params = execution.params
    store = execution.store
    layout = next(f for f in execution.action.inputs if f.path == params["layout"])
    out = execution.path(execution.action.outputs[0])
    out.mkdir(parents=True, exist_ok=True)
    try:
        # the image layout as it is (blobs streamed from the store, never read whole)
        for path, entry in walk_tree(store, execution.input_tree(layout)):
            dest = out / path
            if entry.kind == "dir":
                dest.mkdir(exist_ok=True)
            elif entry.kind == "file" and path != "index.json":
                if not store.fetch_file(entry.digest, dest):
                    raise MissingBlob(entry.digest)
            elif entry.kind != "file":
                raise ActionFailed(f"{layout.path}/{path} is a {entry.kind}; an image layout holds files only")
        index = loads_bounded(small_blob(store, lookup_tree(store, execution.input_tree(layout), "index.json").digest,
                                         MAX_JSON_BYTES, f"{layout.path}/index.json"), f"{layout.path}/index.json")
    except MissingBlob as exc:
        raise ActionFailed(f"{layout.path} is incomplete in the cache ({exc})") from None
    images = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == params["ref_name"]]
    if len(images) != 1:
        raise ActionFailed(f"{layout.path}/index.json has no single image named {params['ref_name']!r}")
    subject = {k: images[0][k] for k in ("mediaType", "digest", "size")}
    blobs = out / "blobs" / "sha256"
    (blobs / sha256_of(EMPTY_JSON)[7:]).write_bytes(EMPTY_JSON)
    referrers = []
    for attachment in params["attachments"]:
        tree = next(f for f in execution.action.inputs if f.path == attachment)
        for path, entry in walk_tree(store, execution.input_tree(tree)):
            if entry.kind != "file" or path not in ARTIFACT_TYPES:
                continue
            artifact_type, media_type = ARTIFACT_TYPES[path]
            try:
                data = small_blob(store, entry.digest, MAX_JSON_BYTES, f"{attachment}/{path}")
            except MissingBlob:
                raise ActionFailed(f"{attachment}/{path} is missing from the cache") from None
            (blobs / sha256_of(data)[7:]).write_bytes(data)
            manifest = artifact_manifest(subject, artifact_type, [(path, data, media_type)])
            (blobs / sha256_of(manifest)[7:]).write_bytes(manifest)
            referrers.append(descriptor(OCI_MANIFEST, manifest, artifactType=artifact_type,
                                        annotations={KIND_ANNOTATION: path}))
    if not referrers:
        raise ActionFailed("the attachments hold no SBOM or provenance file "
                           f"({', '.join(sorted(ARTIFACT_TYPES))})")
    index["manifests"] = images + sorted(referrers, key=lambda d: d["annotations"][KIND_ANNOTATION])
    (out / "index.json").write_bytes(canonical(index))
    execution.stdout += f"{len(referrers)} artifacts attached to {subject['digest']}\n".encode()


def referrers_of(layout_dir, image_digest: str) -> list[dict]:
    """The artifact descriptors of a bundle's index.json whose manifests name `image_digest` as subject."""
    index = loads_bounded((layout_dir / "index.json").read_bytes(), f"{layout_dir}/index.json")
    found = []
    for entry in index.get("manifests", []):
        if entry.get("artifactType"):
            path = layout_dir / "blobs/sha256" / entry["digest"][7:]
            manifest = loads_bounded(path.read_bytes(), str(path))
            if manifest.get("subject", {}).get("digest") == image_digest:
                found.append(entry)
    return found


def signed_provenance(layout_dir, image_digest: str, signer) -> tuple[dict, bytes, list[bytes]]:
    """The bundle's provenance statement about `image_digest`, signed by `signer` (payload -> DSSE
    envelope) as an artifact to push beside it: (its descriptor, its manifest, its blobs). The key stays
    in the caller's process; nothing of it is in the layout, an action or the cache."""
    statements = list(layout_artifacts(layout_dir, image_digest, ARTIFACT_TYPES["provenance.intoto.json"][0]))
    if len(statements) != 1:
        raise UsageError(f"the bundle holds {len(statements)} provenance statements about {image_digest}; "
                         "signing at push needs exactly one",
                         hint="attach an oci_provenance of the image: attach = [..., \":name-provenance\"]")
    check_statement(statements[0], subject=image_digest)
    envelope = envelope_bytes(signer(statements[0]))
    index = loads_bounded((layout_dir / "index.json").read_bytes(), f"{layout_dir}/index.json")
    image = next(m for m in index["manifests"] if m["digest"] == image_digest and not m.get("artifactType"))
    subject = {k: image[k] for k in ("mediaType", "digest", "size")}
    manifest = artifact_manifest(subject, DSSE_TYPE, [("provenance.dsse.json", envelope, DSSE_TYPE)])
    entry = descriptor(OCI_MANIFEST, manifest, artifactType=DSSE_TYPE,
                       annotations={KIND_ANNOTATION: "provenance.dsse.json"})
    return entry, manifest, [EMPTY_JSON, envelope]


def push_referrers(client, repository: str, layout_dir, image_digest: str,
                   extra: tuple[tuple[dict, bytes, list[bytes]], ...] = ()) -> tuple[int, str]:
    """Push each referrer (its blobs, then its manifest by digest), and each `extra` one (descriptor,
    manifest, blobs: made at push time, e.g. a signed statement); where the registry has no referrers
    API, also the fallback index under the tag sha256-<hex> (merged with what is there). Returns the
    number pushed and how the registry will list them ("referrers API" or the fallback tag)."""
    referrers = referrers_of(layout_dir, image_digest)
    for entry in referrers:
        data = (layout_dir / "blobs/sha256" / entry["digest"][7:]).read_bytes()
        manifest = loads_bounded(data, f"{layout_dir}/blobs/sha256/{entry['digest'][7:]}")
        for blob in [manifest["config"], *manifest["layers"]]:
            if client.blob_size(repository, blob["digest"]) is None:
                client.upload_blob(repository, layout_dir / "blobs/sha256" / blob["digest"][7:],
                                   blob["digest"], blob["size"])
        client.put_manifest(repository, entry["digest"], data, OCI_MANIFEST)
    for entry, manifest, blobs in extra:
        for blob in blobs:
            digest = sha256_of(blob)
            if client.blob_size(repository, digest) is None:
                client.upload_blob(repository, blob, digest, len(blob))
        client.put_manifest(repository, entry["digest"], manifest, OCI_MANIFEST)
    referrers = referrers + [entry for entry, _, _ in extra]
    if has_referrers_api(client, repository, image_digest):
        return len(referrers), "referrers API"
    tag = "sha256-" + image_digest.split(":", 1)[1]
    existing = client.get_manifest(repository, tag)
    listed = loads_bounded(existing[0], f"{repository}:{tag}").get("manifests", []) if existing else []
    merged = {d["digest"]: d for d in listed}
    merged.update({d["digest"]: {k: d[k] for k in ("mediaType", "digest", "size", "artifactType", "annotations")}
                   for d in referrers})
    fallback = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX,
                          "manifests": sorted(merged.values(), key=lambda d: d["digest"])})
    client.put_manifest(repository, tag, fallback, OCI_INDEX)
    return len(referrers), f"tag {tag}"


register_action_kind("oci.bundle", "1", _run_bundle, stage_inputs=False)


def _push_bundle(request) -> str:
    from pathlib import Path

    from .publish import _image, push_image

    layout = Path(request.outputs[0])
    extra = ()
    signer = request.options.get("signer")
    if signer is not None:  # signed before anything is pushed: a bundle without provenance fails first
        extra = (signed_provenance(layout, _image(request).manifest_digest, signer),)
    return push_image(request, after=lambda client, ref, digest: push_referrers(
        client, ref.repository, layout, digest, extra))


oci_bundle = rule(
    "oci_bundle",
    _oci_bundle_impl,
    attrs={
        "image": attr.label(mandatory=True, doc="an oci_image target"),
        "attach": attr.label_list(mandatory=True, doc="oci_sbom / oci_provenance targets to attach to it"),
    },
    doc="The image's layout with its SBOMs and provenance attached as OCI artifacts (subject = the image); "
        "`hb push` pushes them too (referrers API, or the sha256-<digest> tag fallback).",
    publish={"push": _push_bundle},
)
