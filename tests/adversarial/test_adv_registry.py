"""A hostile OCI registry (red-team findings, registry session), against the real `hb` command and a
real server (tests/servers/hostile_registry.py, which answers from a table the test writes):
`hb attest verify` reading a registry that lists thousands of signed artifacts, names them by things
that are not digests, sends JSON of every wrong shape or envelopes of another payload type; token
servers named by the registry; and `oci_pull` against a server that trickles its headers. Each must
end in a clean error (no traceback) within a bound of time and memory, and never accept a statement
it should not."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import REPO, free_port, stop, wait_for_http

from hermetic_build.attest import DSSE_PAYLOAD_TYPE, pae
from hermetic_build.referrers import DSSE_TYPE, OCI_INDEX, OCI_MANIFEST, artifact_manifest, canonical, descriptor

pytestmark = pytest.mark.slow

SERVER = REPO / "tests" / "servers" / "hostile_registry.py"
MAX_RSS_KIB = 300 << 10
REPO_NAME = "team/app"


class HostileRegistry:
    """tests/servers/hostile_registry.py on a free port, answering what `serve` put in its table."""

    def __init__(self, workdir: Path, tls: tuple[Path, Path] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.routes_file, self.log = workdir, workdir / "routes.json", workdir / "requests.log"
        self.routes: dict = {}
        self._n = 0
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.routes_file.write_text("{}")
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(self.port), "--routes",
                                      str(self.routes_file), "--log", str(self.log),
                                      *(["--tls", str(tls[0]), str(tls[1])] if tls else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if tls:
            _wait_for_port(self.port, self.proc)
        else:
            wait_for_http(f"http://{self.host}/v2/", self.proc)

    def serve(self, path: str, body: bytes = b"", *, status: int = 200, headers: dict | None = None,
              mode: str | None = None, save: bool = True) -> None:
        self._n += 1
        body_file = self.workdir / f"body-{self._n}"
        body_file.write_bytes(body)
        self.routes[path] = {"status": status, "headers": headers or {}, "body": str(body_file), "mode": mode}
        if save:
            self.save()

    def save(self) -> None:
        self.routes_file.write_text(json.dumps(self.routes))

    def manifest(self, reference: str, data: bytes, media_type: str = OCI_MANIFEST, **kw) -> None:
        self.serve(f"/v2/{REPO_NAME}/manifests/{reference}", data, headers={"Content-Type": media_type}, **kw)

    def blob(self, data: bytes, **kw) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.serve(f"/v2/{REPO_NAME}/blobs/{digest}", data, **kw)
        return digest

    def referrers(self, subject: str, manifests: list, **kw) -> None:
        self.serve(f"/v2/{REPO_NAME}/referrers/{subject}",
                   canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
                   headers={"Content-Type": OCI_INDEX}, **kw)

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        stop(self.proc)


def _wait_for_port(port: int, proc, timeout: float = 15) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the hostile registry did not start")


@pytest.fixture
def registry(tmp_path):
    server = HostileRegistry(tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture
def key(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.generate()
    public = tmp_path / "key.pub"
    public.write_bytes(private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _image(registry: HostileRegistry) -> str:
    """An image under the tag v1 (and its digest); returns its digest."""
    config = registry.blob(b"{}")
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                     "size": 2}})
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    registry.manifest("v1", manifest)
    registry.manifest(digest, manifest)
    return digest


def _statement(subject: str) -> bytes:
    return canonical({"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1",
                      "subject": [{"name": "app", "digest": {"sha256": subject.removeprefix("sha256:")}}],
                      "predicate": {}})


def _envelope(private, payload: bytes, payload_type: str = DSSE_PAYLOAD_TYPE) -> bytes:
    sig = private.sign(pae(payload_type, payload))
    return canonical({"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
                      "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}]})


def _artifact(registry: HostileRegistry, subject: str, envelope: bytes, save: bool = True) -> dict:
    """The envelope pushed as an artifact about subject; returns its descriptor for a referrers list."""
    registry.blob(b"{}", save=False)
    registry.blob(envelope, save=False)
    manifest = artifact_manifest({"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}, DSSE_TYPE,
                                 [("provenance.dsse.json", envelope, DSSE_TYPE)])
    entry = descriptor(OCI_MANIFEST, manifest, artifactType=DSSE_TYPE)
    registry.manifest(entry["digest"], manifest, save=save)
    return entry


def verify(registry: HostileRegistry, public: Path, *extra: str, reference: str | None = None,
           env_extra: dict | None = None, timeout: float = 120):
    """hb attest verify REFERENCE --key PUB: (exit status, stdout, stderr, seconds, peak RSS KiB of hb)."""
    return run_hb(["attest", "verify", reference or f"{registry.host}/{REPO_NAME}:v1", "--key", str(public),
                   *extra], public.parent, env_extra, timeout)


def run_hb(args: list[str], cwd: Path, env_extra: dict | None = None, timeout: float = 120):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    out, err = cwd / ".out", cwd / ".err"
    started = time.monotonic()
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", *args], cwd=cwd, env=env,
                                stdout=o, stderr=e)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
    seconds = time.monotonic() - started
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr
    return os.waitstatus_to_exitcode(status), out.read_text(), stderr, seconds, usage.ru_maxrss


# ----- an honest registry: the baseline the attacks are measured against ------------------------------------
def test_an_honest_registry_verifies(registry, key):
    private, public = key
    subject = _image(registry)
    registry.referrers(subject, [_artifact(registry, subject, _envelope(private, _statement(subject)))])
    status, out, err, seconds, rss = verify(registry, public)
    assert status == 0, err
    assert f"verified: signature OK; about app@{subject}" in out


# ----- R1: a referrers list of thousands of signed artifacts --------------------------------------------------
def _unsigned_artifacts(registry: HostileRegistry, subject: str, count: int) -> list[dict]:
    """`count` artifacts of `subject` (not yet in the referrers list), each naming one unsigned 12 MiB
    envelope (stored once): their descriptors."""
    junk = canonical({"payloadType": DSSE_PAYLOAD_TYPE, "payload": base64.b64encode(os.urandom(9 << 20)).decode(),
                      "signatures": []})
    entries = []
    for i in range(count):
        manifest = artifact_manifest({"mediaType": OCI_MANIFEST, "digest": subject, "size": i}, DSSE_TYPE,
                                     [("provenance.dsse.json", junk, DSSE_TYPE)])
        entry = descriptor(OCI_MANIFEST, manifest, artifactType=DSSE_TYPE)
        registry.manifest(entry["digest"], manifest, save=False)
        entries.append(entry)
    registry.blob(junk, save=False)
    return entries


def test_thousands_of_referrers_are_read_one_at_a_time_and_at_most_a_bound(registry, key):
    """Each artifact's envelope (an unsigned 12 MiB blob) used to be kept until all were read: 100 of
    them took 2.4 GB of hb's memory, 1000 more than this machine has; now a list longer than
    MAX_ARTIFACTS is refused before any is read, and those read are verified one at a time."""
    private, public = key
    subject = _image(registry)
    registry.referrers(subject, _unsigned_artifacts(registry, subject, 1000))
    status, out, err, seconds, rss = verify(registry, public)
    assert status == 2, err
    assert "lists 1000 artifacts of type" in err and "hb reads at most 64" in err, err
    assert rss < MAX_RSS_KIB and seconds < 60, (rss, seconds)


def test_many_unsigned_envelopes_are_verified_one_at_a_time(registry, key):
    """At most MAX_ARTIFACTS, each 12 MiB: memory is that of one envelope, not of all of them."""
    private, public = key
    subject = _image(registry)
    entries = _unsigned_artifacts(registry, subject, 64)
    entries.append(_artifact(registry, subject, _envelope(private, _statement(subject)), save=False))
    registry.referrers(subject, entries[-64:])  # the signed one last
    status, out, err, seconds, rss = verify(registry, public)
    assert status == 0, err
    assert f"verified: signature OK; about app@{subject}" in out
    assert rss < MAX_RSS_KIB and seconds < 60, (rss, seconds)


# ----- R2: referrers, artifact manifests and envelopes of the wrong shape ------------------------------------
def _with_referrers(registry, subject, body: bytes):
    registry.serve(f"/v2/{REPO_NAME}/referrers/{subject}", body, headers={"Content-Type": OCI_INDEX})


@pytest.mark.parametrize("body", [
    b'{"manifests": 5}', b'{"manifests": [{"artifactType": "%s", "digest": 5}]}' % DSSE_TYPE.encode(),
    b'[' * 100_000 + b']' * 100_000, b'{"manifests": "x"}', b"not json", b"[]",
], ids=["manifests-int", "digest-int", "nesting-bomb", "manifests-str", "not-json", "a-list"])
def test_a_referrers_list_of_the_wrong_shape_is_a_clean_error(registry, key, body):
    _, public = key
    subject = _image(registry)
    _with_referrers(registry, subject, body)
    status, out, err, _, _ = verify(registry, public)
    assert status in (1, 2), err
    assert "verified" not in out


@pytest.mark.parametrize("reference", ["signatures", "../../../v2/other/blobs/x", "sha256:" + "A" * 64, "sha256:abc?x=1"])
def test_a_referrer_named_by_something_other_than_a_digest_is_not_fetched(registry, key, reference):
    """A registry's referrers list names each artifact by the digest of its manifest; a tag (whose
    content the registry may change), a path or an uppercase digest is refused before any request."""
    private, public = key
    subject = _image(registry)
    entry = _artifact(registry, subject, _envelope(private, _statement(subject)))
    registry.manifest(reference,
                      Path(registry.routes[f"/v2/{REPO_NAME}/manifests/{entry['digest']}"]["body"]).read_bytes())
    registry.referrers(subject, [{**entry, "digest": reference}])
    status, out, err, _, _ = verify(registry, public)
    assert status == 2 and "is not a sha256 digest" in err, err
    assert not [r for r in registry.requests() if reference.split("?")[0].split("/")[-1] in r.split()[1]
                and "/referrers/" not in r], registry.requests()


@pytest.mark.parametrize("manifest", [
    {"subject": "x", "layers": []}, {"subject": {"digest": "SUBJECT"}, "layers": ["x"]},
    {"subject": {"digest": "SUBJECT"}, "layers": [{"digest": "sha256:../../x", "size": 2}]},
    {"subject": {"digest": "SUBJECT"}, "layers": [{"digest": 7, "size": 2}]},
    {"subject": {"digest": "SUBJECT"}, "layers": {"a": 1}},
], ids=["subject-str", "layer-str", "layer-path", "layer-int", "layers-dict"])
def test_an_artifact_manifest_of_the_wrong_shape_is_a_clean_error(registry, key, manifest):
    _, public = key
    subject = _image(registry)
    data = json.dumps(manifest).replace("SUBJECT", subject).encode()
    entry = descriptor(OCI_MANIFEST, data, artifactType=DSSE_TYPE)
    registry.manifest(entry["digest"], data)
    registry.referrers(subject, [entry])
    status, out, err, _, _ = verify(registry, public)
    assert status in (1, 2), err
    assert "verified" not in out


@pytest.mark.parametrize("envelope", [
    b'{"payloadType": 5, "payload": "", "signatures": []}', b'[' * 100_000 + b']' * 100_000,
    b'{"payloadType": "x", "payload": "", "signatures": [{"sig": 5}]}', b"[]",
], ids=["payload-type-int", "nesting-bomb", "sig-int", "a-list"])
def test_an_envelope_of_the_wrong_shape_is_a_clean_error(registry, key, envelope):
    _, public = key
    subject = _image(registry)
    registry.referrers(subject, [_artifact(registry, subject, envelope)])
    status, out, err, _, _ = verify(registry, public)
    assert status == 1, err
    assert "verified" not in out


# ----- R3: what is signed must be a statement about this image -----------------------------------------------
def test_a_payload_of_another_type_signed_by_the_key_is_not_a_statement(registry, key):
    """DSSE signs the payload type with the payload; a verifier must want the type it reads. Something
    else the same key signed (here a document of another type whose bytes happen to parse as a
    statement) used to be accepted as provenance."""
    private, public = key
    subject = _image(registry)
    other = _envelope(private, _statement(subject), payload_type="application/vnd.example.policy+json")
    registry.referrers(subject, [_artifact(registry, subject, other)])
    status, out, err, _, _ = verify(registry, public)
    assert status == 1, err
    assert "payloadType" in err and "application/vnd.example.policy+json" in err, err


def test_an_attestation_of_another_image_is_refused(registry, key):
    """The registry lists image A's signed envelope as an artifact about image B (its artifact
    manifest says B): the signed statement names A, so it is refused for B."""
    private, public = key
    subject = _image(registry)
    other = "sha256:" + "1" * 64
    registry.referrers(subject, [_artifact(registry, subject, _envelope(private, _statement(other)))])
    status, out, err, _, _ = verify(registry, public)
    assert status == 1, err
    assert f"the statement is about {other}, not {subject}" in err


def test_a_manifest_that_does_not_match_the_pinned_digest_is_refused(registry, key):
    _, public = key
    subject = _image(registry)
    registry.manifest(subject, b'{"schemaVersion": 2, "layers": []}')
    status, out, err, _, _ = verify(registry, public, reference=f"{registry.host}/{REPO_NAME}@{subject}")
    assert status == 2 and "does not match its digest" in err, err



# ----- T: the token server a registry names ---------------------------------------------------------------------
CREDENTIALS = {"HB_REGISTRY_USER": "alice", "HB_REGISTRY_PASSWORD": "s3cret"}
BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()


@pytest.fixture
def witness(tmp_path):
    """A second server that records who sends it what (a token server on another host, in effect)."""
    server = HostileRegistry(tmp_path / "witness")
    server.serve("*", b'{"token": "t"}')
    yield server
    server.stop()


def _challenge(registry: HostileRegistry, challenge: str) -> None:
    registry.serve("*", b"", status=401, headers={"WWW-Authenticate": challenge})


@pytest.mark.parametrize("scheme", ["file", "ftp", "gopher"])
def test_a_token_realm_that_is_not_http_gets_no_credentials(registry, witness, key, scheme):
    """realm="ftp://host:port/..." used to be fetched as plain HTTP with the registry password in it."""
    _, public = key
    _challenge(registry, f'Bearer realm="{scheme}://{witness.host}/token",service="r"')
    status, out, err, _, _ = verify(registry, public, env_extra=CREDENTIALS)
    assert status == 2 and "realm" in err and scheme in err, err
    assert not [r for r in witness.requests() if r.startswith("GET /token")], witness.requests()


def test_a_plain_http_token_realm_of_an_https_registry_gets_no_credentials(tmp_path, witness, key):
    """An https registry naming an http:// token server would have the password sent in clear."""
    _, public = key
    cert, tls_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
                    str(tls_key), "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    registry = HostileRegistry(tmp_path / "tls", tls=(cert, tls_key))
    try:
        _challenge(registry, f'Bearer realm="http://{witness.host}/token",service="r"')
        status, out, err, _, _ = verify(registry, public, "--ca", str(cert), env_extra=CREDENTIALS)
        assert any(r.startswith("GET /v2/") for r in registry.requests())
    finally:
        registry.stop()
    assert status == 2 and "realm" in err and "https" in err, err
    assert not [r for r in witness.requests() if r.startswith("GET /token")], witness.requests()


