"""`hb lock` with py-rattler and conda-lock's file formats."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
from conda_lock.lockfile import parse_conda_lock_file

from support import env_workspace


def _lock(ws):
    return parse_conda_lock_file(ws.root / "env" / "conda-lock.yml")


def _by_platform(lock):
    out = {}
    for p in lock.package:
        out.setdefault(p.platform, {})[p.name] = p
    return out


def test_lock_two_platforms_over_http(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["python 3.11.*", "nlp-tok", "hb-accel", "hb-vocab >=2"],
                  platforms=("linux-64", "osx-arm64"))
    proc = workspace.hb("lock", "//env:lock")
    assert "wrote env/conda-lock.yml" in proc.stdout and "wrote env/conda-osx-arm64.lock" in proc.stdout
    lock = _lock(workspace)
    by_platform = _by_platform(lock)
    assert set(by_platform) == {"linux-64", "osx-arm64"}
    assert set(by_platform["linux-64"]) == {"python", "nlp-tok", "hb-accel", "hb-vocab", "hb-config"}
    assert by_platform["osx-arm64"]["hb-accel"].url.endswith(".conda") and "/osx-arm64/" in by_platform["osx-arm64"]["hb-accel"].url
    assert by_platform["linux-64"]["hb-vocab"].version == "2.0.0"
    assert all(p.url.startswith(nginx_channel.url) and len(p.hash.sha256) == 64 for p in lock.package)
    assert set(lock.metadata.content_hash) == {"linux-64", "osx-arm64"}
    explicit = (workspace.root / "env" / "conda-linux-64.lock").read_text()
    assert "@EXPLICIT" in explicit and explicit.count(nginx_channel.url) == 5
    assert workspace.hb("lock", "--check", "//env:lock").returncode == 0


def test_a_spec_that_names_its_channel_comes_from_that_channel(workspace, nginx_channel, channel_dir):
    """`chan::pkg` (`pytorch::pytorch` in real files) comes from the channel it names, also where the
    first channel has it too: it used to lose its channel and come from the first."""
    env_workspace(workspace, nginx_channel.url, ["hb-config"])
    workspace.write("env/environment.yml", f"channels:\n  - {nginx_channel.url}\n  - {channel_dir.as_uri()}\n"
                    f"dependencies:\n  - hb-config\n  - {channel_dir.as_uri()}::hb-vocab\n")
    workspace.hb("lock", "//env:lock")
    by_name = _by_platform(_lock(workspace))["linux-64"]
    assert by_name["hb-vocab"].url.startswith(channel_dir.as_uri() + "/"), by_name["hb-vocab"].url
    assert by_name["hb-config"].url.startswith(nginx_channel.url)
    assert workspace.hb("lock", "--check", "//env:lock").returncode == 0


def test_cuda_build_chosen_only_with_declared_cuda(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["hb-accel"], virtual_packages={"linux-64": ["__unix"]})
    workspace.hb("lock", "//env:lock")
    assert _by_platform(_lock(workspace))["linux-64"]["hb-accel"].build.startswith("cpu")
    env_workspace(workspace, nginx_channel.url, ["hb-accel"], virtual_packages={"linux-64": ["__unix", "__cuda=12.4"]})
    workspace.hb("lock", "//env:lock")
    assert _by_platform(_lock(workspace))["linux-64"]["hb-accel"].build.startswith("cuda12")
    env_workspace(workspace, nginx_channel.url, ["hb-accel"], virtual_packages={"linux-64": ["__unix", "__cuda=11.8"]})
    workspace.hb("lock", "//env:lock")
    assert _by_platform(_lock(workspace))["linux-64"]["hb-accel"].build.startswith("cpu")


def test_unsatisfiable_spec_explains(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["hb-vocab >=3"])
    proc = workspace.hb("lock", "//env:lock", check=False)
    assert proc.returncode == 4
    assert "//env:lock: cannot solve the environment for linux-64" in proc.stderr
    assert "hb-vocab" in proc.stderr and ">=3" in proc.stderr


def test_stale_lock_detected_and_explained(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["hb-vocab"])
    workspace.hb("lock", "//env:lock")
    workspace.hb("build", "//env:env")
    workspace.write("env/environment.yml", (workspace.root / "env/environment.yml").read_text() + "  - hb-config\n")
    proc = workspace.hb("build", "//env:env", check=False)
    assert proc.returncode == 4
    assert "env/conda-lock.yml is stale for linux-64: the dependencies for linux-64 changed" in proc.stderr
    assert "hb lock //env:lock" in proc.stderr
    check = workspace.hb("lock", "--check", "//env:lock", check=False)
    assert check.returncode == 1 and "linux-64: the dependencies for linux-64 changed" in check.stdout
    workspace.hb("lock", "//env:lock")
    assert workspace.hb("lock", "--check", "//env:lock").returncode == 0
    workspace.hb("build", "//env:env")


def test_build_file_change_reanalyses_without_conda_lock_until_the_environment_changes(workspace, nginx_channel):
    """The lock's freshness (conda-lock's content hash of environment.yml) is kept between runs under a
    digest of its inputs: a BUILD change re-runs analysis without importing conda-lock; changed
    virtual packages or an edited environment.yml are still found stale."""
    import os
    import subprocess
    import sys

    env_workspace(workspace, nginx_channel.url, ["hb-vocab"], virtual_packages={"linux-64": ["__unix"]})
    workspace.hb("lock", "//env:lock")
    workspace.hb("build", "//env:env")
    build = workspace.root / "env/BUILD.hermetic"
    text = build.read_text()
    build.write_text(text.replace("platform = 'linux-64')", "platform = 'linux-64', prefix = '/opt/b')"))
    assert build.read_text() != text

    def hb_build():
        return subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "//env:env"], cwd=workspace.root,
                              env={**workspace.env(), "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True,
                              timeout=300)

    proc = hb_build()
    assert proc.returncode == 0, proc.stderr
    assert "CondaStage //env:env" in proc.stderr
    imported = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [line for line in imported if "conda_lock" in line]
    build.write_text(build.read_text().replace("{'linux-64': ['__unix']}", "{'linux-64': ['__unix', '__cuda=12.4']}"))
    stale = workspace.hb("build", "//env:env", check=False)
    assert stale.returncode == 4 and "the virtual packages for linux-64 changed" in stale.stderr, stale.stderr
    build.write_text(build.read_text().replace("'__unix', '__cuda=12.4'", "'__unix'"))
    workspace.hb("build", "//env:env")
    workspace.write("env/environment.yml", (workspace.root / "env/environment.yml").read_text() + "  - hb-config\n")
    stale = workspace.hb("build", "//env:env", check=False)
    assert stale.returncode == 4 and "the dependencies for linux-64 changed" in stale.stderr, stale.stderr
    assert os.listdir(next((workspace.cache / "workspaces").iterdir()) / "memo")


def test_a_fresh_lock_is_checked_without_conda_lock_in_a_cold_build(workspace, nginx_channel, tmp_path):
    """`hb lock` records an inputs key per platform (rules/conda/lockkey.py); a build with an empty
    cache computes the same key from the conda_lock target (platforms, channels, virtual packages with
    a GPU variant's __cuda, the environment and an extra environment file) and never imports
    conda-lock; `hb lock --check` still finds the lock fresh, and a changed environment stale."""
    import subprocess
    import sys

    from support import Workspace

    env_workspace(workspace, nginx_channel.url, ["hb-accel", "hb-vocab"], platforms=("linux-64", "osx-arm64"),
                  extra_build=textwrap.dedent("""\
                      conda_lock(
                          name = "gpu-lock",
                          extra_environments = ["environment.extra.yml"],
                          platforms = ["linux-64"],
                          virtual_packages = {"linux-64": ["__unix", "__glibc=2.36"]},
                          cuda = "12.4",
                          lockfile = "conda-lock.gpu.yml",
                      )
                      conda_env(name = "gpu-env", lock = ":gpu-lock")
                  """))
    workspace.write("env/environment.extra.yml", f"channels:\n  - {nginx_channel.url}\ndependencies:\n  - hb-config\n")
    workspace.hb("lock", "//env:lock")
    workspace.hb("lock", "//env:gpu-lock")
    for name, platforms in (("conda-lock.yml", {"linux-64", "osx-arm64"}), ("conda-lock.gpu.yml", {"linux-64"})):
        custom = parse_conda_lock_file(workspace.root / "env" / name).metadata.custom_metadata
        assert {k.removeprefix("hb.inputs.") for k in custom if k.startswith("hb.inputs.")} == platforms, custom
    assert workspace.hb("lock", "--check", "//env:lock", "//env:gpu-lock").returncode == 0

    def cold_build(*labels, cache):
        return subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", *labels], cwd=workspace.root,
                              env={**Workspace(workspace.root, cache).env(), "PYTHONPROFILEIMPORTTIME": "1"},
                              capture_output=True, text=True, timeout=300)

    proc = cold_build("//env:env", "//env:gpu-env", cache=tmp_path / "cold")
    assert proc.returncode == 0, proc.stderr
    assert "CondaStage //env:env" in proc.stderr and "CondaStage //env:gpu-env" in proc.stderr
    imported = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [line for line in imported if "conda_lock" in line]
    workspace.write("env/environment.extra.yml", f"channels:\n  - {nginx_channel.url}\ndependencies:\n  - nlp-tok\n")
    stale = cold_build("//env:gpu-env", cache=tmp_path / "cold-2")
    assert stale.returncode == 4 and "the dependencies for linux-64 changed" in stale.stderr, stale.stderr[-2000:]
    assert "conda_lock" in stale.stderr  # the fallback: conda-lock computed the content hash


def test_virtual_package_change_makes_lock_stale(workspace, nginx_channel):
    env_workspace(workspace, nginx_channel.url, ["hb-accel"], virtual_packages={"linux-64": ["__unix"]})
    workspace.hb("lock", "//env:lock")
    env_workspace(workspace, nginx_channel.url, ["hb-accel"], virtual_packages={"linux-64": ["__unix", "__cuda=12.4"]})
    check = workspace.hb("lock", "--check", "//env:lock", check=False)
    assert check.returncode == 1 and "the virtual packages for linux-64 changed" in check.stdout


def _pip_env(ws, channel_url, pip_lines, platforms=("linux-64",)):
    env_workspace(ws, channel_url, ["hb-vocab"], platforms=platforms)
    ws.write("env/environment.yml", f"channels: [{channel_url}]\ndependencies:\n  - python 3.11.*\n  - nlp-tok\n"
                                    "  - pip:\n" + "".join(f"      - {line}\n" for line in pip_lines))


def _pip_entries(ws):
    return {p.name: p for p in _lock(ws).package if p.manager == "pip"}


def test_pip_section_is_locked_with_uv_fetched_and_installed(workspace, nginx_channel):
    """PyPI is reachable: uv resolves wheels for the locked python 3.11 and __glibc=2.36; conda-lock's
    own parser reads the result; --check, --update and staleness cover the pip entries."""
    from support import run_in_prefix

    _pip_env(workspace, nginx_channel.url, ["idna <3.10", "nlp-tok"])  # nlp-tok: the conda package
    workspace.hb("lock", "//env:lock", timeout=300)
    pip = _pip_entries(workspace)
    assert set(pip) == {"idna"}  # nlp-tok is provided by conda: not installed twice
    idna = pip["idna"]
    assert idna.version == "3.9" and idna.url.endswith("-py3-none-any.whl") and len(idna.hash.sha256) == 64
    assert idna.url.startswith("https://files.pythonhosted.org/")
    explicit = (workspace.root / "env/conda-linux-64.lock").read_text()
    assert f"# pip idna @ {idna.url}#sha256={idna.hash.sha256}" in explicit
    assert workspace.hb("lock", "--check", "//env:lock").returncode == 0

    summary = workspace.build_json("//env:env")
    tree = workspace.root / summary["targets"]["//env:env"][0]["path"]
    proc = run_in_prefix(tree, "/opt/env/bin/python", "-c", "import idna, sys; print(idna.__file__)")
    assert proc.stdout.strip() == "/opt/env/lib/python3.11/site-packages/idna/__init__.py", proc.stderr
    installer = tree / "lib/python3.11/site-packages/idna-3.9.dist-info/INSTALLER"
    assert installer.read_text() == "hb\n"

    # loosening the pin makes the lock stale; --update of another package keeps idna where it was
    _pip_env(workspace, nginx_channel.url, ["idna", "nlp-tok"])
    check = workspace.hb("lock", "--check", "//env:lock", check=False)
    assert check.returncode == 1 and "the pip requirements for linux-64 changed" in check.stdout
    workspace.hb("lock", "--update", "hb-vocab", "//env:lock", timeout=300)
    assert _pip_entries(workspace)["idna"].version == "3.9"
    workspace.hb("lock", "--update", "idna", "//env:lock", timeout=300)
    assert _pip_entries(workspace)["idna"].version != "3.9"


def _simple_index(root, name: str, version: str, source: bytes):
    """A PEP 503 simple index under root/simple holding one pure-Python wheel of `name` (files/)."""
    import base64
    import hashlib
    import zipfile

    wheel = f"{name}-{version}-py3-none-any.whl"
    files = {f"{name}/__init__.py": source,
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hb-test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
                     for p, d in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    (root / "files").mkdir(parents=True)
    (root / "simple" / name).mkdir(parents=True)
    with zipfile.ZipFile(root / "files" / wheel, "w") as z:
        for path, data in [*files.items(), (f"{name}-{version}.dist-info/RECORD", record.encode())]:
            z.writestr(zipfile.ZipInfo(path, (1980, 1, 1, 0, 0, 0)), data)
    sha256 = hashlib.sha256((root / "files" / wheel).read_bytes()).hexdigest()
    (root / "simple" / name / "index.html").write_text(f'<a href="../../files/{wheel}#sha256={sha256}">{wheel}</a>\n')
    (root / "simple" / "index.html").write_text(f'<a href="{name}/">{name}</a>\n')
    return sha256


def test_pip_requirements_resolve_from_the_indexes_the_lock_target_names(workspace, nginx_channel, tmp_path):
    """ML teams take wheels from indexes beside PyPI (PyTorch's CUDA wheels from download.pytorch.org, a
    company index): conda_lock(pip_index_url = ..., pip_extra_index_urls = [...]) has uv resolve from
    them; the lock pins the index's wheel by URL and sha256, hb build fetches it from there, and a
    changed index makes the lock stale. Here a real PEP 503 index served by nginx, holding a package
    PyPI does not have."""
    from support import Nginx, run_in_prefix

    sha256 = _simple_index(tmp_path / "index", "hbindexpkg", "1.2", b"VALUE = 'from the private index'\n")
    index = Nginx(tmp_path / "index", tmp_path / "nginx-index")
    try:
        _pip_env(workspace, nginx_channel.url, ["hbindexpkg ==1.2"])
        build = (workspace.root / "env/BUILD.hermetic").read_text()
        workspace.write("env/BUILD.hermetic", build.replace('    name = "lock",\n',
                                                             f'    name = "lock",\n    pip_index_url = "{index.url}/simple",\n'))
        workspace.hb("lock", "//env:lock", timeout=300)
        entry = _pip_entries(workspace)["hbindexpkg"]
        assert entry.url == f"{index.url}/files/hbindexpkg-1.2-py3-none-any.whl" and entry.hash.sha256 == sha256
        assert workspace.hb("lock", "--check", "//env:lock").returncode == 0

        summary = workspace.build_json("//env:env")
        tree = workspace.root / summary["targets"]["//env:env"][0]["path"]
        proc = run_in_prefix(tree, "/opt/env/bin/python", "-c", "import hbindexpkg; print(hbindexpkg.VALUE)")
        assert proc.stdout.strip() == "from the private index", proc.stderr

        # the index is an input of the lock: another one makes it stale, for --check and for hb build
        workspace.write("env/BUILD.hermetic", build.replace(
            '    name = "lock",\n', f'    name = "lock",\n    pip_extra_index_urls = ["{index.url}/simple"],\n'))
        check = workspace.hb("lock", "--check", "//env:lock", check=False)
        assert check.returncode == 1 and "the pip indexes changed" in check.stdout, check.stdout
        stale = workspace.hb("build", "//env:env", check=False)
        assert stale.returncode == 4 and "the pip indexes changed" in stale.stderr, stale.stderr[-2000:]
        workspace.write("env/BUILD.hermetic", build.replace(
            '    name = "lock",\n', '    name = "lock",\n    pip_index_url = "https://u:pw@example.org/simple",\n'))
        refused = workspace.hb("build", "//env:env", check=False)
        assert refused.returncode == 4 and "written with credentials" in refused.stderr and "pw" not in refused.stderr
    finally:
        index.stop()


def _locked_built_and_imported(workspace, name: str, url: str, sha256: str, value: str) -> None:
    """hb lock pins the wheel `name` at `url` by `sha256`, --check finds the lock fresh, and in the env hb
    builds from it, `import name` gives `name.VALUE == value`."""
    from support import run_in_prefix

    workspace.hb("lock", "//env:lock", timeout=300)
    entry = _pip_entries(workspace)[name]
    assert entry.url == url and entry.hash.sha256 == sha256
    assert workspace.hb("lock", "--check", "//env:lock").returncode == 0
    summary = workspace.build_json("//env:env")
    tree = workspace.root / summary["targets"]["//env:env"][0]["path"]
    proc = run_in_prefix(tree, "/opt/env/bin/python", "-c", f"import {name}; print({name}.VALUE)")
    assert proc.stdout.strip() == value, proc.stderr


def test_index_lines_of_the_environment_file_are_the_indexes_the_lock_resolves_from(workspace, nginx_channel,
                                                                                    tmp_path):
    """An environment.yml written for `conda env create` names its index in the pip: section
    (`--index-url`, `--extra-index-url`); hb locks from it as from the target's attributes: the wheel
    comes from that index, --check and hb build find the lock fresh, and another index makes it stale."""
    from support import Nginx

    sha256 = _simple_index(tmp_path / "index", "hbindexpkg", "1.3", b"VALUE = 'from the index line'\n")
    index = Nginx(tmp_path / "index", tmp_path / "nginx-index")
    try:
        _pip_env(workspace, nginx_channel.url, [f"--index-url {index.url}/simple", "hbindexpkg ==1.3"])
        _locked_built_and_imported(workspace, "hbindexpkg", f"{index.url}/files/hbindexpkg-1.3-py3-none-any.whl",
                                   sha256, "from the index line")

        _pip_env(workspace, nginx_channel.url, [f"--extra-index-url {index.url}/simple", "hbindexpkg ==1.3"])
        check = workspace.hb("lock", "--check", "//env:lock", check=False)
        assert check.returncode == 1 and "the pip indexes changed" in check.stdout, check.stdout
    finally:
        index.stop()


def test_a_requirements_file_the_pip_section_names_is_locked_and_its_edits_make_the_lock_stale(workspace,
                                                                                                 nginx_channel,
                                                                                                 tmp_path):
    """`- -r requirements.txt` in the pip: section: its requirements (and its index line) are locked;
    the file is an input of the lock like environment.yml: editing it makes `hb lock --check` and
    `hb build` (whose analysis tracks it) say the lock is stale. `-e .` is left out with a warning."""
    sha256 = _simple_index(tmp_path / "index", "hbindexpkg", "1.3", b"VALUE = 'from requirements.txt'\n")
    from support import Nginx

    index = Nginx(tmp_path / "index", tmp_path / "nginx-index")
    try:
        _pip_env(workspace, nginx_channel.url, ["-e .", "-r requirements.txt"])
        pinned = f"--index-url {index.url}/simple\nhbindexpkg ==1.3 \\\n    --hash=sha256:{sha256}  # pinned\n"
        workspace.write("env/requirements.txt", pinned)
        locked = workspace.hb("lock", "//env:lock", timeout=300)
        assert "warning: env/environment.yml:6: local source '-e .'" in locked.stdout + locked.stderr
        entry = _pip_entries(workspace)["hbindexpkg"]
        assert entry.url == f"{index.url}/files/hbindexpkg-1.3-py3-none-any.whl" and entry.hash.sha256 == sha256
        assert workspace.hb("lock", "--check", "//env:lock").returncode == 0
        workspace.build_json("//env:env")

        # another --hash: the lock is stale, and the wheel the index serves is not one it allows
        workspace.write("env/requirements.txt", pinned.replace(sha256, "0" * 64))
        check = workspace.hb("lock", "--check", "//env:lock", check=False)
        assert check.returncode == 1 and "the pip requirements for linux-64 changed" in check.stdout, check.stdout
        refused = workspace.hb("lock", "//env:lock", check=False, timeout=300)
        assert refused.returncode == 4 and "env/requirements.txt:2" in refused.stderr, refused.stderr[-2000:]
        assert f"(sha256 {sha256}), which the --hash options of 'hbindexpkg ==1.3' do not allow" in refused.stderr

        workspace.write("env/requirements.txt", f"--index-url {index.url}/simple\nhbindexpkg >=1.0\n")
        check = workspace.hb("lock", "--check", "//env:lock", check=False)
        assert check.returncode == 1 and "the pip requirements for linux-64 changed" in check.stdout, check.stdout
        stale = workspace.hb("build", "//env:env", check=False)
        assert stale.returncode == 4 and "is stale for linux-64" in stale.stderr, stale.stderr[-2000:]
    finally:
        index.stop()


def test_a_find_links_page_of_the_pip_section_is_where_its_wheel_is_locked_from(workspace, nginx_channel, tmp_path):
    """`--find-links URL` (PyG's per-CUDA wheels are published only so): uv finds the wheel on that page,
    the lock pins it by URL and sha256, hb build fetches and installs it."""
    from support import Nginx

    sha256 = _simple_index(tmp_path / "links", "hbflpkg", "2.0", b"VALUE = 'from a find-links page'\n")
    wheel = "hbflpkg-2.0-py3-none-any.whl"
    (tmp_path / "links/wheels.html").write_text(f'<a href="files/{wheel}#sha256={sha256}">{wheel}</a>\n')
    page = Nginx(tmp_path / "links", tmp_path / "nginx-links")
    try:
        _pip_env(workspace, nginx_channel.url, [f"--find-links {page.url}/wheels.html", "hbflpkg ==2.0"])
        _locked_built_and_imported(workspace, "hbflpkg", f"{page.url}/files/{wheel}", sha256, "from a find-links page")
    finally:
        page.stop()


def test_pip_entries_carry_their_dependencies_per_platform_and_update_moves_one_pip_package(workspace,
                                                                                            nginx_channel):
    """conda-lock writes each pip package's dependencies (name -> spec); hb reads them from the
    wheels' metadata for each platform's markers. conda-lock's parser and renderers read the result.
    `--update NAME` of a pip package moves it alone."""
    from conda_lock.conda_lock import render_lockfile_for_platform

    both = ("linux-64", "osx-arm64")
    lines = ["anyio ==4.4.0", "idna <3.8", "click <8.2", "keyring ==25.5.0"]
    _pip_env(workspace, nginx_channel.url, lines, platforms=both)
    workspace.hb("lock", "//env:lock", timeout=300)
    lock = _lock(workspace)  # conda-lock's own parser
    pip = {(p.platform, p.name): p for p in lock.package if p.manager == "pip"}
    for platform in both:
        # sniffio and idna always; exceptiongroup and typing-extensions only for python < 3.11 (3.11 locked)
        assert pip[platform, "anyio"].dependencies == {"idna": ">=2.8", "sniffio": ">=1.1"}
        assert pip[platform, "click"].dependencies == {}  # colorama only on Windows
        names = {n for (p, n) in pip if p == platform}
        for (p, _), entry in pip.items():
            if p == platform:
                assert set(entry.dependencies) <= names and list(entry.dependencies) == sorted(entry.dependencies)
    linux, darwin = pip["linux-64", "keyring"].dependencies, pip["osx-arm64", "keyring"].dependencies
    assert {"secretstorage", "jeepney", "importlib-metadata"} <= set(linux)  # sys_platform == "linux"
    assert "secretstorage" not in darwin and "jeepney" not in darwin and "importlib-metadata" in darwin
    assert linux["jeepney"] == ">=0.4.2"

    env_render = "\n".join(render_lockfile_for_platform(lockfile=_lock(workspace), include_dev_dependencies=True,
                                                         extras=None, kind="env", platform="linux-64"))
    anyio = pip["linux-64", "anyio"]
    assert f"      - anyio == 4.4.0 --hash=sha256:{anyio.hash.sha256}" in env_render
    explicit = (workspace.root / "env/conda-linux-64.lock").read_text()
    assert explicit.index("# pip idna @") < explicit.index("# pip anyio @")  # conda-lock's toposort used them

    # loosen two pins: --update click moves click alone, idna (and everything else) stays pinned
    before = {n: p.version for (pl, n), p in pip.items() if pl == "linux-64"}
    _pip_env(workspace, nginx_channel.url, ["anyio ==4.4.0", "idna", "click", "keyring ==25.5.0"], platforms=both)
    check = workspace.hb("lock", "--check", "//env:lock", check=False)
    assert check.returncode == 1 and "the pip requirements for linux-64 changed" in check.stdout
    workspace.hb("lock", "--update", "click", "//env:lock", timeout=300)
    after = {p.name: p.version for p in _lock(workspace).package if p.manager == "pip" and p.platform == "linux-64"}
    assert after.pop("click") != before.pop("click")
    assert after == before
    assert workspace.hb("lock", "--check", "//env:lock").returncode == 0


def test_sdist_only_and_conflicting_pip_requirements_are_errors_at_their_line(workspace, nginx_channel):
    _pip_env(workspace, nginx_channel.url, ["idna", "pyperclip ==1.8.2"])  # 1.8.2: an sdist only
    proc = workspace.hb("lock", "//env:lock", check=False, timeout=300)
    assert proc.returncode == 4
    assert "env/environment.yml:7: //env:lock: cannot lock the pip requirements for linux-64" in proc.stderr
    assert "pyperclip" in proc.stderr and "hb installs wheels only" in proc.stderr
    _pip_env(workspace, nginx_channel.url, ["nlp-tok ==0.1"])
    proc = workspace.hb("lock", "//env:lock", check=False, timeout=300)
    assert proc.returncode == 4
    assert "env/environment.yml:6: //env:lock: pip requirement 'nlp-tok ==0.1' conflicts with the conda package" \
        in proc.stderr


def _tiny_recipe(root, name, version):
    path = root / f"{name}-{version}" / "recipe.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(f"""\
        package:
          name: {name}
          version: "{version}"
        build:
          noarch: generic
          script:
            - mkdir -p $PREFIX/share && echo {version} > $PREFIX/share/{name}.txt
    """))
    return path


def _build(recipe, channel):
    from rattler_build import Stage0Recipe

    from rules.conda.channel import index_channel

    Stage0Recipe.from_file(str(recipe)).run_build(output_dir=str(channel), channels=[channel.as_uri()],
                                                  no_build_id=True, no_include_recipe=True)
    shutil.rmtree(channel / "bld", ignore_errors=True)
    index_channel(channel)


def test_update_moves_one_package_and_keeps_the_others(workspace, tmp_path):
    from rules.conda.channel import index_channel

    channel = tmp_path / "chan"
    index_channel(channel)
    recipes = tmp_path / "recipes"
    for name in ("pkg-a", "pkg-b"):
        _build(_tiny_recipe(recipes, name, "1.0"), channel)
    env_workspace(workspace, channel.as_uri(), ["pkg-a", "pkg-b"])
    workspace.hb("lock", "//env:lock")
    assert {n: p.version for n, p in _by_platform(_lock(workspace))["linux-64"].items()} == {"pkg-a": "1.0", "pkg-b": "1.0"}
    for name in ("pkg-a", "pkg-b"):
        _build(_tiny_recipe(recipes, name, "2.0"), channel)
    workspace.hb("lock", "--update", "pkg-a", "//env:lock")
    assert {n: p.version for n, p in _by_platform(_lock(workspace))["linux-64"].items()} == {"pkg-a": "2.0", "pkg-b": "1.0"}
    workspace.hb("lock", "//env:lock")
    assert {n: p.version for n, p in _by_platform(_lock(workspace))["linux-64"].items()} == {"pkg-a": "2.0", "pkg-b": "2.0"}


def test_lock_with_channel_label_builds_the_channel(workspace, tmp_path):
    from support import REPO

    shutil.copytree(REPO / "examples" / "channel", workspace.root / "channel")
    env_workspace(workspace, "//channel:test-channel", ["hb-hello"])
    workspace.hb("lock", "//env:lock", timeout=600)
    lock = _lock(workspace)
    assert lock.metadata.channels[0].url == "//channel:test-channel"
    hello = _by_platform(lock)["linux-64"]["hb-hello"]
    assert hello.url.startswith((workspace.root / "hb-out/channel/test-channel/channel").as_uri())
    assert json.loads(workspace.hb("build", "--json", "//env:env").stdout)["actions"]["executed"] == 3


def _one_package_channel(tmp_path) -> Path:
    from rules.conda.channel import index_channel

    channel = tmp_path / "chan"
    index_channel(channel)
    _build(_tiny_recipe(tmp_path / "recipes", "pkg-a", "1.0"), channel)
    return channel


@pytest.mark.parametrize("planted", ["conda-lock.yml", "conda-linux-64.lock"])
def test_a_lock_file_committed_as_a_link_out_of_the_workspace_is_never_written_through(workspace, tmp_path, planted):
    """A checkout chooses what lies where `hb lock` writes: `env/conda-lock.yml -> ~/.bashrc` had hb
    write its YAML over the user's file (eleventh session). Refused as every source file linking out."""
    env_workspace(workspace, _one_package_channel(tmp_path).as_uri(), ["pkg-a"])
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, workspace.root / "env" / planted)
    proc = workspace.hb("lock", "//env:lock", check=False)
    assert proc.returncode != 0, proc.stderr
    assert f"source file env/{planted} resolves to {victim}, outside the workspace" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


def test_a_lock_file_linked_inside_the_workspace_is_rewritten_where_the_link_points(workspace, tmp_path):
    """A link inside the workspace is followed, as for any source file, and stays a link: the lock is
    written beside the file it points to and renamed over it (never half written)."""
    env_workspace(workspace, _one_package_channel(tmp_path).as_uri(), ["pkg-a"])
    shared = workspace.write("shared/conda-lock.yml", "old\n")
    os.symlink("../shared/conda-lock.yml", workspace.root / "env/conda-lock.yml")
    workspace.hb("lock", "//env:lock")
    assert os.readlink(workspace.root / "env/conda-lock.yml") == "../shared/conda-lock.yml"
    assert "pkg-a" in shared.read_text() and not list((workspace.root / "shared").glob(".*hb-tmp*"))
    assert {n for n in _by_platform(_lock(workspace))["linux-64"]} == {"pkg-a"}
