"""environment.yml shapes conda-lock does not expect are errors at file:line (YAML syntax errors,
a NUL byte included, at file:line:column), never a Python exception from inside conda-lock (issue 8)."""

import pytest

from hermetic_build.errors import AnalysisError
from rules.conda.spec import read_environment


def read(tmp_path, text: str):
    path = tmp_path / "environment.yml"
    path.write_text(text)
    return read_environment(path, ["linux-64"], shown_path="env/environment.yml")


@pytest.mark.parametrize("text, where, message", [
    ("dependencies: 5\n", "1", "'dependencies' must be a list of package specs, got an integer '5'"),
    ("dependencies: numpy\n", "1", "'dependencies' must be a list of package specs, got a string 'numpy'"),
    ("dependencies:\n  numpy: 1\n", "2", "'dependencies' must be a list of package specs, got a mapping"),
    ("dependencies:\n  - numpy\n  - 5\n", "3", "each dependency must be a non-empty string such as 'numpy >=1.26'"),
    ("dependencies:\n  -\n", "2", "got nothing"),
    ("dependencies:\n  - [numpy]\n", "2", "got a list"),
    ("dependencies:\n  - pip: 5\n", "2", "'pip' must be a list of PyPI requirements, got an integer '5'"),
    ("dependencies:\n  - conda: [x]\n", "2", "a mapping in 'dependencies' must be a 'pip:' section"),
    ("dependencies:\n  - pip:\n    - requests\n    - -e git+https://e.org/x.git\n", "4",
     "'-e git+https://e.org/x.git' is not a PyPI name with a version"),
    ("dependencies:\n  - pip:\n    - x @ https://e.org/x-1.tar.gz\n", "3", "is not a PyPI name with a version"),
    ("dependencies:\n  - pip:\n    - numpy >=>2\n", "3", "invalid pip requirement 'numpy >=>2'"),
    ("channels: conda-forge\ndependencies: [numpy]\n", "1", "'channels' must be a list of strings"),
    ("channels:\n  - {url: x}\ndependencies: [numpy]\n", "2", "each entry of 'channels' must be a non-empty string"),
    ("dependencies: [numpy]\nplatforms: linux-64\n", "2", "'platforms' must be a list of strings"),
    ("- numpy\n", "1", "an environment file must be a mapping with 'dependencies'"),
    ("channels: [conda-forge]\nname: x\n", "1", "an environment file must have 'dependencies'"),
    ("dependencies:\n  - numpy\n  - -e.\n", "3", "'-e.' is a pip option, not a conda package spec"),
    ("dependencies: [numpy\n", "2:1", "expected ',' or ']'"),
    ("dependencies: [numpy]\nname: a\x00b\n", "2:8", "invalid YAML: unacceptable character #x0000"),
    # a key given twice: PyYAML (conda-lock) keeps the second, hb took the pip: index lines of both, conda refuses it
    ("dependencies:\n  - pip:\n    - --extra-index-url https://a.example.org/simple\ndependencies: [python]\n", "4",
     "'dependencies' is given twice (first at env/environment.yml:1)"),
    # a selector on the second line of a pip: line written over two: hb read none (the index applied everywhere)
    ("dependencies:\n  - python\n  - pip:\n    - --extra-index-url\n      https://a.example.org/simple  # [osx]\n",
     "5", "the platform selector `# [osx]` is on a continuation of the pip: line"),
    ("dependencies:\n  - python\n  - pip:\n    - \"idna\n      <4\"  # [linux]\n", "5", "is on a continuation"),
    # nested past libyaml's limit: an error at its line, not the pure-Python composer's RecursionError
    ("dependencies:\n  - " + "[" * 3000 + "]" * 3000 + "\n", "2:", "invalid YAML: exceeded maximum nesting depth"),
])
def test_wrong_shapes_name_file_and_line(tmp_path, text, where, message):
    with pytest.raises(AnalysisError) as exc:
        read(tmp_path, text)
    assert str(exc.value.location).startswith(f"env/environment.yml:{where}")
    assert message in exc.value.message
    assert exc.value.exit_code == 4


def test_a_good_file_still_reads(tmp_path):
    spec = read(tmp_path, "name: x\nchannels:\n  - conda-forge\ndependencies:\n  - numpy >=1.26\n  - python 3.11.*\n")
    assert spec.match_specs("linux-64") == ["numpy >=1.26", "python 3.11.*"]


