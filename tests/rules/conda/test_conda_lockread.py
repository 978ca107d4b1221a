"""Adopting the lock files teams already commit (lockread.py): real conda-lock, explicit and pixi locks
from public repositories (tests/data/locks, PROVENANCE), expanded into exactly one fetch action per
package of the chosen platform, counted here independently of hb's reader; and what is refused."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from support import REPO, Workspace

from rules.conda.lockread import LockReadError, read_lock, select

LOCKS = REPO / "tests/data/locks"


def _unified(doc, platform):
    conda, pip = {}, {}
    for p in doc["package"]:
        categories = set(p.get("categories") or ()) | ({p["category"]} if "category" in p else set())
        if p["platform"] != platform or "main" not in (categories or {"main"}):
            continue
        if p.get("manager", "conda") == "conda" and p["name"].startswith("__"):
            continue  # a virtual package conda-lock 1.x wrote: conda-lock install leaves it out
        (pip if p.get("manager", "conda") in ("pip", "pypi") else conda)[p["name"]] = p  # pixi.lock 3: pypi
    bad = sorted(f"pip package {n}" for n, p in pip.items()
                 if not p["url"].split("#")[0].endswith(".whl") or len(_sha256(p.get("hash")) or "") != 64)
    return len(conda), len(pip), bad


def _sha256(value):
    """`hash: {sha256: ..}`, or an older writer's one string `sha256:<hex>` (`''`: none)."""
    return value.get("sha256") if isinstance(value, dict) else (value or "").removeprefix("sha256:")


def _pixi(doc, platform):
    listed = doc["environments"]["default"]["packages"].get(platform, [])
    # pixi.lock 6 and later: `- conda: <url>` / `- pypi: <url>`; 4 and 5: `kind:` with `url:` or `path:`
    described = {}
    for p in doc["packages"]:
        kind = "pypi" if "pypi" in p or p.get("kind") == "pypi" else "conda"
        described[(kind, p.get(kind) or p.get("url") or p.get("path"))] = p
    conda = [p["conda"] for p in listed if "conda" in p]
    pip = [p["pypi"] for p in listed if "pypi" in p]
    bad = sorted(f"pip package {described[('pypi', u)]['name']}" for u in pip
                 if not u.endswith(".whl") or "sha256" not in described[("pypi", u)])
    # a package pixi builds from source (`- conda: .`): no archive to fetch, refused
    bad += sorted(f"conda package {described[('conda', u)]['name']}" for u in conda
                  if not u.startswith(("https://", "http://", "file://")))
    return len(conda), len(pip), bad