def test_a_plain_http_registry_may_name_a_plain_http_token_server(registry, witness, key):
    """localhost registries (tests, a local mirror) speak http; their token server may too."""
    _, public = key
    _challenge(registry, f'Bearer realm="http://{witness.host}/token",service="r"')
    status, out, err, _, _ = verify(registry, public, env_extra=CREDENTIALS)
    assert status == 2, err  # refused with the token as well: the registry answers 401 to everything
    assert [r.split(" ", 2)[2] for r in witness.requests() if r.startswith("GET /token")] == [BASIC]


@pytest.mark.parametrize("challenge,token", [
    ('Bearer service="r"', None), ("Bearer realm=TOKEN", b"not json"), ("Bearer realm=TOKEN", b"[1]"),
    ("Bearer realm=TOKEN", b'{"token": 5}'), ("Bearer realm=TOKEN", b'{"token": "a\\r\\nX-Injected: 1"}'),
    ("Bearer realm=TOKEN", b"[" * 100_000 + b"]" * 100_000), ("Bearer realm=TOKEN", b"{}"),
], ids=["no-realm", "not-json", "a-list", "token-int", "token-crlf", "nesting-bomb", "no-token"])
def test_a_bad_challenge_or_token_answer_is_a_clean_error(registry, witness, key, challenge, token):
    _, public = key
    if token is not None:
        witness.serve("*", token)
    _challenge(registry, challenge.replace("TOKEN", f'"http://{witness.host}/token"'))
    status, out, err, seconds, _ = verify(registry, public, env_extra=CREDENTIALS)
    assert status == 2 and "verified" not in out, err
    assert seconds < 30


