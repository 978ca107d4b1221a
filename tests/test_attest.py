"""hermetic_build/attest.py: reading the lock files `hb attest verify --lock` checks an image against
(outside files: read generically, in bounded time and memory)."""

from __future__ import annotations

import pytest

from hermetic_build.attest import lock_sha256s
from hermetic_build.errors import UsageError

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_every_sha256_is_found_per_platform(tmp_path):
    lock = tmp_path / "conda-lock.yml"
    lock.write_text(f"package:\n- platform: linux-64\n  hash: {{sha256: {SHA_A}}}\n"
                    f"- platform: osx-arm64\n  hash: {{sha256: {SHA_B}}}\n"
                    f"# explicit: https://x/y.conda#sha256:{'c' * 64}\n")
    assert lock_sha256s(lock) == {"linux-64": {SHA_A}, "osx-arm64": {SHA_B}, "": {"c" * 64}}


def test_a_yaml_alias_bomb_is_walked_once_per_node(tmp_path):
    """Nine lines of anchors make one list stand for 10**9 mappings: each is the same object, visited
    once (a plain recursive walk visited all 10**9 and never returned)."""
    lines = [f"p0: &a0 [{{platform: linux-64, hash: {{sha256: {SHA_A}}}}}, 1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"p{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lock = tmp_path / "conda-lock.yml"
    lock.write_text("\n".join(lines) + "\npackage: *a8\n")
    assert lock_sha256s(lock) == {"linux-64": {SHA_A}}


def test_a_deeply_nested_lock_is_a_usage_error_not_a_traceback(tmp_path):
    lock = tmp_path / "conda-lock.yml"
    lock.write_text("package: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UsageError, match="pins no package by sha256"):
        lock_sha256s(lock)