@functools.cache
def _document(path: Path):
    """A fixture's YAML, parsed once per run (libyaml where PyYAML has it: the pure-Python parser took
    two minutes for the fixture set's counts)."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def expected(path: Path, platform: str) -> tuple[int, int, list[str]]:
    """(conda packages, wheels, names of pip entries that are not sha256-pinned wheels), read plainly."""
    text = path.read_text()
    if path.name.endswith(".lock") and "@EXPLICIT" in text:
        lines = text.splitlines()
        # conda-lock writes the pip packages of an explicit file as `# pip <name> @ <url>#sha256=<hex>`
        pip = dict(line[len("# pip "):].split(" @ ", 1) for line in lines if line.startswith("# pip "))
        bad = sorted(f"pip package {n}" for n, u in pip.items()
                     if not u.split("#")[0].endswith(".whl") or "#sha256=" not in u)
        return sum(1 for line in lines if line.startswith(("https://", "http://", "file://"))), len(pip), bad
    doc = _document(path)
    return _pixi(doc, platform) if "environments" in doc else _unified(doc, platform)


def platforms_of(path: Path) -> list[str]:
    text = path.read_text()
    if "@EXPLICIT" in text and path.name.endswith(".lock"):
        return [re.search(r"^# platform: (\S+)", text, re.MULTILINE).group(1)]
    doc = _document(path)
    if "environments" in doc:
        return sorted(doc["environments"]["default"]["packages"])
    return list(doc["metadata"]["platforms"])


CASES = [(f.name, p) for f in sorted(LOCKS.iterdir()) if f.name != "PROVENANCE" for p in platforms_of(f)]


def _target(name: str, platform: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{name}--{platform}")


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    root = tmp_path_factory.mktemp("adopt")
    ws = Workspace(root / "ws", root / "cache")
    shutil.copytree(LOCKS, ws.root / "l")
    (ws.root / "hermetic.toml").write_text("")
    rules = [f'conda_env(name = "{_target(n, p)}", lock = "{n}", platform = "{p}", allow_md5 = True)'
             for n, p in CASES]
    # what is refused, left out by name (a pixi project's own `pypi: .`): the rest must still expand
    rules += [f'conda_env(name = "{_target(n, p)}--left", lock = "{n}", platform = "{p}", allow_md5 = True, '
              f'leave_out = {_left_out_names(n, p)!r})' for n, p in CASES if expected(LOCKS / n, p)[2]]
    (ws.root / "l/BUILD.hermetic").write_text("\n".join(rules) + "\n")
    return ws


def test_the_fixture_set_is_real_and_varied():
    provenance = (LOCKS / "PROVENANCE").read_text()
    files = [f for f in LOCKS.iterdir() if f.name != "PROVENANCE"]
    assert len(files) >= 10 and all(f.name in provenance for f in files)
    sizes = [expected(LOCKS / n, p)[0] for n, p in CASES]
    assert sum(s >= 300 for s in sizes) >= 4  # several with hundreds of packages
    assert sum(len(platforms_of(f)) > 1 for f in files) >= 3  # several platforms each
    assert sum(expected(LOCKS / n, p)[1] > 0 for n, p in CASES) >= 4  # several with pip entries


@pytest.mark.parametrize(("name", "platform"), CASES)
def test_each_real_lock_expands_to_one_fetch_per_package_of_its_platform(adopted, name, platform):
    conda, wheels, bad = expected(LOCKS / name, platform)
    proc = adopted.hb("aquery", "--json", f"//l:{_target(name, platform)}", check=False)
    if bad:  # an sdist, an unpinned (git, path) pip entry or a source package of this platform: refused, named, at its line
        assert proc.returncode == 4, proc.stdout[:300]
        assert re.search(rf"^analysis error: l/{re.escape(name)}:\d+: ", proc.stderr, re.MULTILINE), proc.stderr
        assert any(f"{b} " in proc.stderr for b in bad), proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    actions = json.loads(proc.stdout)
    fetches = [a for a in actions if a["mnemonic"] == "CondaFetch"]
    assert len(fetches) == conda
    assert len({a["params"]["filename"] for a in fetches}) == conda
    assert sum(a["mnemonic"] == "WheelFetch" for a in actions) == wheels
    assert {a["platform"] for a in actions} == {platform}  # nothing of another platform


def _left_out_names(name: str, platform: str) -> list[str]:
    """`pypi:NAME` / `conda:NAME` of each refused entry (a lock may pin orjson from both: only the
    refused one is left out)."""
    return sorted({("pypi:" if b.startswith("pip ") else "conda:") + b.split(" ", 2)[2]
                   for b in expected(LOCKS / name, platform)[2]})


LEFT_OUT_CASES = [(n, p) for n, p in CASES if expected(LOCKS / n, p)[2]]


@pytest.mark.parametrize(("name", "platform"), LEFT_OUT_CASES)
def test_what_is_refused_can_be_left_out_by_name_and_the_rest_expands(adopted, name, platform):
    """A pixi project lists its own source as `pypi: .` (editable) in every environment: hb cannot
    install it from the lock, and refused the whole environment. `leave_out` names it (and any other
    package that cannot be adopted); every other package of the platform is fetched as before."""
    conda, wheels, bad = expected(LOCKS / name, platform)
    left_conda = sum(b.startswith("conda package ") for b in bad)
    left_wheels = len(bad) - left_conda
    proc = adopted.hb("aquery", "--json", f"//l:{_target(name, platform)}--left", check=False)
    assert proc.returncode == 0, proc.stderr
    actions = json.loads(proc.stdout)
    fetches = {a["params"]["filename"] for a in actions if a["mnemonic"] == "CondaFetch"}
    assert len(fetches) == conda - left_conda
    assert sum(a["mnemonic"] == "WheelFetch" for a in actions) == wheels - left_wheels
    assert {a["platform"] for a in actions} == {platform}


def test_leave_out_matches_conda_names_exactly_and_pypi_names_as_pep_503_does(tmp_path):
    lock = tmp_path / "conda-lock.yml"
    wheel = "https://files.pythonhosted.org/packages/six-1.16.0-py2.py3-none-any.whl"
    entries = [("typing-extensions", "4.0", "conda", "https://conda.anaconda.org/c/noarch/typing-extensions-4.0-0.conda"),
               ("typing_extensions", "4.0", "conda", "https://conda.anaconda.org/c/noarch/typing_extensions-4.0-0.conda"),
               ("six", "1.16.0", "pip", wheel)]
    lock.write_text("version: 1\nmetadata:\n  content_hash: {linux-64: x}\n  channels: []\n  platforms: [linux-64]\n"
                    "  sources: []\npackage:\n" + "".join(
                        f"- name: {n}\n  version: '{v}'\n  manager: {m}\n  platform: linux-64\n  dependencies: {{}}\n"
                        f"  url: {u}\n  hash: {{sha256: {'a' * 64}}}\n  category: main\n  optional: false\n"
                        for n, v, m, u in entries))
    adopted_lock = read_lock(lock)
    conda, wheels = select(adopted_lock, "linux-64", leave_out=frozenset({"typing_extensions", "SIX"}))
    assert [e.package.name for e in conda] == ["typing-extensions"] and wheels == []
    conda, wheels = select(adopted_lock, "linux-64", leave_out=frozenset({"conda:six", "pypi:typing-extensions"}))
    assert len(conda) == 2 and len(wheels) == 1  # a kind names only packages of its kind
    conda, wheels = select(adopted_lock, "linux-64", leave_out=frozenset({"pypi:six"}))
    assert len(conda) == 2 and wheels == []
    from rules.conda.lockread import unknown_names

    assert unknown_names(adopted_lock, "linux-64", ["Six", "typing-extensions", "typing.extensions", "numpy",
                                                    "conda:six", "pypi:SIX"]) == ["typing.extensions", "numpy", "conda:six"]
    assert unknown_names(adopted_lock, "osx-64", ["six"]) == ["six"]


def test_reading_the_largest_real_lock_is_fast_and_summary_errors_are_short(tmp_path):
    import time

    path = LOCKS / "CCRI-POPROX_poprox-recommender__conda-lock.yml"
    started = time.perf_counter()
    lock = read_lock(path)
    assert time.perf_counter() - started < 5  # generous: the benchmark measures it (< 1 s here)
    assert len(lock.entries) == len(_document(path)["package"])


OLD_WRITER = """\
version: 1
metadata:
  content_hash: {linux-64: abc}
  channels: [{url: conda-forge, used_env_vars: []}]
  platforms: [linux-64]
  sources: [environment.yml]
package:
- name: zlib
  version: 1.2.13
  manager: conda
  platform: linux-64
  dependencies: {}
  url: https://conda.anaconda.org/conda-forge/linux-64/zlib-1.2.13-hd590300_5.conda
  hash: sha256:68ca0ed4ac7fbcd4ac7ef8e7a1b6a9d9ce10ad05f3e8d3f0e2a4bbd8c2f6f9a1
