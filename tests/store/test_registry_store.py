"""RegistryStore (an OCI registry as the remote cache) against the real Debian docker-registry."""

import hashlib
import os

import pytest
from support import Registry

from hermetic_build.store.base import ActionResult, OutputEntry
from hermetic_build.store.local import LocalStore
from hermetic_build.store.registry import RegistryStore
from hermetic_build.store.remote import Signer
from hermetic_build.tree import MissingBlob


def _store(registry, local) -> RegistryStore:
    return RegistryStore(f"oci://{registry.host}/hb/cache", signer=Signer(b"team-key"), timeout=10,
                         cafile=None, local=local)


def test_a_local_blob_that_changed_is_not_uploaded_as_a_result(tmp_path):
    """A result's blobs that this process did not upload are read from the local CAS and checked
    against their BLAKE3 as their SHA-256 is taken: a changed one is removed and reported missing (its
    producer runs again); neither its bytes nor a result naming it reach the registry."""
    registry = Registry(tmp_path / "registry")
    try:
        local = LocalStore(tmp_path / "c")
        good = local.put_blob(b"fine bytes")
        _store(registry, local).put_action_result("ab" * 32, ActionResult((OutputEntry("o", "file", good, False),),
                                                                          0, None, None))
        assert _store(registry, LocalStore(tmp_path / "other")).get_action_result("ab" * 32) is not None
        changed = local.put_blob(b"output bytes")
        os.chmod(local.blob_path(changed), 0o644)
        with open(local.blob_path(changed), "r+b") as f:
            f.write(b"OUTPUT")
        with pytest.raises(MissingBlob):
            _store(registry, LocalStore(tmp_path / "c")).put_action_result(
                "cd" * 32, ActionResult((OutputEntry("o", "file", changed, False),), 0, None, None))
        assert not local.blob_path(changed).exists()
        assert _store(registry, LocalStore(tmp_path / "other")).get_action_result("cd" * 32) is None
        assert not registry.blob_path(hashlib.sha256(b"OUTPUT bytes").hexdigest()).exists()
    finally:
        registry.stop()
