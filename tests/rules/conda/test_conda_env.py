"""conda_env: fetch by sha256 (http and file://) and stage into a prefix tree."""

import hashlib
import io
import json
import shutil
import tarfile
import textwrap

import pytest

from support import env_workspace, run_in_prefix

DEPS = ["python 3.11.*", "nlp-tok", "hb-hello", "hb-accel", "hb-vocab >=2"]


def _tree(ws, summary, label="//env:env"):
    return ws.root / summary["targets"][label][0]["path"]


def test_fetch_over_http_stage_and_run(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, DEPS)
    workspace.hb("lock", "//env:lock")
    summary = workspace.build_json("//env:env")
    assert summary["actions"] == {"executed": 8, "cached": 0}
    tree = _tree(workspace, summary)
    hello = run_in_prefix(tree, "/opt/env/bin/hb-hello")
    assert hello.returncode == 0 and hello.stdout == "hello from /opt/env\n", hello.stderr
    tok = run_in_prefix(tree, "/opt/env/bin/hb-tokenize", "token1", "token2", "zzz")
    assert tok.returncode == 0 and tok.stdout.startswith("tokens=3 known=2 vocab=2000 prefix=/opt/env"), tok.stderr
    assert (tree / "etc/hb/config.txt").read_text() == "prefix=/opt/env\ndata=/opt/env/share/hb-vocab\n"
    assert not (tree / "CACHEDIR.TAG").exists()
    meta = json.loads(next((tree / "conda-meta").glob("libhb-*.json")).read_text())
    assert meta["url"].startswith(nginx_channel.url) and "extracted_package_dir" not in meta
    # a second build runs nothing, and aquery lists one fetch per package plus the stage
    assert workspace.build_json("//env:env")["actions"] == {"executed": 0, "cached": 8}
    aq = json.loads(workspace.hb("aquery", "--json", "//env:env").stdout)
    assert sorted(a["mnemonic"] for a in aq) == ["CondaFetch"] * 7 + ["CondaStage"]
    fetch = next(a for a in aq if a["mnemonic"] == "CondaFetch")
    assert set(fetch["params"]) == {"sha256", "filename"}, "the URL is a location, not part of the key"


def test_url_change_does_not_change_fetch_keys(workspace, nginx_channel, channel_dir, faulty_server):
    env_workspace(workspace, nginx_channel.url, ["hb-vocab"])
    workspace.hb("lock", "//env:lock")
    workspace.build_json("//env:env")
    other = faulty_server(channel_dir)
    lock = workspace.root / "env/conda-lock.yml"
    lock.write_text(lock.read_text().replace(nginx_channel.url, other.url))
    out = workspace.hb("build", "--json", "//env:env").stderr
    # the fetch is keyed by sha256 alone: nothing is downloaded from the new location; only the
    # stage re-runs, because conda-meta records where the lock says each package came from
    assert "CondaFetch" not in out and "CondaStage //env:env" in out
    assert [r for r in other.requests() if ".conda" in r] == []


def test_wrong_bytes_are_rejected_and_nothing_is_cached(workspace, channel_dir, faulty_server):
    server = faulty_server(channel_dir, "--corrupt", "hb-vocab")
    env_workspace(workspace, server.url, ["hb-vocab"])
    workspace.hb("lock", "//env:lock")
    lock = (workspace.root / "env/conda-lock.yml").read_text()
    proc = workspace.hb("build", "//env:env", check=False)
    assert proc.returncode == 6, proc.stderr  # download integrity (README's exit codes)
    assert "hb-vocab-2.0.0" in proc.stderr and "has the wrong content: expected sha256" in proc.stderr
    assert server.url in proc.stderr
    expected = next(line.split(":")[1].strip() for line in lock.splitlines() if "sha256:" in line)
    good = (channel_dir / "noarch" / next(p.name for p in (channel_dir / "noarch").glob("hb-vocab-2*"))).read_bytes()
    bad = bytes(b ^ 0x5A for b in good)
    assert hashlib.sha256(good).hexdigest() == expected
    from hermetic_build.digest import digest_bytes
    from hermetic_build.store.local import LocalStore

    store = LocalStore(workspace.cache)
    assert not store.has_blob(digest_bytes(bad)) and not store.has_blob(digest_bytes(good))