- name: pytest
  version: 7.4.0
  manager: conda
  platform: linux-64
  dependencies: {}
  url: https://conda.anaconda.org/conda-forge/noarch/pytest-7.4.0-pyhd8ed1ab_0.conda
  hash: {md5: 3cfe8c6e9b1e8e1b6b1f9f5a9b8e8e8e, sha256: a111111111111111111111111111111111111111111111111111111111111111}
  category: dev
  optional: true
- name: pytest
  version: 7.4.0
  manager: conda
  platform: linux-64
  dependencies: {}
  url: https://conda.anaconda.org/conda-forge/noarch/pytest-7.4.0-pyhd8ed1ab_0.conda
  hash: {md5: 3cfe8c6e9b1e8e1b6b1f9f5a9b8e8e8e, sha256: a111111111111111111111111111111111111111111111111111111111111111}
  category: extra
- name: six
  version: 1.16.0
  manager: pip
  platform: linux-64
  dependencies: {}
  url: https://files.pythonhosted.org/packages/d9/5a/e7c3/six-1.16.0-py2.py3-none-any.whl
  hash: {sha256: 8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254}
"""


def test_older_writers_are_read_leniently(tmp_path):
    path = tmp_path / "conda-lock.yml"
    path.write_text(OLD_WRITER)
    lock = read_lock(path)
    conda, wheels = select(lock, "linux-64")
    assert [e.package.name for e in conda] == ["zlib"]  # no category = main; pytest is dev/extra only
    assert conda[0].package.sha256.startswith("68ca0ed4") and conda[0].package.build == "hd590300_5"
    assert [e.package.name for e in wheels] == ["six"]
    conda, _ = select(lock, "linux-64", ("main", "dev"))
    assert [e.package.name for e in conda] == ["pytest", "zlib"]  # listed twice (dev, extra): once
    assert select(lock, "osx-arm64") == ([], [])


@pytest.mark.parametrize(("edit", "message", "line"), [
    (lambda t: t.replace("  url: https://conda.anaconda.org/conda-forge/linux-64/zlib", "  url: ftp://x/zlib"),
     "is not http(s) or file", None),
    (lambda t: t.replace("zlib-1.2.13-hd590300_5.conda", "..").replace("hash: sha256:", "hash: sha256:"),
     "does not end in a file name", 13),
    (lambda t: t.replace("sha256:68ca0ed4", "sha256:zz"), "is not 64 hex digits", 13),
    # percent-encoded: a NUL a file:// fetch would pass to open(), a slash that makes two components
    (lambda t: t.replace("linux-64/zlib-1.2.13", "linux-64/%00zlib-1.2.13"), "does not end in a file name", 13),
    (lambda t: t.replace("linux-64/zlib-1.2.13", "linux-64/x%2Fzlib-1.2.13"), "does not end in a file name", 13),
    (lambda t: t.replace("linux-64/zlib-1.2.13-hd590300_5.conda", "linux-64/%2E%2E"), "does not end in a file name", 13),
    (lambda t: t.replace("zlib-1.2.13-hd590300_5.conda", "zlib-1.2.13-hd590300_5%2Econda%2Fx"),
     "does not end in a file name", 13),
    (lambda t: t.replace("six-1.16.0-py2.py3", "%0asix-1.16.0-py2.py3"), "does not end in a file name", None),
    (lambda t: t.replace("six-1.16.0-py2.py3-none-any.whl", "six-1.16.0.tar.gz"), "source distribution", None),
    (lambda t: t.replace("version: 1\n", "version: 7\n"), "format version 7 is not supported", 1),
])
def test_what_is_refused_names_the_line(tmp_path, edit, message, line):
    path = tmp_path / "conda-lock.yml"
    path.write_text(edit(OLD_WRITER))
    with pytest.raises(LockReadError) as caught:
        select(read_lock(path), "linux-64")
    assert message in caught.value.message
    if line is not None:
        assert caught.value.line == line


ZLIB_URL = "https://conda.anaconda.org/conda-forge/linux-64/zlib-1.2.13-hd590300_5.conda"
SECOND_PYTEST = "  category: extra\n"


@pytest.mark.parametrize(("edit", "message", "line"), [
    # a file that is not a conda package (F4: file:///dev/zero would be read for ever)
    (lambda t: t.replace(ZLIB_URL, "file:///dev/zero"),
     "zlib: URL 'file:///dev/zero' is not a conda package (its file name does not end in .conda or .tar.bz2)", 13),
    # metadata of the wrong types (F6): conda-lock's LockMeta types, an error at the key's line
    (lambda t: t.replace("content_hash: {linux-64: abc}", "content_hash: [1, 2]"),
     "metadata content_hash must be a mapping of platform to hash (e.g. linux-64: <hex>), not [1, 2]", 3),
    (lambda t: t.replace("platforms: [linux-64]", "platforms: 5"),
     "metadata platforms must be a list of platform names, not 5", 5),
    (lambda t: t.replace("  sources: [environment.yml]\n", "  sources: [environment.yml]\n  custom_metadata: abc\n"),
     "metadata custom_metadata must be a mapping of strings to strings, not 'abc'", 7),
    (lambda t: t.replace("channels: [{url: conda-forge, used_env_vars: []}]", "channels: 5"),
     "metadata channels must be a list of channels (each a mapping with a url, or a URL), not 5", 4),
    (lambda t: t.replace("channels: [{url: conda-forge, used_env_vars: []}]", "channels: [{url: 5}]"),
     "metadata channels must be a list of channels (each a mapping with a url, or a URL), not [{'url': 5}]", 4),
    (lambda t: t.replace("metadata:\n", "metadata: [1]\nx:\n"), "'metadata' is a list, not a mapping", 2),
    # categories as a string (F10): conda-lock's model refuses it; set("dev") would be {d, e, v}
    (lambda t: t.replace("  category: dev\n", "  categories: dev\n"),
     "pytest: categories must be a list of strings, not 'dev'", 20),
    (lambda t: t.replace("  category: dev\n", "  categories: [dev, 5]\n"),
     "pytest: categories must be a list of strings, not ['dev', 5]", 20),
    (lambda t: t.replace("  category: dev\n", "  category: [dev]\n"), "pytest: category must be a string", 20),
    (lambda t: t.replace("version: 1.2.13", "version: {a: 1}"), "zlib: version must be a string, not {'a': 1}", 13),
    # a second, different entry of one package, platform and manager: at the second's line, naming the first
    (lambda t: t.replace(SECOND_PYTEST, "").replace("pytest-7.4.0-pyhd8ed1ab_0.conda\n  hash: {md5: 3cfe",
                                                     "pytest-7.4.1-pyhd8ed1ab_0.conda\n  hash: {md5: 3cfe", 1)
     .replace("version: 7.4.0", "version: 7.4.1", 1),
     "conda package pytest is locked twice for linux-64: line 20 pins https://conda.anaconda.org/conda-forge/"
     "noarch/pytest-7.4.1-pyhd8ed1ab_0.conda, this entry pins https://conda.anaconda.org/conda-forge/noarch/"
     "pytest-7.4.0-pyhd8ed1ab_0.conda", 29),
    # the entry must describe the file it pins (a name swap would make the SBOM name another package)
    (lambda t: t.replace("- name: zlib", "- name: libz"),
     "libz 1.2.13 hd590300_5: the lock entry's URL names the file zlib-1.2.13-hd590300_5.conda, not "
     "libz-1.2.13-hd590300_5.conda: the entry does not describe the package it pins", 13),
    (lambda t: t.replace("version: 1.2.13", "version: 1.3.0"),
     "zlib 1.3.0 hd590300_5: the lock entry's URL names the file zlib-1.2.13-hd590300_5.conda", 13),
    # one file name, computed one way: no query or fragment to disagree about it
    (lambda t: t.replace(ZLIB_URL, ZLIB_URL + "#/pytest-7.4.0-pyhd8ed1ab_0.conda"),
     f"zlib: URL '{ZLIB_URL}#/pytest-7.4.0-pyhd8ed1ab_0.conda' has a query or fragment", 13),
    (lambda t: t.replace(ZLIB_URL, ZLIB_URL + "?x=1"), f"zlib: URL '{ZLIB_URL}?x=1' has a query or fragment", 13),
    (lambda t: t.replace("none-any.whl", "none-any.whl#egg=six"),
     "pip package six: URL 'https://files.pythonhosted.org/packages/d9/5a/e7c3/six-1.16.0-py2.py3-none-any.whl"
     "#egg=six' has a fragment other than #sha256=<hex>", 37),
    (lambda t: t.replace("none-any.whl", "none-any.whl?x=1"), "six: URL", 37),
    # a pip entry must describe the wheel it pins, as a conda entry its archive: its name and version are what
    # the SBOM and the provenance report (a `requests` entry pinning six's wheel was taken as requests)
    (lambda t: t.replace("- name: six", "- name: requests"),
     "pip package requests '1.16.0': the lock entry's URL names the wheel six-1.16.0-py2.py3-none-any.whl, of six "
     "1.16.0: the entry does not describe the package it pins", 37),
    (lambda t: t.replace("version: 1.16.0", "version: 9.9.9"), "pip package six '9.9.9': the lock entry's URL", 37),
    (lambda t: t.replace("version: 1.16.0", 'version: "1.16.0\\nFAKE: x"'),
     "pip package six '1.16.0\\nFAKE: x': the lock entry's URL", 37),
    # the name reaches messages, the stage (include/pythonX.Y/<name>) and the SBOM: a project name only
    (lambda t: t.replace("- name: six", '- name: "six\\e]2;owned\\a"'),
     "pip package name 'six\\x1b]2;owned\\x07' is not a Python project name", 37),
    (lambda t: t.replace("- name: six", '- name: "../../../six"'),
     "pip package name '../../../six' is not a Python project name", 37),
    (lambda t: t.replace("six-1.16.0-py2.py3", "s%C4%B1x-1.16.0-py2.py3"),
     "pip package six: 'sıx-1.16.0-py2.py3-none-any.whl' is not a wheel file name", 37),
    # one project however it is spelled: pip and uv normalise names, so SIX 1.15 and six 1.16 are two pins of one
    (lambda t: t + t[t.index("- name: six"):].replace("- name: six", "- name: SIX").replace("version: 1.16.0",
                                                                                           "version: 1.15.0")
     .replace("six-1.16.0-py2.py3", "six-1.15.0-py2.py3"),
     "pip package SIX is locked twice for linux-64: line 37 pins https://files.pythonhosted.org/packages/d9/5a/e7c3/"
     "six-1.16.0-py2.py3-none-any.whl, this entry pins https://files.pythonhosted.org/packages/d9/5a/e7c3/"
     "six-1.15.0-py2.py3-none-any.whl", 44),
])
def test_malformed_entries_and_metadata_are_refused_at_their_line(tmp_path, edit, message, line):
    path = tmp_path / "conda-lock.yml"
    text = edit(OLD_WRITER)
    assert text != OLD_WRITER
    path.write_text(text)
    with pytest.raises(LockReadError) as caught:
        select(read_lock(path), "linux-64", ("main", "dev"))
    assert message in caught.value.message
    assert caught.value.line == line


def test_one_wheel_listed_under_two_spellings_of_its_name_is_installed_once(tmp_path):
    path = tmp_path / "conda-lock.yml"
    path.write_text(OLD_WRITER + OLD_WRITER[OLD_WRITER.index("- name: six"):].replace("- name: six", "- name: Six"))
    _conda, wheels = select(read_lock(path), "linux-64")
    assert [(e.package.name, e.line) for e in wheels] == [("six", 37)]


def test_an_entry_listed_again_for_another_category_keeps_its_own_line(tmp_path):
    """The same pin twice (dev, extra) is one package, not a conflict; each entry has its own line."""
    path = tmp_path / "conda-lock.yml"
    path.write_text(OLD_WRITER)
    pytest_lines = [e.line for e in read_lock(path).entries if e.package.name == "pytest"]
    assert pytest_lines == [20, 29]


EXPLICIT = """\
# platform: linux-64
@EXPLICIT
https://conda.anaconda.org/conda-forge/linux-64/zlib-1.2.13-hd590300_5.conda#{a}
https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-hb9d3cd8_2.conda#{b}
""".format(a="a" * 64, b="b" * 64)


def test_explicit_lock_refuses_a_second_pin_of_one_package_and_a_file_that_is_no_package(tmp_path):
    path = tmp_path / "conda-linux-64.lock"
    path.write_text(EXPLICIT)
    with pytest.raises(LockReadError) as caught:
        select(read_lock(path), "linux-64")  # an error of the platform that has both pins
    assert caught.value.line == 4
    assert caught.value.message == (
        "conda package zlib is locked twice for linux-64: line 3 pins https://conda.anaconda.org/conda-forge/linux-64/"
        "zlib-1.2.13-hd590300_5.conda, this entry pins https://conda.anaconda.org/conda-forge/linux-64/"
        "zlib-1.3.1-hb9d3cd8_2.conda")
    path.write_text("# platform: linux-64\n@EXPLICIT\nfile:///dev/zero#" + "a" * 64 + "\n")
    with pytest.raises(LockReadError, match=r"URL 'file:///dev/zero' is not a conda package") as caught:
        read_lock(path)
    assert caught.value.line == 3


def test_md5_only_is_refused_unless_allowed(adopted):
    name = "CryoInTheCloud_hub-image__conda-linux-64.lock"
    adopted.write("md5/BUILD.hermetic", f'conda_env(name = "strict", lock = "//l:{name}", platform = "linux-64")\n')
    proc = adopted.hb("aquery", "//md5:strict", check=False)
    assert proc.returncode == 4
    assert re.search(rf"^analysis error: l/{re.escape(name)}:\d+: .* is pinned by md5 only", proc.stderr, re.M)
    assert "allow_md5 = True" in proc.stderr
    allowed = json.loads(adopted.hb("aquery", "--json", f"//l:{_target(name, 'linux-64')}").stdout)
    assert all("md5" in a["params"] and "sha256" not in a["params"] for a in allowed if a["mnemonic"] == "CondaFetch")


@pytest.mark.parametrize("name", sorted(f.name for f in LOCKS.glob("*.yml")))
def test_the_line_reader_gives_what_the_yaml_loader_gives(name):
    """conda-lock's own layout is read line by line (fast); the result equals yaml's C loader's."""
    from rules.conda.lockread import _fast_unified, _read_unified

    text = (LOCKS / name).read_text()
    assert _fast_unified(text, yaml.CSafeLoader) is not None  # every real file takes the fast path

    def seen(lock):
        return [(e.package, e.categories, e.line, str(e.error)) for e in lock.entries], lock.metadata

    assert seen(_read_unified(text, fast=True)) == seen(_read_unified(text, fast=False))


