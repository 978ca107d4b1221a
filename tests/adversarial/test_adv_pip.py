"""`hb lock` of a pip: section against hostile indexes and find-links pages on 127.0.0.1 (a real
server, the real `hb`, the real uv): what an index page says is outside data. A page may name a
wheel on another host, never a file of the machine that locks (uv follows `file://` links of an
http page, reads and hashes the local file, and wrote its URL into the lock, which `hb build` then
opened)."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from support import VPKGS, FaultyServer, Nginx, env_workspace


def _python_channel(root: Path) -> None:
    """A channel whose only package is a python 3.11 record (hb lock solves; it fetches nothing)."""
    record = {"name": "python", "version": "3.11.0", "build": "0", "build_number": 0, "depends": [],
              "subdir": "linux-64", "sha256": hashlib.sha256(b"python").hexdigest(),
              "md5": hashlib.md5(b"python").hexdigest(), "size": 10}
    for subdir, packages in (("linux-64", {"python-3.11.0-0.conda": record}), ("noarch", {})):
        (root / subdir).mkdir(parents=True)
        (root / subdir / "repodata.json").write_text(json.dumps(
            {"info": {"subdir": subdir}, "repodata_version": 2, "packages": {}, "packages.conda": packages}))


def wheel(directory: Path, name: str, version: str, requires=()) -> tuple[str, str]:
    """(file name, sha256) of a pure-Python wheel of `name` written into `directory`."""
    filename = f"{name}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                                      for r in requires)
    files = {f"{name}/__init__.py": b"VALUE = 1\n",
             f"{name}-{version}.dist-info/METADATA": metadata.encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
                     f"{len(d)}\n" for p, d in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(directory / filename, "w") as z:
        for path, data in [*files.items(), (f"{name}-{version}.dist-info/RECORD", record.encode())]:
            z.writestr(zipfile.ZipInfo(path, (1980, 1, 1, 0, 0, 0)), data)
    return filename, hashlib.sha256((directory / filename).read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path, workspace):
    """lock(pages, pip_lines): serve `pages` ({path: text}) and a python channel on 127.0.0.1, lock an
    environment whose pip: section is `pip_lines` ({url} in a line: the pages' server)."""
    servers = []

    def lock(pages: dict[str, str], pip_lines: list[str]):
        _python_channel(tmp_path / "channel")
        channel = FaultyServer(tmp_path / "channel", tmp_path / "channel-server")
        for path, text in pages.items():
            (tmp_path / "pages" / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "pages" / path).write_text(text)
        (tmp_path / "pages").mkdir(exist_ok=True)
        index = Nginx(tmp_path / "pages", tmp_path / "pages-server")
        servers.extend([channel, index])
        env_workspace(workspace, channel.url, ["python 3.11.*"], virtual_packages={"linux-64": VPKGS["linux-64"]})
        workspace.write("env/environment.yml", f"channels: [{channel.url}]\ndependencies:\n  - python 3.11.*\n"
                        "  - pip:\n" + "".join(f"    - {line.format(url=index.url)}\n" for line in pip_lines))
        return index, workspace.hb("lock", "//env:lock", check=False, timeout=180)

    yield lock
    for server in servers:
        server.stop()


@pytest.mark.parametrize("option, page", [("--find-links {url}/links.html", "links.html"),
                                          ("--index-url {url}/simple", "simple/hbevil/index.html")])
def test_an_index_page_cannot_lock_a_file_of_the_locking_machine(served, workspace, tmp_path, option, page):
    filename, sha256 = wheel(tmp_path / "host-files", "hbevil", "1.0")
    link = f'<a href="{(tmp_path / "host-files" / filename).as_uri()}#sha256={sha256}">{filename}</a>\n'
    _, proc = served({page: link}, [option, "hbevil"])
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "file://" in proc.stderr and "hbevil" in proc.stderr and "must be an https or http URL" in proc.stderr, \
        proc.stderr
    assert not (workspace.root / "env/conda-lock.yml").exists()


@pytest.mark.parametrize("setting, flags, expected", [
    # as fast as loopback goes: uv at 10 GB of memory after 25 s before, and growing
    ("uv_max_memory_mb = 200", (), "raise uv_max_memory_mb"),
    # a byte a second: uv (whose timeout is per read) was still waiting 100 s later, and hb with it
    ("uv_timeout_s = 5", ("--drip", "1"), "within 5 s"),
])
def test_an_endless_find_links_page_ends_uv_in_an_error(tmp_path, workspace, setting, flags, expected):
    import subprocess
    import sys
    import time

    from support import free_port, stop, wait_for_http

    _python_channel(tmp_path / "root")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "servers" / "hostile_channel.py"),
                             "--root", str(tmp_path / "root"), "--port", str(port), "--endless", "links.html", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/noarch/repodata.json", proc)
        (workspace.root / "hermetic.toml").write_text(f"[conda]\n{setting}\n")
        env_workspace(workspace, url, ["python 3.11.*"], virtual_packages={"linux-64": VPKGS["linux-64"]})
        workspace.write("env/environment.yml", f"channels: [{url}]\ndependencies:\n  - python 3.11.*\n  - pip:\n"
                        f"    - --find-links {url}/links.html\n    - hbevil\n")
        started = time.monotonic()
        result = workspace.hb("lock", "//env:lock", check=False, timeout=150)
        assert result.returncode == 4, result.stdout + result.stderr
        assert time.monotonic() - started < 60
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert not (workspace.root / "env/conda-lock.yml").exists()
    finally:
        stop(proc)


def test_a_requirements_file_with_hashes_locks_no_wheel_it_does_not_hash(served, workspace, tmp_path):
    """pip-compile --generate-hashes writes every package with its hashes, and pip installs such a file
    in hash-checking mode: a package that no --hash pins (a dependency the index's metadata adds) is
    refused. hb locked it unchecked: the hashes pinned the named wheels and nothing else."""
    pkg, pkg_sha256 = wheel(tmp_path / "pages/files", "hbpkg", "1.0", ["hbdep"])
    dep, _ = wheel(tmp_path / "pages/files", "hbdep", "1.0")
    pages = {f"simple/{name}/index.html": f'<a href="../../files/{file}">{file}</a>\n'
             for name, file in (("hbpkg", pkg), ("hbdep", dep))}
    workspace.write("env/requirements.txt", f"hbpkg==1.0 \\\n    --hash=sha256:{pkg_sha256}\n")
    _, proc = served(pages, ["--index-url {url}/simple", "-r requirements.txt"])
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "hbdep 1.0" in proc.stderr and "no --hash" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (workspace.root / "env/conda-lock.yml").exists()