def test_dropped_connection_is_retried(workspace, channel_dir, faulty_server):
    server = faulty_server(channel_dir, "--drop-once")
    env_workspace(workspace, server.url, ["hb-vocab"])
    workspace.hb("lock", "//env:lock")
    summary = workspace.build_json("//env:env")
    assert summary["actions"]["executed"] == 2
    gets = [r for r in server.requests() if ".conda" in r]
    assert len(gets) == 2 and gets[0].endswith("200-dropped") and gets[1].endswith(" 200")


def test_tampered_file_package_is_rejected(workspace, channel_dir, tmp_path):
    copy = tmp_path / "chan"
    shutil.copytree(channel_dir, copy)
    env_workspace(workspace, copy.as_uri(), ["hb-vocab"])
    workspace.hb("lock", "//env:lock")
    package = next((copy / "noarch").glob("hb-vocab-2*.conda"))
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 1
    package.write_bytes(bytes(data))
    proc = workspace.hb("build", "//env:env", check=False)
    assert proc.returncode == 6 and "has the wrong content" in proc.stderr and package.as_uri() in proc.stderr


def test_package_in_cas_is_never_downloaded_again(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["hb-vocab", "hb-config"],
                  extra_build='conda_env(name = "env2", lock = ":lock", prefix = "/opt/other")\n')
    workspace.hb("lock", "//env:lock")
    before = len(nginx_channel.requests())
    workspace.build_json("//env:env")
    downloads = len(nginx_channel.requests()) - before
    assert downloads == 2
    summary = workspace.build_json("//env:env2")
    assert summary["actions"]["executed"] == 3  # its own fetch actions and stage, but...
    assert len(nginx_channel.requests()) - before == 2  # ...no new download


def test_two_stages_with_fresh_caches_are_identical(tmp_path, nginx_channel):
    from support import Workspace

    digests = []
    for name in ("a", "b"):
        root = tmp_path / name / "ws"
        root.mkdir(parents=True)
        (root / "hermetic.toml").write_text("")
        ws = Workspace(root, tmp_path / name / "cache")
        env_workspace(ws, nginx_channel.url, DEPS)
        ws.hb("lock", "//env:lock")
        digests.append(ws.build_json("//env:env")["targets"]["//env:env"][0]["digest"])
    assert digests[0] == digests[1]


def test_stage_non_host_platform(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["python 3.11.*", "hb-accel", "hb-vocab"],
                  platforms=("linux-64", "osx-arm64"), env_platform="osx-arm64")
    workspace.hb("lock", "//env:lock")
    tree = _tree(workspace, workspace.build_json("//env:env"))
    assert (tree / "bin/hb-accel").is_file() and (tree / "share/hb-vocab/vocab.txt").is_file()
    meta = json.loads(next((tree / "conda-meta").glob("hb-accel-*.json")).read_text())
    assert meta["subdir"] == "osx-arm64"