def test_unusual_yaml_falls_back_to_the_loader(tmp_path):
    flow = OLD_WRITER.replace("  dependencies: {}\n  url: https://conda.anaconda.org/conda-forge/linux-64/zlib",
                              "  dependencies: &d {a: '1'}\n  url: https://conda.anaconda.org/conda-forge/linux-64/zlib")
    from rules.conda.lockread import _fast_unified

    assert _fast_unified(flow, yaml.CSafeLoader) is None
    path = tmp_path / "conda-lock.yml"
    path.write_text(flow)
    assert [e.package.name for e in select(read_lock(path), "linux-64")[0]] == ["zlib"]


def test_a_pixi_source_package_is_refused_at_its_platforms_line():
    """pixi-build lists the project's own package as `- conda: .` (no archive, no sha256): it used to be
    left out silently; selecting its platform now fails at the line that lists it for that platform."""
    lock = read_lock(LOCKS / "2lian_Motion-Stack__motion_stack-pixi.lock")
    for platform, line in (("linux-64", 548), ("linux-aarch64", 1063)):
        with pytest.raises(LockReadError, match="conda package ros-jazzy-motion-stack is a source package") as err:
            select(lock, platform)
        assert err.value.line == line


def test_pixi_sizes_bound_the_fetch():
    """pixi records each archive's size: the fetch action gets it as a hint and stops past it."""
    lock = read_lock(LOCKS / "2lian_Motion-Stack__motion_stack-pixi.lock")
    packages = [e.package for e in lock.entries if hasattr(e.package, "md5") and e.error is None]
    sized = {p.url.rsplit("/", 1)[-1]: p.size for p in packages}
    assert sized["_libgcc_mutex-0.1-conda_forge.tar.bz2"] == 2562
    assert all(isinstance(size, int) and size > 0 for size in sized.values())
    unified = read_lock(LOCKS / "01-ai_Yi__conda-lock.yml")  # conda-lock records no sizes
    assert {e.package.size for e in unified.entries if hasattr(e.package, "md5")} == {None}


