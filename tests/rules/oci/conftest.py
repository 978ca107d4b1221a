"""Fixtures for the OCI rules: the example workspace with its images built once per module, and
real registries (plain; htpasswd + self-signed TLS) on free 127.0.0.1 ports."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from support import REPO, Registry, Workspace, require_tool

IGNORED = shutil.ignore_patterns("hb-out", "conda-lock.yml", "conda-*.lock", "conda-lock.gpu*")


def copy_example(dest, cache) -> Workspace:
    shutil.copytree(REPO / "examples", dest, ignore=IGNORED)
    return Workspace(dest, cache)


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


def layout_image(layout):
    """(manifest digest, manifest, config) of an OCI layout with one image."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    return digest, manifest, config