def test_a_pip_section_reads_with_lines_and_without_condas_pip(tmp_path):
    spec = read(tmp_path, "dependencies:\n  - python 3.11.*\n  - pip:\n    - Tokenizers >=0.21\n"
                          "    - numpy ; sys_platform == 'win32'\n")
    assert [(r.text, r.name, r.line) for r in spec.pip] == [("Tokenizers >=0.21", "tokenizers", 4),
                                                            ("numpy ; sys_platform == 'win32'", "numpy", 5)]
    assert [r.name for r in spec.pip_requirements("linux-64")] == ["tokenizers"]  # the marker is evaluated
    assert spec.match_specs("linux-64") == ["python 3.11.*"]  # not the conda `pip` conda-lock adds


def test_staleness_names_changed_and_removed_pip_sections(tmp_path):
    from rules.conda.spec import explain_staleness, input_fingerprints

    vp = {"linux-64": ["__glibc=2.36"]}
    with_pip = input_fingerprints(read(tmp_path, "dependencies:\n  - python\n  - pip:\n    - idna\n"), vp)
    changed = input_fingerprints(read(tmp_path, "dependencies:\n  - python\n  - pip:\n    - idna <4\n"), vp)
    without = input_fingerprints(read(tmp_path, "dependencies:\n  - python\n"), vp)
    assert explain_staleness(with_pip, changed, "linux-64") == ["the pip requirements for linux-64 changed"]
    assert "the pip requirements for linux-64 changed" in explain_staleness(with_pip, without, "linux-64")


def _two_platforms(tmp_path, text: str):
    path = tmp_path / "environment.yml"
    path.write_text(text)
    return read_environment(path, ["linux-64", "osx-arm64"], shown_path="env/environment.yml")


def test_what_real_files_write_reaches_the_solver_as_written(tmp_path):
    """From real environment.yml files (ProteinMPNN, dinov2, flomo2memos, scipy): a spec's channel,
    the user's own pin of conda's pip (conda-lock lets the bare `pip` it adds for a pip: section
    replace it), a build without a version."""
    spec = _two_platforms(tmp_path, "channels: [conda-forge, pytorch]\ndependencies:\n"
                                    "  - pytorch::pytorch\n  - conda-forge::cudatoolkit=11.3\n"
                                    "  - libblas[build=*openblas]\n  - pip=23.1.2=py311_0\n"
                                    "  - pip:\n    - requests==2.31.0\n")
    assert spec.match_specs("linux-64") == ["pytorch::pytorch", "conda-forge::cudatoolkit 11.3.*",
                                            "libblas * *openblas", "pip 23.1.2 py311_0"]
    # the solve gets the URL of the listed channel the spec names (a mirror, a conda_channel build)
    urls = {"conda-forge": "https://mirror.example/conda-forge", "pytorch": "file:///srv/pytorch"}
    assert spec.match_specs("osx-arm64", urls)[:2] == ["file:///srv/pytorch::pytorch",
                                                       "https://mirror.example/conda-forge::cudatoolkit 11.3.*"]


def test_pip_lines_of_one_package_follow_their_platform_selectors(tmp_path):
    spec = _two_platforms(tmp_path, "dependencies:\n  - python=3.11\n  - pip:\n"
                                    "    - torch==2.1.0  # [linux]\n    - torch==2.0.1  # [osx]\n"
                                    "    - numpy==1.26.4 ; sys_platform == 'linux'\n"
                                    "    - numpy==1.25.0 ; sys_platform == 'darwin'\n    - tqdm\n")
    assert [r.text for r in spec.pip_requirements("linux-64")] == [
        "torch==2.1.0", "numpy==1.26.4 ; sys_platform == 'linux'", "tqdm"]
    assert [(r.text, r.line) for r in spec.pip_requirements("osx-arm64")] == [
        ("torch==2.0.1", 5), ("numpy==1.25.0 ; sys_platform == 'darwin'", 7), ("tqdm", 8)]