def test_a_null_sha256_is_no_sha256():
    """conda-lock writes `sha256: null` for a package whose channel has no sha256 (here a label of
    conda-forge): the line reader read it as the string 'null' and refused the whole lock."""
    lock = read_lock(LOCKS / "ESMValGroup_ESMValTool__conda-lock.yml")
    entry = next(e for e in select(lock, "linux-64")[0] if e.package.name == "esmvalcore")
    assert (entry.package.sha256, entry.package.md5, entry.line) == ("", "9043e4a88ceef4d2085dd2f4f6ed723d", 2825)


def test_a_virtual_package_conda_lock_wrote_is_not_installed():
    """conda-lock 1.x wrote the solver's `__osx` into the lock (file:// URL of a temporary directory,
    md5 ''): it used to refuse the lock for every platform; conda-lock install leaves it out, so does hb."""
    lock = read_lock(LOCKS / "maresb_conda-lock__example_pangeo_conda-lock.yml")
    assert not any(e.package.name.startswith("__") for e in lock.entries)
    assert [len(select(lock, p)[0]) for p in ("linux-64", "osx-64", "win-64")] == [255, 249, 249]


def test_pixi_lock_versions_2_and_3_are_read_with_their_lines(tmp_path):
    """pixi.lock 2 and 3 have conda-lock's layout (`- platform:` entries) and their own version: they
    were refused as 'conda-lock format version 2 is not supported'; rattler reads them, and each entry
    keeps the line of its url for its own platform."""
    path = LOCKS / "183amir_pixi__flask-hello-world_v2-pixi.lock"
    lock = read_lock(path)
    assert lock.kind == "pixi"
    lines = path.read_text().splitlines()
    conda, _ = select(lock, "osx-arm64")
    assert len(conda) == 23
    for entry in conda:
        assert lines[entry.line - 1] == f"  url: {entry.package.url}"
        start = max(i for i in range(entry.line) if lines[i].startswith("- "))  # the entry's first line
        assert lines[start] == "- platform: osx-arm64"
    crlf = tmp_path / "pixi.lock"  # as a Windows checkout may have it
    crlf.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert [e.line for e in select(read_lock(crlf), "osx-arm64")[0]] == [e.line for e in conda]
    v3 = read_lock(LOCKS / "183amir_pixi__pypi_v3-pixi.lock")  # version 3 writes `manager: pypi`
    with pytest.raises(LockReadError, match="pip package pyliblzfse is a source distribution") as caught:
        select(v3, "osx-64")
    assert caught.value.line == 4789