def _malicious_package(path, member_name, *, symlink_to=None):
    """A .tar.bz2 conda package with one bad entry."""
    index = json.dumps({"name": "evil", "version": "1.0", "build": "0", "build_number": 0, "depends": [],
                        "subdir": "noarch", "noarch": "generic"}).encode()
    paths = json.dumps({"paths": [], "paths_version": 1}).encode()
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in (("info/index.json", index), ("info/paths.json", paths)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(member_name)
        if symlink_to is not None:
            info.type = tarfile.SYMTYPE
            info.linkname = symlink_to
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize("member, link, message", [
    ("../escape.txt", None, "refusing archive entry '../escape.txt'"),
    ("/etc/evil", None, "refusing archive entry '/etc/evil'"),
    ("share/link", "../../../etc/passwd", "escapes the prefix"),
    ("share/abs", "/etc/passwd", "escapes the prefix"),
])
def test_malicious_archives_are_refused(workspace, tmp_path, member, link, message):
    pkg = tmp_path / "evil-1.0-0.tar.bz2"
    _malicious_package(pkg, member, symlink_to=link)
    sha = hashlib.sha256(pkg.read_bytes()).hexdigest()
    md5 = hashlib.md5(pkg.read_bytes()).hexdigest()
    workspace.write("env/conda-lock.yml", textwrap.dedent(f"""\
        version: 1
        metadata:
          content_hash: {{linux-64: x}}
          channels: []
          platforms: [linux-64]
          sources: [environment.yml]
        package:
        - name: evil
          version: '1.0'
          manager: conda
          platform: linux-64
          dependencies: {{}}
          url: {pkg.as_uri()}
          hash: {{md5: {md5}, sha256: {sha}}}
          category: main
          optional: false
    """))
    workspace.write("env/BUILD.hermetic", 'conda_env(name = "env", lock = "conda-lock.yml")\n')
    proc = workspace.hb("build", "//env:env", check=False)
    assert proc.returncode == 5, proc.stderr
    assert message in proc.stderr


def test_stage_reads_archives_from_the_cas_read_only_and_heals_a_corrupt_one(workspace, nginx_channel, channel_dir):
    """The stage binds the fetched archives read-only from the CAS (no copy per stage). An archive
    blob changed in the cache since it was fetched fails the worker's sha256 check; the blob is then
    verified, removed, fetched again, and the stage re-run: the build succeeds."""
    from blake3 import blake3

    env_workspace(workspace, nginx_channel.url, ["hb-vocab", "hb-config"])
    workspace.hb("lock", "//env:lock")
    workspace.build_json("//env:env")
    package = next((channel_dir / "noarch").glob("hb-vocab-2*.conda")).read_bytes()
    blob = workspace.cache / "cas" / blake3(package).hexdigest()[:2] / blake3(package).hexdigest()
    assert blob.read_bytes() == package
    blob.chmod(0o644)
    data = bytearray(package)
    data[len(data) // 2] ^= 1  # same size, other bytes: only hashing notices
    blob.write_bytes(bytes(data))
    build = workspace.root / "env/BUILD.hermetic"
    build.write_text(build.read_text().replace("platform = 'linux-64')", "platform = 'linux-64', prefix = '/opt/other')"))
    before = len(nginx_channel.requests())
    proc = workspace.hb("build", "--json", "//env:env")
    downloads = [r for r in nginx_channel.requests()[before:] if "hb-vocab" in r]
    assert len(downloads) == 1, proc.stderr  # fetched again, once
    assert "could not be read" in proc.stderr  # found by the stage, which re-ran its producer
    assert blob.read_bytes() == package
    tree = workspace.root / json.loads(proc.stdout)["targets"]["//env:env"][0]["path"]
    assert (tree / "conda-meta").is_dir() and any((tree / "conda-meta").glob("hb-vocab-*.json"))


@pytest.mark.parametrize("prefix, why", [
    ("opt/env", "it must be an absolute path below /"),
    ("/", "it must be an absolute path below /"),
    ("/opt/../etc", "'..' component (write it normalised, like /opt/env)"),
    ("/opt/env/", "empty, '.' or '..' component"),
    ("/opt/a\\nb", "control character"),
    ("/" + "p" * 255, "it is longer than 255 bytes, conda's limit"),
])
def test_a_prefix_that_cannot_hold_an_environment_is_an_analysis_error(workspace, prefix, why):
    """The prefix becomes the paths of image layers and replaces placeholders in package files."""
    workspace.write("p/conda-linux-64.lock", "@EXPLICIT\n")
    workspace.write("p/BUILD.hermetic", f'conda_env(name = "e", lock = "conda-linux-64.lock", prefix = "{prefix}")\n')
    proc = workspace.hb("aquery", "//p:e", check=False)
    assert proc.returncode == 4 and "analysis error: p/BUILD.hermetic:1: //p:e: prefix" in proc.stderr, proc.stderr
    assert why in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