def test_index_lines_of_a_pip_section_say_where_it_is_resolved_from(tmp_path):
    """`conda env create` hands a pip: section to pip, so ML environment files write PyTorch's CUDA
    index there (`--extra-index-url https://download.pytorch.org/whl/cu121`): hb takes those lines
    as the indexes, not as requirements; conda-lock's parser, which would fail on them, reads the
    rest with the file's own line numbers."""
    from rules.conda.spec import PipIndexes

    spec = read(tmp_path, "dependencies:\n  - python 3.11.*\n  - pip:\n"
                          "    - --extra-index-url https://download.pytorch.org/whl/cu121\n"
                          "    - '-i https://pypi.example.org/simple'\n"
                          "    - --extra-index-url=https://other.example.org/simple  # [linux]\n"
                          "    - torch ==2.1.0\n")
    assert [(r.name, r.line) for r in spec.pip] == [("torch", 7)]
    extras = ("https://download.pytorch.org/whl/cu121", "https://other.example.org/simple")
    assert spec.pip_indexes.for_platform("linux-64") == PipIndexes("https://pypi.example.org/simple", extras,
                                                                   spec.pip_indexes.index_url_at)
    assert str(spec.pip_indexes.index_url_at) == "env/environment.yml:5"
    assert "torch" in [d.name for d in spec.lock_spec.dependencies["linux-64"] if d.manager == "pip"]


def test_conda_locks_pip_repositories_are_indexes_too(tmp_path):
    """conda-lock's own keys: `pip-repositories:` adds indexes; `allow-pypi-requests: false` makes
    them the only ones (the first replaces PyPI). hb ignored both before, and resolved from PyPI."""
    from rules.conda.spec import PipIndexes

    text = ("pip-repositories:\n  - https://a.example.org/simple\n  - https://b.example.org/simple\n"
            "dependencies:\n  - python\n  - pip:\n    - idna\n")
    spec = read(tmp_path, text)
    assert spec.pip_indexes == PipIndexes("", ("https://a.example.org/simple", "https://b.example.org/simple"))
    only = read(tmp_path, text + "allow-pypi-requests: false\n")
    assert (only.pip_indexes.index_url, only.pip_indexes.extra_index_urls) == (
        "https://a.example.org/simple", ("https://b.example.org/simple",))
    assert str(only.pip_indexes.index_url_at) == "env/environment.yml:2"


@pytest.mark.parametrize("text, where, message", [
    ("pip-repositories:\n  - https://$USER:$PASSWORD@pypi.example.org/simple\ndependencies: [python]\n", "2",
     "is written with credentials: put them in your netrc"),
    ("dependencies:\n  - pip:\n    - --extra-index-url ftp://x.example.org/simple\n    - idna\n", "3",
     "pip index 'ftp://x.example.org/simple' is not an http(s) URL"),
    ("dependencies:\n  - pip:\n    - -i https://a.example.org/simple\n    - --index-url https://b.example.org/simple\n",
     "4", "the pip index is given twice: 'https://a.example.org/simple' at env/environment.yml:3"),
    ("allow-pypi-requests: false\ndependencies:\n  - pip:\n    - idna\n", "1",
     "'allow-pypi-requests: false' leaves no index"),
    ("allow-pypi-requests: maybe\ndependencies: [python]\n", "1", "'allow-pypi-requests' must be true or false"),
    ("pip-repositories: https://a.example.org\ndependencies: [python]\n", "1", "'pip-repositories' must be a list"),
    ("dependencies:\n  - pip:\n    - --find-links ./wheels\n", "3", "pip index './wheels' is not an http(s) URL"),
    ("dependencies:\n  - pip:\n    - dipy --no-deps\n", "3", "is not a PyPI name"),
])
def test_index_options_that_cannot_be_taken_name_file_and_line(tmp_path, text, where, message):
    with pytest.raises(AnalysisError) as exc:
        read(tmp_path, text)
    assert str(exc.value.location).startswith(f"env/environment.yml:{where}"), exc.value.location
    assert message in exc.value.message
    assert "$PASSWORD" not in exc.value.message


def test_the_lock_targets_indexes_and_the_files_are_merged(tmp_path):
    from hermetic_build.api import Location
    from rules.conda.pypi import pip_index_args
    from rules.conda.spec import PipIndexes

    written = PipIndexes("https://a.example.org/simple", ("https://b.example.org/simple",),
                         Location("env/environment.yml", 4))
    assert pip_index_args("", ["https://c.example.org/simple", "https://b.example.org/simple"], written) == (
        "--index-url", "https://a.example.org/simple", "--extra-index-url", "https://c.example.org/simple",
        "--extra-index-url", "https://b.example.org/simple")
    same = pip_index_args("https://a.example.org/simple", [], written)
    assert same[:2] == ("--index-url", "https://a.example.org/simple")
    with pytest.raises(ValueError, match=r"name different indexes: keep one") as exc:
        pip_index_args("https://z.example.org/simple", [], written)
    assert "env/environment.yml:4" in str(exc.value)