def test_conda_lock_format_version_2_is_conda_lock_not_pixi(tmp_path):
    """conda-lock's parser reads version 2 (its v2prelim model: one entry per package, a `categories`
    list); pixi.lock 2 and 3 have `category:`. A version 2 file with `categories:` stays conda-lock's,
    and its categories are honoured (read as pixi, every category would be installed)."""
    path = tmp_path / "conda-lock.yml"
    path.write_text(OLD_WRITER.replace("version: 1\n", "version: 2\n").replace("  category: dev\n", "  categories: [dev]\n")
                    .replace("  category: extra\n", "  categories: [extra]\n"))
    lock = read_lock(path)
    assert lock.kind == "conda-lock"
    conda, wheels = select(lock, "linux-64")
    assert ([e.package.name for e in conda], [e.package.name for e in wheels]) == (["zlib"], ["six"])


def test_a_pip_entrys_source_url_does_not_shift_the_lines_of_later_entries():
    """conda-lock writes a pip entry from a URL with `source: {type: url, url: <its url>}`: that nested
    line was counted as an entry's line, so the linux-64 refusal named the source line and the osx-64
    one named the linux-64 entry (a line of another platform)."""
    path = LOCKS / "icecube_toise__conda-lock.yml"
    lock, lines = read_lock(path), path.read_text().splitlines()
    for platform, line in (("linux-64", 5048), ("osx-64", 5060), ("osx-arm64", 5072)):
        with pytest.raises(LockReadError, match="pip package pydashi is not pinned") as caught:
            select(lock, platform)
        assert caught.value.line == line and lines[line - 1].startswith("  url: ")
        assert f"  platform: {platform}" in lines[line - 5:line]


def test_an_explicit_lock_that_leaves_a_package_without_a_url_or_a_hash_is_refused_at_its_line(tmp_path):
    """conda's export writes `# no URL for: <file>` for a package of no channel: skipping the comment
    installed the environment without it. An unhashed URL gets the way to export with hashes."""
    path = tmp_path / "conda-linux-64.lock"
    path.write_text("# platform: linux-64\n@EXPLICIT\n# no URL for: mylib-1.0-0.conda\n"
                    f"https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-hb9d3cd8_2.conda#{'b' * 64}\n")
    with pytest.raises(LockReadError) as caught:
        read_lock(path)
    assert caught.value.line == 3
    assert caught.value.message.startswith("mylib-1.0-0.conda: the lock has no URL for it")
    path.write_text("# platform: linux-64\n@EXPLICIT\n"
                    "https://conda.anaconda.org/conda-forge/linux-64/zlib-1.3.1-hb9d3cd8_2.conda\n")
    with pytest.raises(LockReadError, match="is not pinned") as caught:
        read_lock(path)
    assert caught.value.line == 3 and "conda list --explicit --md5" in caught.value.hint


@pytest.mark.parametrize("name", ["CryoInTheCloud_hub-image__conda-linux-64.lock", "01-ai_Yi__conda-lock.yml"])
def test_an_environment_other_than_default_is_refused_for_a_lock_of_one_environment(name):
    """environment = ... names one of a pixi.lock's environments; for a conda-lock or explicit file it
    was ignored, and the file's one environment was built instead of the one asked for."""
    assert read_lock(LOCKS / name).entries
    with pytest.raises(LockReadError, match="which holds one environment") as caught:
        read_lock(LOCKS / name, environment="cuda")
    assert caught.value.line == 1 and "leave environment out" in caught.value.hint


