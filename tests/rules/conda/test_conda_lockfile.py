"""Adopting lock files made by conda-lock's own CLI: the lock is the source of truth."""

import hashlib
import json
import random

import yaml

REAL_NAMES = ["python", "numpy", "scipy", "pandas", "pytorch", "libblas", "libcblas", "liblapack", "openssl",
              "libzlib", "ca-certificates", "tzdata", "libffi", "ncurses", "readline", "sqlite", "tk", "xz",
              "bzip2", "libgcc-ng", "libstdcxx-ng", "libgomp", "_openmp_mutex", "pip", "setuptools", "wheel",
              "tokenizers", "transformers", "safetensors", "huggingface_hub", "regex", "tqdm", "pyyaml",
              "requests", "urllib3", "idna", "certifi", "charset-normalizer", "filelock", "fsspec", "sympy",
              "networkx", "jinja2", "markupsafe", "mpmath", "typing_extensions", "packaging", "libuv", "icu",
              "libxml2", "libiconv", "zstd", "lz4-c", "snappy", "arrow-cpp", "pyarrow", "libprotobuf", "re2"]


def realistic_lock(n_linux=320, n_osx=280, n_pip=15, seed=7) -> dict:
    """A conda-lock v1 file shaped like what `conda-lock lock` writes for a large ML environment."""
    rng = random.Random(seed)
    names = REAL_NAMES + [f"lib-synthetic-{i:03d}" for i in range(400)]
    packages = []
    for platform, count, subdir_pool in (("linux-64", n_linux, ["linux-64", "noarch"]),
                                         ("osx-arm64", n_osx, ["osx-arm64", "noarch"])):
        for name in names[:count]:
            subdir = rng.choice(subdir_pool)
            version = f"{rng.randint(0, 5)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
            build = f"h{rng.getrandbits(28):07x}_{rng.randint(0, 3)}"
            fn = f"{name}-{version}-{build}.{'conda' if rng.random() < 0.8 else 'tar.bz2'}"
            digest = hashlib.sha256(f"{platform}/{fn}".encode()).hexdigest()
            packages.append({
                "name": name, "version": version, "manager": "conda", "platform": platform,
                "dependencies": {d: ">=1" for d in rng.sample(REAL_NAMES, 3) if d != name},
                "url": f"https://conda.anaconda.org/conda-forge/{subdir}/{fn}",
                "hash": {"md5": hashlib.md5(fn.encode()).hexdigest(), "sha256": digest},
                "category": "main", "optional": False,
            })
    for i in range(n_pip):
        packages.append({
            "name": f"pypi-only-{i}", "version": "1.0.0", "manager": "pip", "platform": "linux-64",
            "dependencies": {}, "url": f"https://files.pythonhosted.org/packages/pypi_only_{i}-1.0.0-py3-none-any.whl",
            "hash": {"sha256": hashlib.sha256(str(i).encode()).hexdigest()}, "category": "main", "optional": False,
        })
    return {
        "version": 1,
        "metadata": {
            "content_hash": {"linux-64": "a" * 64, "osx-arm64": "b" * 64},
            "channels": [{"url": "conda-forge", "used_env_vars": []}],
            "platforms": ["linux-64", "osx-arm64"], "sources": ["environment.yml"],
        },
        "package": packages,
    }


def test_large_lock_gives_one_fetch_per_package_per_platform(workspace):
    data = realistic_lock(n_pip=0)
    workspace.write("env/conda-lock.yml", yaml.safe_dump(data, sort_keys=False))
    workspace.write("env/BUILD.hermetic", """\
        conda_env(name = "linux", lock = "conda-lock.yml", platform = "linux-64")
        conda_env(name = "mac", lock = "conda-lock.yml", platform = "osx-arm64")
    """)
    for label, expected in (("//env:linux", 320), ("//env:mac", 280)):
        actions = json.loads(workspace.hb("aquery", "--json", label).stdout)
        fetches = [a for a in actions if a["mnemonic"] == "CondaFetch"]
        assert len(fetches) == expected
        assert len({a["params"]["sha256"] for a in fetches}) == expected
        assert [a["mnemonic"] for a in actions].count("CondaStage") == 1
        stage = next(a for a in actions if a["mnemonic"] == "CondaStage")
        assert len(stage["inputs"]) == expected
        assert stage["platform"] == ("osx-arm64" if label.endswith("mac") else "linux-64")


def test_pip_packages_in_an_adopted_lock_are_fetched_by_sha256(workspace):
    data = realistic_lock(n_linux=20, n_osx=5, n_pip=3)
    workspace.write("env/conda-lock.yml", yaml.safe_dump(data))
    workspace.write("env/BUILD.hermetic", 'conda_env(name = "env", lock = "conda-lock.yml")\n')
    actions = json.loads(workspace.hb("aquery", "--json", "//env:env").stdout)
    fetches = {a["params"]["filename"]: a["params"]["sha256"] for a in actions if a["mnemonic"] == "WheelFetch"}
    pinned = {p["url"].rsplit("/", 1)[1]: p["hash"]["sha256"] for p in data["package"] if p["manager"] == "pip"}
    assert fetches == pinned
    stage = next(a for a in actions if a["mnemonic"] == "CondaStage")
    assert [w["name"] for w in stage["params"]["wheels"]] == ["pypi-only-0", "pypi-only-1", "pypi-only-2"]
    python = next(p for p in data["package"] if p["name"] == "python" and p["platform"] == "linux-64")
    assert stage["params"]["python"] == ".".join(python["version"].split(".")[:2])  # its site-packages


def test_unknown_platform_is_a_clear_error(workspace):
    workspace.write("env/conda-lock.yml", yaml.safe_dump(realistic_lock(n_linux=5, n_osx=5, n_pip=0)))
    workspace.write("env/BUILD.hermetic", 'conda_env(name = "env", lock = "conda-lock.yml", platform = "win-64")\n')
    proc = workspace.hb("build", "//env:env", check=False)
    assert proc.returncode == 4 and "no conda packages for platform 'win-64'" in proc.stderr
    assert "env/BUILD.hermetic:1" in proc.stderr


def test_a_package_file_name_is_the_urls_last_path_component():
    """One way to name a locked file (the fetch, the stage and the checks agree): the path's last
    component, without query or fragment (which the lock reader refuses anyway)."""
    from rules.conda.lockfile import LockedPackage, LockedWheel

    base = "https://x.invalid/linux-64/pkg-a-1.0-h_0.conda"
    for url in (base, base + "#/pkg-b-1.0-h_0.conda", base + "?x=/pkg-b-1.0-h_0.conda"):
        assert LockedPackage("pkg-a", "1.0", "h_0", url, "0" * 64, None, "linux-64").filename == "pkg-a-1.0-h_0.conda"
    wheel = LockedWheel("six", "1.16.0", "https://x.invalid/six-1.16.0-py2.py3-none-any.whl#x/y.whl", "0" * 64, "linux-64")
    assert wheel.filename == "six-1.16.0-py2.py3-none-any.whl"