def test_index_lines_with_a_platform_selector_apply_where_conda_lock_keeps_the_line(tmp_path):
    """`--extra-index-url https://download.pytorch.org/whl/cu121  # [linux]`: PyTorch's CUDA index has
    no macOS wheels. The selector is a YAML comment, so hb read the line as applying everywhere and gave
    uv the CUDA index for macOS too, unlike conda-lock, which drops the line there. The lock records
    the selector: changing it makes the lock stale."""
    from rules.conda.pypi import pip_index_args

    cuda, pyg = "https://download.pytorch.org/whl/cu121", "https://data.pyg.org/whl/torch-2.1.0+cpu.html"
    spec = _two_platforms(tmp_path, "dependencies:\n  - python 3.11.*\n  - pip:\n"
                                    f"    - --extra-index-url {cuda}  # [linux]\n"
                                    f"    - --find-links={pyg}  # [osx]\n"
                                    "    - --extra-index-url https://all.example.org/simple\n"
                                    "    - torch ==2.1.0\n")
    assert pip_index_args("", [], spec.pip_indexes, "linux-64") == (
        "--extra-index-url", "https://all.example.org/simple", "--extra-index-url", cuda)
    assert pip_index_args("", [], spec.pip_indexes, "osx-arm64") == (
        "--extra-index-url", "https://all.example.org/simple", "--find-links", pyg)
    recorded = pip_index_args("", [], spec.pip_indexes)
    assert recorded == ("--extra-index-url", "https://all.example.org/simple",
                        "--extra-index-url", cuda, "[linux]", "--find-links", pyg, "[osx]")
    moved = _two_platforms(tmp_path, (tmp_path / "environment.yml").read_text().replace("[linux]", "[linux64]"))
    assert pip_index_args("", [], moved.pip_indexes) != recorded
    with pytest.raises(AnalysisError) as exc:
        _two_platforms(tmp_path, f"dependencies:\n  - pip:\n    - -i {cuda}  # [linux]\n    - torch\n")
    assert str(exc.value.location) == "env/environment.yml:3"
    assert "for some platforms only (`# [linux]`)" in exc.value.message and "--extra-index-url" in exc.value.hint
    with pytest.raises(AnalysisError) as exc:
        _two_platforms(tmp_path, f"dependencies:\n  - pip:\n    - idna\n    - -f {pyg}  # our mirror [internal]\n")
    assert str(exc.value.location) == "env/environment.yml:4"
    assert "`# [internal]`" in exc.value.message and "would apply nowhere" in exc.value.message


def test_conda_locks_selectors_are_the_ones_hb_knows():
    """KNOWN_SELECTORS is conda-lock's table: each keeps a line on some platform, nothing else does."""
    from rules.conda.spec import KNOWN_SELECTORS, selector_applies

    platforms = ["linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64"]
    for selector in [*KNOWN_SELECTORS, "internal", "py311", "not win"]:
        assert any(selector_applies(selector, p) for p in platforms) == (selector in KNOWN_SELECTORS), selector


def test_a_requirements_file_named_for_some_platforms_applies_to_those_only(tmp_path):
    """`- -r requirements-cuda.txt  # [linux]`: hb replaces the line by the file's requirements for
    conda-lock's parser, and wrote them without the selector: the file's requirements were locked for
    macOS too. Each line that replaces it now keeps its selector, and its index lines apply only there."""
    from rules.conda.pypi import pip_index_args

    spec = _workspace_env(tmp_path, {
        "env/environment.yml": "dependencies:\n  - python 3.11.*\n  - pip:\n"
                               "    - -r requirements-cuda.txt  # [linux]\n    - idna ==3.7 --prefer-binary  # [osx]\n"
                               "    - tqdm\n",
        "env/requirements-cuda.txt": "--extra-index-url https://download.pytorch.org/whl/cu121\n"
                                     "nvidia-cuda-runtime-cu12 ==12.1.105\ntorch ==2.1.0\n"})
    assert [r.text for r in spec.pip_requirements("linux-64")] == [
        "nvidia-cuda-runtime-cu12 ==12.1.105", "torch ==2.1.0", "tqdm"]
    assert [r.text for r in spec.pip_requirements("osx-arm64")] == ["idna ==3.7", "tqdm"]
    assert pip_index_args("", [], spec.pip_indexes, "linux-64") == (
        "--extra-index-url", "https://download.pytorch.org/whl/cu121")
    assert pip_index_args("", [], spec.pip_indexes, "osx-arm64") == ()
    with pytest.raises(AnalysisError) as exc:
        _workspace_env(tmp_path, {"env/environment.yml": "dependencies:\n  - pip:\n"
                                                         "    - -r requirements-cuda.txt  # pinned [cuda]\n"})
    assert str(exc.value.location) == "env/environment.yml:3" and "would apply nowhere" in exc.value.message