OSX_ENTRY = """\
- name: zlib
  version: 1.2.13
  manager: conda
  platform: osx-arm64
  dependencies: {}
  url: https://conda.anaconda.org/conda-forge/osx-arm64/zlib-1.2.13-h53f4e23_5.conda
  hash: {md5: 1a47f5236db2e06a320ffa0392f81bd8, sha256: ab6d1e0fd8cd3d8e9f2a4d8d7c5f9a3b1e2c4d6f8a0b2c4d6e8f0a2b4c6d8e0f}
"""


@pytest.mark.parametrize(("edit", "message"), [
    (lambda e: e.replace("hash: {md5: 1a47f5236db2e06a320ffa0392f81bd8, sha256: ab6d", "hash: {md5: 1a47f5236db2e06a320ffa0392f81bd8, sha256: zz6d"),
     "is not 64 hex digits"),
    (lambda e: e.replace("  url: https://conda.anaconda.org/conda-forge/osx-arm64/zlib-1.2.13-h53f4e23_5.conda\n", ""),
     "zlib (osx-arm64) has no url"),
    (lambda e: e.replace("url: https://", "url: ftp://"), "is not http(s) or file"),
    (lambda e: e.replace("manager: conda", "manager: npm"), "unknown manager 'npm'"),
    (lambda e: e.replace("version: 1.2.13", "version: 1.3.0"), "the entry does not describe the package it pins"),
    # a second, different pin of the same package and platform (the first entry is the good one)
    (lambda e: e + e.replace("h53f4e23_5", "h53f4e23_6"), "conda package zlib is locked twice for osx-arm64"),
])
def test_a_malformed_entry_is_an_error_of_its_own_platform_only(tmp_path, edit, message):
    """Real lock files list several platforms; one broken osx-arm64 entry used to refuse the whole
    file, so a linux-64 build of it failed too. It is now raised only where osx-arm64 is built."""
    path = tmp_path / "conda-lock.yml"
    good = OLD_WRITER.replace("platforms: [linux-64]", "platforms: [linux-64, osx-arm64]")
    path.write_text(good + OSX_ENTRY)
    assert [e.package.name for e in select(read_lock(path), "osx-arm64")[0]] == ["zlib"]  # the fixture is valid
    path.write_text(good + edit(OSX_ENTRY))
    lock = read_lock(path)
    conda, wheels = select(lock, "linux-64", ("main", "dev"))
    assert [e.package.name for e in conda] == ["pytest", "zlib"] and [e.package.name for e in wheels] == ["six"]
    assert all(e.package.platform == "linux-64" for e in conda)
    with pytest.raises(LockReadError) as caught:
        select(lock, "osx-arm64")
    assert message in caught.value.message
    start = good.count("\n") + 1  # the osx-arm64 entry's first line
    assert start <= caught.value.line <= start + 2 * OSX_ENTRY.count("\n")


