"""Signed attestations: ed25519 keys, DSSE envelopes (https://github.com/secure-systems-lab/dsse)
around in-toto Statements, and their verification. Ed25519 signatures are deterministic, so a
signed statement is as reproducible as the statement itself.

The signing key is never an input of an action (it would end up in action keys and records):
actions write the unsigned, reproducible Statement; `hb attest sign` wraps it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from .boundedjson import loads_bounded
from .errors import HbError, UsageError

DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
KEY_ENV = "HB_SIGNING_KEY"


class AttestationError(HbError):
    """A signature, subject or dependency that does not check out (exit 1)."""

    exit_code = 1


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid(public_key) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def keygen(path: Path) -> tuple[Path, Path]:
    """Write an ed25519 private key (PEM, PKCS8, mode 0600) to `path` and its public key to `path`.pub."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    if path.exists():
        raise UsageError(f"{path} exists; hb keygen never overwrites a key", hint="choose another path")
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public = path.with_name(path.name + ".pub")
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path, public


def load_private_key(path: str | None):
    """The ed25519 signing key from `path`, else from $HB_SIGNING_KEY (a PEM text or a file path)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    source = path or os.environ.get(KEY_ENV)
    if not source:
        raise UsageError("no signing key", hint=f"pass --key FILE or set {KEY_ENV} (make one with `hb keygen FILE`)")
    data = source.encode() if source.lstrip().startswith("-----BEGIN") else _read(Path(source), "signing key")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"the signing key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError("the signing key is not an ed25519 key", hint="make one with `hb keygen FILE`")
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(_read(path, "public key"))
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an ed25519 public key")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from None


def sign(payload: bytes, key, payload_type: str = DSSE_PAYLOAD_TYPE) -> dict:
    """A DSSE envelope holding `payload`, signed with `key`."""
    signature = key.sign(pae(payload_type, payload))
    return {"payloadType": payload_type, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": keyid(key.public_key()), "sig": base64.b64encode(signature).decode()}]}


def envelope_bytes(envelope: dict) -> bytes:
    """How hb writes an envelope (a file, an attached artifact): the same bytes for the same envelope."""
    return (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode()


def verify(envelope: dict, public_key) -> bytes:
    """The payload of a DSSE envelope when one of its signatures is `public_key`'s; else an error."""
    from cryptography.exceptions import InvalidSignature

    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as exc:
        raise AttestationError(f"not a DSSE envelope: {exc}") from None
    # DSSE signs the type with the payload: what the key signed as something else is not a statement
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise AttestationError(f"the envelope's payloadType is {str(payload_type)[:100]!r}, not {DSSE_PAYLOAD_TYPE}")
    message = pae(payload_type, payload)
    for entry in signatures if isinstance(signatures, list) else []:
        try:
            public_key.verify(base64.b64decode(entry["sig"], validate=True), message)
            return payload
        except (InvalidSignature, KeyError, TypeError, ValueError, AttributeError):
            continue
    raise AttestationError("no signature of the envelope verifies with the given public key")


def check_statement(payload: bytes, *, subject: str | None = None,
                    lock_sha256s: list[dict[str, set[str]]] | None = None) -> dict:
    """Parse an in-toto Statement and check its subject digest and that it names every package of each
    lock (for a lock of several platforms: every package of one of them, the image's)."""
    try:
        statement = loads_bounded(payload, "the payload")
        subjects = [s["digest"]["sha256"] for s in statement["subject"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestationError(f"the payload is not an in-toto Statement: {exc}") from None
    if subject is not None and subject.removeprefix("sha256:") not in subjects:
        raise AttestationError(f"the statement is about {', '.join('sha256:' + s for s in subjects)}, not {subject}")
    deps = statement.get("predicate", {}).get("buildDefinition", {}).get("resolvedDependencies", [])
    recorded = {d.get("digest", {}).get("sha256") for d in deps if isinstance(d, dict)}
    for by_platform in lock_sha256s or []:
        missing = min((sorted(pinned - recorded) for pinned in by_platform.values()), key=len)
        if missing:
            raise AttestationError(f"{len(missing)} packages of a lock are not in the image's provenance "
                                   f"(first: sha256:{missing[0]})")
    return statement


def lock_sha256s(path: Path) -> dict[str, set[str]]:
    """platform -> every sha256 a lock file pins for it ("" when entries name no platform): a conda-lock
    or pixi YAML, a deb_base JSON lock, an explicit lock's #sha256 fragments; read generically, so that
    the check does not depend on one writer."""
    import re

    import yaml

    text = _read(path, "lock file").decode(errors="replace")
    found: dict[str, set[str]] = {}
    try:  # libyaml's loader: it bounds nesting (the pure-Python one recursed into a RecursionError)
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError):
        data = None
    # each node once per platform: YAML aliases let a few lines hold a list of 10**9 items that are all
    # one list, which a plain walk would visit 10**9 times
    seen: set[tuple[int, str]] = set()
    stack = [(data, "")]
    while stack:
        node, platform = stack.pop()
        if not isinstance(node, (dict, list)) or (id(node), platform) in seen:
            continue
        seen.add((id(node), platform))
        if isinstance(node, dict):
            platform = node["platform"] if isinstance(node.get("platform"), str) else platform
            for k, v in node.items():
                if k == "sha256" and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v):
                    found.setdefault(platform, set()).add(v)
                else:
                    stack.append((v, platform))
        else:
            stack.extend((v, platform) for v in node)
    fragments = re.findall(r"#sha256[:=]?([0-9a-f]{64})", text)
    if fragments:
        found.setdefault("", set()).update(fragments)
    if not found:
        raise UsageError(f"{path} pins no package by sha256")
    return found


def layout_manifest_digest(layout: Path, ref_name: str | None = None) -> str:
    """The manifest digest an OCI image layout's index.json names (the one tagged ref_name, if given)."""
    index_file = layout / "index.json"
    try:
        index = loads_bounded(_read(index_file, "image index"), str(index_file))
        manifests = [m for m in index["manifests"]
                     if ref_name is None or m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{index_file} is not an OCI image index: {exc}") from None
    if len(manifests) != 1:
        raise UsageError(f"{index_file} names {len(manifests)} manifests; pass --subject sha256:...")
    return manifests[0]["digest"]
