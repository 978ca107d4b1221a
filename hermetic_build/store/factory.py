"""Opening a remote store from its URL: http(s)://host/prefix (Bazel's HTTP cache layout) or
oci://host[:port]/repository (an OCI registry)."""

from __future__ import annotations

import os

from ..errors import UsageError
from .remote import Signer


def signer_from_env() -> Signer:
    key = os.environ.get("HB_REMOTE_HMAC_KEY")
    return Signer(key.encode() if key else None)


def open_remote(url: str, *, timeout: float, local):
    signer = signer_from_env()
    cafile = os.environ.get("HB_REMOTE_CA")
    if url.startswith(("http://", "https://")):
        from .http import HttpStore

        return HttpStore(url, signer=signer, timeout=timeout, cafile=cafile)
    if url.startswith("oci://"):
        from .registry import RegistryStore

        return RegistryStore(url, signer=signer, timeout=timeout, cafile=cafile, local=local)
    raise UsageError(f"unsupported remote cache URL {url!r}",
                     hint="use http(s)://host/prefix (an HTTP cache) or oci://host/repository (a registry)")