def alias_bomb(value_line: str) -> str:
    """OLD_WRITER with nine lines of YAML anchors that make one list stand for 10**9 strings, used as
    `value_line` (e.g. "  categories: *a8") of the pytest entry: what a plain repr or walk never ends on."""
    anchors = ['bomb:', '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    anchors += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = OLD_WRITER.replace("package:\n", "\n".join(anchors) + "\npackage:\n", 1)
    return text.replace("  category: dev\n", value_line + "\n", 1)


@pytest.mark.parametrize(("line", "message"), [
    ("  categories: *a8", "pytest: categories must be a list of strings, not [[[...], [...], [...], [...], ...], "),
    ("  category: *a8", "pytest: category must be a string, not [[[...], [...], [...], [...], ...], "),
    ("  build: *a8", "pytest: build must be a string, not [[[...], [...], [...], [...], ...], "),
    ("  hash: {md5: 3cfe8c6e9b1e8e1b6b1f9f5a9b8e8e8e, sha256: *a8}", "pytest: sha256 [[[...], [...], [...], [...], ...], "),
    ("  manager: *a8", "pytest: unknown manager [[[...], [...], [...], [...], ...], "),
])
def test_a_yaml_alias_bomb_is_refused_in_bounded_time(tmp_path, line, message):
    """A few lines of YAML anchors are a list of 10**9 items (all one list in memory): the error that
    shows such a value used to repr it whole before cutting it to 60 characters, and never returned."""
    path = tmp_path / "conda-lock.yml"
    path.write_text(alias_bomb(line))
    with pytest.raises(LockReadError) as caught:
        select(read_lock(path), "linux-64", ("main", "dev"))
    assert caught.value.message.startswith(message), caught.value.message
    assert len(caught.value.message) < 200


def test_a_percent_encoded_plus_in_a_wheel_url_is_its_file_name(tmp_path):
    """download.pytorch.org names wheels `torch-2.1.0%2Bcpu-...whl`: accepted, its file name decoded
    (only a decoded slash or control character is refused)."""
    path = tmp_path / "conda-lock.yml"
    path.write_text(OLD_WRITER.replace("six-1.16.0-py2.py3", "six-1.16.0%2Blocal-py2.py3")
                    .replace("version: 1.16.0", "version: 1.16.0+local"))
    _conda, wheels = select(read_lock(path), "linux-64")
    assert wheels[0].package.filename == "six-1.16.0+local-py2.py3-none-any.whl"
    explicit = tmp_path / "conda-linux-64.lock"  # conda-lock's `# pip` line: the version of the decoded name
    explicit.write_text("# platform: linux-64\n@EXPLICIT\n# pip six @ https://files.pythonhosted.org/p/"
                        "six-1.16.0%2Blocal-py2.py3-none-any.whl#sha256=" + "ab" * 32 + "\n")
    _conda, wheels = select(read_lock(explicit), "linux-64")
    assert (wheels[0].package.name, wheels[0].package.version) == ("six", "1.16.0+local")


def test_a_percent_encoded_plus_in_a_conda_url_is_its_file_name(tmp_path):
    """A conda version may hold `+` (`1.2.13+local`), which S3-backed mirrors serve as `%2B`: the entry
    is the file its decoded name says (it was refused as "not the file it pins" before), and the
    explicit format reads it the same way."""
    path = tmp_path / "conda-lock.yml"
    path.write_text(OLD_WRITER.replace("version: 1.2.13", "version: 1.2.13+local")
                    .replace("zlib-1.2.13-hd590300_5.conda", "zlib-1.2.13%2Blocal-hd590300_5.conda"))
    conda, _ = select(read_lock(path), "linux-64")
    assert conda[0].package.filename == "zlib-1.2.13+local-hd590300_5.conda"
    assert conda[0].package.version == "1.2.13+local" and conda[0].package.build == "hd590300_5"
    explicit = tmp_path / "conda-linux-64.lock"
    explicit.write_text("# platform: linux-64\n@EXPLICIT\nhttps://conda.anaconda.org/conda-forge/linux-64/"
                        "zlib-1.2.13%2Blocal-hd590300_5.conda#sha256:" + "ab" * 32 + "\n")
    conda, _ = select(read_lock(explicit), "linux-64")
    package = conda[0].package
    assert (package.name, package.version, package.build) == ("zlib", "1.2.13+local", "hd590300_5")


@pytest.mark.parametrize(("name", "platform"), [
    ("LHCfitNikhef_smefit_release__conda-osx-64.lock", "osx-64"),  # an explicit file
    ("Jappie04_pymor__conda-lock.yml", "win-64"),
    ("fecet_pixi-cuda__pixi.lock", "linux-64"),  # pixi.lock 6
    ("183amir_pixi__flask-hello-world_v2-pixi.lock", "osx-arm64"),  # pixi.lock 2: conda-lock's layout
])
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_lock_saved_with_a_byte_order_mark_or_as_utf_16_is_read_as_it_is(tmp_path, name, platform, encoding):
    """Windows tools write what conda and pixi wrote, re-encoded: PowerShell 5's `>` writes UTF-16
    (`conda list --explicit > conda-win-64.lock`, conda/conda#11623), editors add a UTF-8 byte-order
    mark. The explicit file's first line was "'\\ufeff# platform: ...' comes before the @EXPLICIT line",
    a pixi.lock "more than one document", a pixi.lock 2 "conda-lock format version 2 is not supported"
    and UTF-16 "invalid YAML: unacceptable character #x0000" with no line; the text is the same."""
    original = read_lock(LOCKS / name)
    path = tmp_path / name
    path.write_bytes((LOCKS / name).read_text().encode(encoding))
    lock = read_lock(path)
    assert lock.kind == original.kind
    assert [(e.package, e.line) for e in select(lock, platform)[0]] == [(e.package, e.line)
                                                                        for e in select(original, platform)[0]]


def test_a_lock_with_merge_conflict_markers_is_refused_at_the_first_marker(tmp_path):
    """A lock file committed in the middle of a merge holds two versions of the lock: an explicit file
    said "URL '<<<<<<< HEAD' is not http(s) or file", a pixi.lock named line 1."""
    for name in ("LHCfitNikhef_smefit_release__conda-osx-64.lock", "Jappie04_pymor__conda-lock.yml",
                 "fecet_pixi-cuda__pixi.lock"):
        lines = (LOCKS / name).read_text().splitlines(keepends=True)
        lines[40:40] = ["<<<<<<< HEAD\n"]
        lines[46:46] = ["=======\n"]
        lines[52:52] = [">>>>>>> 1a2b3c4 (re-lock)\n"]
        path = tmp_path / name
        path.write_text("".join(lines))
        with pytest.raises(LockReadError) as caught:
            read_lock(path)
        assert caught.value.line == 41, name
        assert caught.value.message.startswith("merge conflict marker '<<<<<<< HEAD'"), caught.value.message
        assert "re-lock" in caught.value.hint


def test_a_pixi_lock_rattler_cannot_parse_is_refused_at_the_line_rattler_names(tmp_path):
    """rattler's parse error says where ("... at line 2150 column 1"): hb named line 1."""
    lines = (LOCKS / "fecet_pixi-cuda__pixi.lock").read_text().splitlines(keepends=True)
    lines[99] = "  - this is: [not yaml\n"
    path = tmp_path / "pixi.lock"
    path.write_text("".join(lines))
    with pytest.raises(LockReadError, match="not a pixi lock file rattler can read") as caught:
        read_lock(path)
    assert caught.value.line in (100, 101)


def test_a_control_character_in_a_conda_lock_file_is_refused_at_its_line(tmp_path):
    """libyaml refuses a control character with a position, not a mark: the error had no line."""
    text = (LOCKS / "Jappie04_pymor__conda-lock.yml").read_text()
    lines = text.splitlines(keepends=True)
    lines[29] = lines[29].rstrip("\n") + "\x07\n"
    path = tmp_path / "conda-lock.yml"
    path.write_text("".join(lines))
    with pytest.raises(LockReadError, match="invalid YAML") as caught:
        read_lock(path)
    assert caught.value.line == 30


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf_16_without_a_byte_order_mark_is_named_as_such(tmp_path, encoding):
    """A UTF-16 file without its mark reads as NUL bytes between the characters: the YAML reader's
    'unacceptable character #x0000' did not say why."""
    path = tmp_path / "conda-linux-64.lock"
    path.write_bytes((LOCKS / "UBC-MDS_522_group_27__conda-linux-64.lock").read_text().encode(encoding))
    with pytest.raises(LockReadError) as raised:
        read_lock(path)
    assert raised.value.line == 1 and "UTF-16 text without a byte-order mark" in raised.value.message
    assert "UTF-8" in raised.value.hint