def _workspace_env(tmp_path, files: dict):
    """read_environment of env/environment.yml in a workspace at tmp_path holding `files`."""
    from hermetic_build.api import resolve_source
    from rules.conda.requirements_file import read_text

    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    def read(rel):
        return read_text(resolve_source(tmp_path, rel), rel)
    return read_environment(tmp_path / "env/environment.yml", ["linux-64", "osx-arm64"],
                            shown_path="env/environment.yml", read_requirement=read)


def test_requirements_files_a_pip_section_names_are_read_as_pip_reads_them(tmp_path):
    """`- -r requirements.txt` (conda env create's form): the file, relative to the environment file,
    and the files it names, relative to it; comments, continuations and index lines as pip reads
    them; markers evaluated per platform by conda-lock, which reads the requirements in place of the line."""
    spec = _workspace_env(tmp_path, {
        "env/environment.yml": "dependencies:\n  - python 3.11.*\n  - pip:\n    - -r requirements.txt  # ours\n"
                               "    - idna\n",
        "env/requirements.txt": "# pinned by hand\n--extra-index-url https://download.pytorch.org/whl/cu121\n"
                                "numpy >=2.2 \\\n    ,<2.5  # continued\n\n-r ../common/base.txt\n",
        "common/base.txt": "tokenizers ==0.21.*\npywin32 ; sys_platform == 'win32'\nuvloop ; sys_platform == 'linux'\n",
    })
    assert [(r.text, r.path, r.line) for r in spec.pip] == [
        ("numpy >=2.2     ,<2.5", "env/requirements.txt", 3),
        ("tokenizers ==0.21.*", "common/base.txt", 1),
        ("pywin32 ; sys_platform == 'win32'", "common/base.txt", 2),
        ("uvloop ; sys_platform == 'linux'", "common/base.txt", 3),
        ("idna", "env/environment.yml", 5)]
    assert spec.pip_indexes.extra_index_urls == ("https://download.pytorch.org/whl/cu121",)
    assert spec.requirement_files == ("env/requirements.txt", "common/base.txt")
    assert [r.name for r in spec.pip_requirements("linux-64")] == ["numpy", "tokenizers", "uvloop", "idna"]
    assert [r.name for r in spec.pip_requirements("osx-arm64")] == ["numpy", "tokenizers", "idna"]


@pytest.mark.parametrize("files, where, message", [
    ({"env/requirements.txt": "idna\n-e git+https://e.org/x.git#egg=x\n"}, "env/requirements.txt:2",
     "is not a PyPI name"),
    ({"env/requirements.txt": "numpy==2.2.0 --hash=sha256:abc\n"}, "env/requirements.txt:1",
     "--hash 'sha256:abc' is not sha256:<64 hex digits>"),
    ({"env/requirements.txt": "numpy==2.2.0 --no-binary :all:\n"}, "env/requirements.txt:1", "is not a PyPI name"),
    ({"env/requirements.txt": "-c constraints.txt\n"}, "env/requirements.txt:1", "is not a PyPI name"),
    ({}, "env/environment.yml:3", "requirements file env/requirements.txt does not exist"),
    ({"env/requirements.txt": "-r requirements.txt\n"}, "env/requirements.txt:1", "names itself"),
    ({"env/requirements.txt": "-r ../../outside.txt\n"}, "env/requirements.txt:1", "is outside the workspace"),
    ({"env/requirements.txt": "-r /etc/passwd\n"}, "env/requirements.txt:1", "must be a path relative to"),
])
def test_requirements_files_that_cannot_be_taken_name_file_and_line(tmp_path, files, where, message):
    with pytest.raises(AnalysisError) as exc:
        _workspace_env(tmp_path, {"env/environment.yml": "dependencies:\n  - pip:\n    - -r requirements.txt\n",
                                  **files})
    assert str(exc.value.location) == where
    assert message in exc.value.message


