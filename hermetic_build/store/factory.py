"""Opening a remote store from its URL: http(s)://host/prefix (Bazel's HTTP cache layout),
oci://host[:port]/repository (an OCI registry) or grpc(s)://host:port[/instance] (a REAPI v2 cache)."""

from __future__ import annotations

import os

from ..errors import UsageError
from .remote import Signer


def signer_from_env() -> Signer:
    key = os.environ.get("HB_REMOTE_HMAC_KEY")
    return Signer(key.encode() if key else None)


def open_remote(url: str, *, timeout: float, local, instance_name: str | None = None):
    signer = signer_from_env()
    cafile = os.environ.get("HB_REMOTE_CA")
    if url.startswith(("http://", "https://")):
        from .http import HttpStore

        return HttpStore(url, signer=signer, timeout=timeout, cafile=cafile)
    if url.startswith("oci://"):
        from .registry import RegistryStore

        return RegistryStore(url, signer=signer, timeout=timeout, cafile=cafile, local=local)
    if url.startswith(("grpc://", "grpcs://")):
        try:
            from .reapi import ReapiStore

            return ReapiStore(url, signer=signer, timeout=timeout, cafile=cafile, instance_name=instance_name,
                              local=local)
        except ImportError as exc:
            raise UsageError(str(exc), hint="pip install 'hermetic-build[reapi]' (buildgrid, grpcio)") from None
        except ValueError as exc:
            raise UsageError(f"bad remote cache URL {url!r}: {exc}",
                             hint="grpc://host:port, grpcs://host:port or grpc://host:port/INSTANCE") from None
    raise UsageError(f"unsupported remote cache URL {url!r}",
                     hint="use http(s)://host/prefix (an HTTP cache), oci://host/repository (a registry) "
                          "or grpc(s)://host:port[/instance] (a REAPI cache)")
