"""Fixtures for the OCI rules: the example workspace with its images built once per module, and
real registries (plain; htpasswd + self-signed TLS) on free 127.0.0.1 ports."""

from __future__ import annotations

import subprocess

import pytest
from support import Registry, copy_example, require_tool


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """examples/ locked (debs from apt, conda packages from its local channel) and both images built."""
    base = tmp_path_factory.mktemp("images")
    ws = copy_example(base / "examples", base / "cache")
    ws.hb("lock", "//base:debian", "//env:nlp-lock", "//env:nlp-gpu-lock", timeout=900)
    ws.summary = ws.build_json("//env:nlp", "//env:nlp-gpu", "//env:nlp-docker")
    return ws


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = Registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    """htpasswd auth + TLS with a self-signed certificate for 127.0.0.1."""
    work = tmp_path_factory.mktemp("tls-registry")
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = Registry(work, htpasswd=("alice", "s3cret"), tls=(cert, key))
    server.ca = cert
    yield server
    server.stop()