def test_a_requirements_file_linked_out_of_the_workspace_is_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-LINE\n")
    (tmp_path / "ws/env").mkdir(parents=True)
    (tmp_path / "ws/env/requirements.txt").symlink_to(secret)
    with pytest.raises(AnalysisError) as exc:
        _workspace_env(tmp_path / "ws", {"env/environment.yml": "dependencies:\n  - pip:\n    - -r requirements.txt\n"})
    assert "SECRET" not in exc.value.message and "outside the workspace" in exc.value.message


def test_a_requirements_file_with_hashes_as_pip_compile_writes_it(tmp_path):
    """pip-compile --generate-hashes: `name==version \\` then `--hash=sha256:...` lines and `# via`
    comments; the hashes are kept beside the requirement (the locked wheel must be one of them) and
    are an input of the lock: changing one changes the content hash and the pip fingerprint."""
    from rules.conda.spec import content_hashes, input_fingerprints

    a, b = "a" * 64, "b" * 64
    compiled = ("#\n# This file is autogenerated by pip-compile\n#\nidna==3.10 \\\n"
                f"    --hash=sha256:{a} \\\n    --hash=sha256:{b}\n    # via -r requirements.in\n")
    env = {"env/environment.yml": "dependencies:\n  - python 3.11.*\n  - pip:\n    - -r requirements.txt\n",
           "env/requirements.txt": compiled}
    spec = _workspace_env(tmp_path, env)
    assert [(r.text, r.line, r.hashes) for r in spec.pip] == [("idna==3.10", 4, (a, b))]
    vp = {"linux-64": ["__glibc=2.36"], "osx-arm64": ["__osx=13.0"]}
    before = (content_hashes(spec, vp), input_fingerprints(spec, vp))
    changed = _workspace_env(tmp_path, {**env, "env/requirements.txt": compiled.replace(b, "c" * 64)})
    after = (content_hashes(changed, vp), input_fingerprints(changed, vp))
    assert before[0]["linux-64"] != after[0]["linux-64"]
    assert before[1]["hb.pip.linux-64"] != after[1]["hb.pip.linux-64"]
    # without --hash options the content hash is conda-lock's own, as for every lock before
    from conda_lock.content_hash import compute_content_hashes

    from rules.conda.spec import virtual_package_repo

    plain = _workspace_env(tmp_path, {**env, "env/requirements.txt": "idna==3.10\n"})
    assert content_hashes(plain, vp) == dict(compute_content_hashes(plain.lock_spec,
                                                                    virtual_package_repo(vp, plain.platforms)))


def test_local_source_is_left_out_as_conda_lock_leaves_editable_installs_out(tmp_path):
    """`-e .` (the project's own checkout; also `-e.`, `--editable=../lib`, a plain path such as
    gaussian-splatting's `submodules/simple-knn`, in a requirements file too) is not locked, and
    conda-lock's parser does not see it: hb lock warns with its file and line. An editable install from
    a URL is a dependency, still refused. Lines of only wheel options (`--prefer-binary`), and those
    options on a requirement (`dipy --only-binary dipy`, MNE's), change nothing: hb takes wheels only."""
    spec = _workspace_env(tmp_path, {
        "env/environment.yml": "dependencies:\n  - python 3.11.*\n  - pip:\n    - -e.\n    - idna\n"
                               "    - --editable=../lib\n    - -r requirements.txt\n    - submodules/simple-knn\n"
                               "    - ./vendored\n    - dipy --only-binary dipy\n    - --prefer-binary\n",
        "env/requirements.txt": "-e .\ntokenizers\n--only-binary :all:\n",
    })
    assert [r.text for r in spec.pip] == ["idna", "tokenizers", "dipy"]
    assert [str(at) for at, _ in spec.warnings] == ["env/environment.yml:4", "env/environment.yml:6",
                                                    "env/requirements.txt:1", "env/environment.yml:8",
                                                    "env/environment.yml:9"]
    assert all("(an editable install or a path) is not locked" in what for _, what in spec.warnings)
    assert "'submodules/simple-knn'" in spec.warnings[3][1]
    assert [r.name for r in spec.pip_requirements("linux-64")] == ["idna", "tokenizers", "dipy"]