def test_an_endless_token_answer_is_cut(registry, witness, key):
    _, public = key
    witness.serve("*", mode="endless")
    _challenge(registry, f'Bearer realm="http://{witness.host}/token",service="r"')
    status, out, err, seconds, rss = verify(registry, public, env_extra=CREDENTIALS)
    assert status == 2 and "answered with more than" in err, err
    assert rss < MAX_RSS_KIB and seconds < 30


# ----- P: oci_pull's requests end, and a BUILD file's registry gets no password -----------------------------------
def _pull_workspace(tmp_path: Path, image: str) -> Path:
    ws = tmp_path / "ws"
    (ws / "p").mkdir(parents=True)
    (ws / "hermetic.toml").write_text("")
    (ws / "p/BUILD.hermetic").write_text(f'oci_pull(name = "base", image = "{image}")\n'
                                         'oci_image(name = "app", base = ":base")\n')
    return ws


def _pull_image(registry: HostileRegistry) -> str:
    """A one-layer image; returns the manifest digest."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layer = gzip.compress(buf.getvalue(), mtime=0)
    config = canonical({"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()]}})
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": registry.blob(config, save=False), "size": len(config)},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                      "digest": registry.blob(layer, save=False), "size": len(layer)}]})
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    registry.manifest(digest, manifest)
    return digest


def build(ws: Path, target: str, env_extra: dict | None = None, timeout: float = 120):
    return run_hb(["build", target], ws, {"HB_CACHE_DIR": str(ws.parent / "cache"), **(env_extra or {})}, timeout)


def test_an_honest_pull(tmp_path, registry):
    digest = _pull_image(registry)
    ws = _pull_workspace(tmp_path, f"{registry.host}/{REPO_NAME}@{digest}")
    status, out, err, _, _ = build(ws, "//p:app")
    assert status == 0, err


@pytest.mark.parametrize("part,mode", [("manifests", "drip-headers"), ("blobs", "drip-headers"),
                                       ("manifests", "drip-body"), ("manifests", "endless")])
def test_a_trickling_or_endless_registry_ends_a_pull(tmp_path, registry, part, mode):
    """The status line and headers a byte every 0.5 s, or a body a byte every 0.2 s: the request's
    total deadline (30 s) ends it, not the per-read timeout (which each byte resets)."""
    digest = _pull_image(registry)
    for path, route in registry.routes.items():
        if f"/{part}/" in path:
            route["mode"] = mode
    registry.save()
    ws = _pull_workspace(tmp_path, f"{registry.host}/{REPO_NAME}@{digest}")
    status, out, err, seconds, rss = build(ws, "//p:app")
    print(f"{part} {mode}: status {status} {seconds:.1f} s {rss >> 10} MiB")
    assert status != 0 and ("did not complete within" in err or "more than" in err), err
    assert seconds < 60 and rss < MAX_RSS_KIB, (seconds, rss)


def test_a_registry_named_by_a_build_file_gets_no_password_from_the_environment(tmp_path, registry):
    """HB_REGISTRY_USER/PASSWORD are for the registry you name on the command line (hb push, an
    oci:// cache, hb attest verify); oci_pull's host comes from a BUILD file, which may be anyone's."""
    digest = _pull_image(registry)
    registry.routes["!auth"] = 'Basic realm="r"'
    registry.save()
    ws = _pull_workspace(tmp_path, f"{registry.host}/{REPO_NAME}@{digest}")
    status, out, err, _, _ = build(ws, "//p:app", CREDENTIALS)
    assert status != 0 and "requires a login" in err, err
    assert not [r for r in registry.requests() if "Basic" in r], registry.requests()


# ----- R: blobs redirected to where the bytes are (Docker Hub, ghcr.io, quay.io send a CDN's URL) ------------
def _redirect_blobs(registry: HostileRegistry, cdn: HostileRegistry, status: int = 307,
                    location=lambda cdn, digest: f"http://{cdn.host}/cdn/{digest}?X-Signature=abc") -> None:
    """Move the registry's blobs to the CDN and answer each blob request with a redirect there."""
    for path, route in list(registry.routes.items()):
        if "/blobs/" in path:
            digest = path.rsplit("/", 1)[1]
            cdn.routes[f"/cdn/{digest}"] = route
            registry.routes[path] = {"status": status, "headers": {"Location": location(cdn, digest)}}
    registry.save()
    cdn.save()


@pytest.fixture
def cdn(tmp_path):
    server = HostileRegistry(tmp_path / "cdn")
    yield server
    server.stop()


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_blob_redirected_to_a_cdn_is_pulled_and_the_cdn_gets_no_credentials(tmp_path, registry, cdn, status):
    """Public registries answer a blob GET with a redirect to a CDN or a signed object-store URL:
    hb follows it, checks the bytes against the digest as usual, and sends the registry's login to
    the registry only (the CDN's URL carries its own signature)."""
    digest = _pull_image(registry)
    registry.routes["!auth"] = 'Basic realm="r"'
    _redirect_blobs(registry, cdn, status)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {
        "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    ws = _pull_workspace(tmp_path, f"{registry.host}/{REPO_NAME}@{digest}")
    status_code, out, err, _, _ = build(ws, "//p:app", {"DOCKER_CONFIG": str(docker)})
    assert status_code == 0, err
    assert any(r.startswith("GET /cdn/sha256:") for r in cdn.requests()), cdn.requests()
    assert all(r.endswith(" -") for r in cdn.requests()), cdn.requests()  # no Authorization header
    assert any(r.endswith(BASIC) for r in registry.requests()), registry.requests()


@pytest.mark.parametrize("where", ["https", "file", "relative-ok", "loop"])
def test_a_redirect_elsewhere_than_the_registrys_scheme_is_refused_and_a_loop_ends(tmp_path, registry, cdn, where):
    """A plain-http registry's redirect may lead to another http URL (or a path on itself); to
    https://, file: (or for an https registry, to http:) it is refused, and a redirect loop ends."""
    digest = _pull_image(registry)
    if where == "relative-ok":  # a path on the registry itself, then a CDN: followed
        for path, route in list(registry.routes.items()):
            if "/blobs/" in path:
                registry.routes[path.replace("/blobs/", "/moved/")] = route
                registry.routes[path] = {"status": 307, "headers": {"Location": path.replace("/blobs/", "/moved/")}}
        registry.save()
    elif where == "loop":
        for path in list(registry.routes):
            if "/blobs/" in path:
                registry.routes[path] = {"status": 302, "headers": {"Location": path}}
        registry.save()
    else:
        target = {"https": lambda c, d: f"https://{c.host}/cdn/{d}", "file": lambda c, d: "file:///etc/passwd"}[where]
        _redirect_blobs(registry, cdn, 307, target)
    ws = _pull_workspace(tmp_path, f"{registry.host}/{REPO_NAME}@{digest}")
    status, out, err, seconds, _ = build(ws, "//p:app")
    if where == "relative-ok":
        assert status == 0, err
        return
    assert status != 0, err
    if where == "loop":
        assert "redirected it more than 5 times" in err, err
    else:
        assert "hb follows a registry's redirect only to another http URL" in err, err
        assert not [r for r in cdn.requests() if "/cdn/" in r], cdn.requests()
    assert seconds < 60


@pytest.mark.parametrize("length", ["abc", "-5", "1e9", "99999999999999999999999"])
def test_a_blob_size_that_is_not_a_number_is_a_registry_error(registry, length):
    """HEAD's Content-Length is what `hb push` and the oci:// cache compare with a blob's size."""
    from hermetic_build.registry import RegistryClient, RegistryError

    digest = "sha256:" + "a" * 64
    registry.serve(f"/v2/{REPO_NAME}/blobs/{digest}", headers={"Content-Length": length})
    with pytest.raises(RegistryError, match="not a size"):
        RegistryClient(registry.host, secure=False).blob_size(REPO_NAME, digest)


def test_a_login_is_never_sent_in_clear_to_a_network_host_a_build_file_names(tmp_path, monkeypatch):
    """`oci_pull(image = "oci+http://registry.corp/...")`: your docker login for registry.corp stays
    home (it would cross the network in clear); a loopback registry still gets it, and a host you name
    yourself (hb push oci+http://...) too."""
    from hermetic_build.registry import RegistryAuthError, RegistryClient

    docker = tmp_path / "docker"
    docker.mkdir()
    hosts = ("registry.corp:5000", "127.0.0.1:5000")
    (docker / "config.json").write_text(json.dumps({"auths": {h: {"auth": base64.b64encode(b"alice:s3cret").decode()}
                                                              for h in hosts}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    pulled = RegistryClient("registry.corp:5000", secure=False, environment_credentials=False)
    assert pulled.credentials is None
    with pytest.raises(RegistryAuthError, match="does not send your login for it in clear"):
        pulled._authenticate('Basic realm="r"', "repository:x:pull")
    assert RegistryClient("127.0.0.1:5000", secure=False, environment_credentials=False).credentials == ("alice", "s3cret")
    assert RegistryClient("registry.corp:5000", secure=True, environment_credentials=False).credentials == ("alice", "s3cret")
    assert RegistryClient("registry.corp:5000", secure=False).credentials == ("alice", "s3cret")