def test_variables_are_not_applied_and_hb_lock_says_so(tmp_path):
    spec = read(tmp_path, "dependencies: [python]\nvariables:\n  CUDA_HOME: /usr/local/cuda\n")
    assert [(str(at), what.split(":")[0]) for at, what in spec.warnings] == [("env/environment.yml:2", "'variables")]
    assert "oci_image(env_vars" in spec.warnings[0][1]


def test_a_requirements_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    import os

    (tmp_path / "env").mkdir()
    os.mkfifo(tmp_path / "env/requirements.txt")
    with pytest.raises(AnalysisError, match="is not a regular file"):
        _workspace_env(tmp_path, {"env/environment.yml": "dependencies:\n  - pip:\n    - -r requirements.txt\n"})


@pytest.mark.parametrize("ref", ["reqs", "."])
def test_a_requirements_file_that_is_a_directory_is_an_error_at_the_file(tmp_path, ref):
    """`-r reqs` naming a directory ended `hb lock` in an IsADirectoryError traceback."""
    (tmp_path / "env/reqs").mkdir(parents=True)
    with pytest.raises(AnalysisError, match="is not a regular file"):
        _workspace_env(tmp_path, {"env/environment.yml": f"dependencies:\n  - pip:\n    - -r {ref}\n"})


def test_encodings_conda_and_pip_read_are_read_and_others_are_an_error_at_the_file(tmp_path):
    """`conda env export >` in Windows PowerShell 5.1 writes UTF-16 with a byte-order mark, Notepad a
    UTF-8 one: conda and pip read both, and so does hb (it crashed with UnicodeDecodeError). A cp1252
    file is an error naming the file and line."""
    text = "dependencies:\n  - python 3.11.*\n  - pip:\n    - -r requirements.txt\n"
    for encoding in ("utf-16", "utf-8-sig", "utf-32"):
        (tmp_path / encoding / "env").mkdir(parents=True)
        (tmp_path / encoding / "env/environment.yml").write_bytes(text.encode(encoding))
        (tmp_path / encoding / "env/requirements.txt").write_bytes("idna\n".encode(encoding))
        spec = _workspace_env(tmp_path / encoding, {})
        assert spec.match_specs("linux-64") == ["python 3.11.*"] and [r.name for r in spec.pip] == ["idna"]
    (tmp_path / "cp1252/env").mkdir(parents=True)
    (tmp_path / "cp1252/env/environment.yml").write_bytes("# \u00a9 us\ndependencies:\n  - numpy\n".encode("cp1252"))
    with pytest.raises(AnalysisError) as exc:
        _workspace_env(tmp_path / "cp1252", {})
    assert str(exc.value.location) == "env/environment.yml:1" and "is not UTF-8 text" in exc.value.message


def test_condas_own_refusals_name_the_specs_line(tmp_path):
    """conda (and conda-lock) refuse `python='3.10'`; hb said so without a line (DeepLabCut's file)."""
    with pytest.raises(AnalysisError) as exc:
        read(tmp_path, "dependencies:\n  - pip\n  - python='3.10'\n")
    assert str(exc.value.location) == "env/environment.yml:3"


def test_an_empty_pip_section_is_none(tmp_path):
    spec = read(tmp_path, "dependencies:\n  - python\n  - pip:\n")
    assert spec.pip == () and "python" in spec.match_specs("linux-64")


def test_find_links_pages_are_where_wheels_are_found_too(tmp_path):
    """PyG publishes its per-CUDA wheels (`torch-scatter==2.1.0+pt113cu117`) as a find-links page only
    (DiffDock's environment): `--find-links URL` is handed to uv like an index."""
    from rules.conda.pypi import pip_index_args

    spec = read(tmp_path, "dependencies:\n  - pip:\n"
                          "    - --find-links https://data.pyg.org/whl/torch-1.13.1+cu117.html\n"
                          "    - -f=https://example.org/wheels.html\n    - torch-scatter==2.1.0+pt113cu117\n")
    assert spec.pip_indexes.find_links == ("https://data.pyg.org/whl/torch-1.13.1+cu117.html",
                                           "https://example.org/wheels.html")
    assert pip_index_args("", [], spec.pip_indexes) == (
        "--find-links", "https://data.pyg.org/whl/torch-1.13.1+cu117.html", "--find-links",
        "https://example.org/wheels.html")
