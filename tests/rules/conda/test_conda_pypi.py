"""Which PyPI requirements a conda package of the same environment already satisfies (issue 9):
conda names mapped to PyPI names as conda-lock (grayskull's mapping) and pixi (purls, several
PyPI names per conda package) do."""

from __future__ import annotations

import json

import pytest

from hermetic_build.api import AnalysisError
from rules.conda.pypi import conda_provided, pypi_names, wheel_target, without_conda_provided
from rules.conda.spec import PipRequirement


def record(name, version, depends=("python >=3.11,<3.12.0a0",), purls=None, tmp=None):
    """A real rattler PackageRecord (from an index.json where purls are wanted)."""
    from rattler import BuildString, PackageRecord

    rec = PackageRecord(name=name, version=version, build=BuildString("0"), build_number=0, subdir="linux-64",
                        depends=list(depends))
    if purls is None:
        return rec
    data = json.loads(rec.to_json())
    data["purls"] = purls
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return PackageRecord.from_index_json(path)


def test_names_a_demanding_user_hits():
    provided = conda_provided([
        record("pytorch", "2.5.1"), record("pyyaml", "6.0.2"), record("scikit-learn", "1.6.1"),
        record("python-dateutil", "2.9.0.post0"), record("matplotlib-base", "3.10.0"),
        record("msgpack-python", "1.1.0"), record("typing_extensions", "4.12.2"), record("ruamel.yaml", "0.18.6"),
        record("py-opencv", "4.10.0"), record("pytables", "3.10.1"), record("brotli-python", "1.1.0"),
        record("python", "3.11.10", depends=()), record("libtorch", "2.5.1", depends=("libstdcxx",)),
        record("cuda-cudart", "12.4.127", depends=("__glibc >=2.17",)),
    ])
    assert provided == {
        "brotli": "1.1.0", "matplotlib": "3.10.0", "msgpack": "1.1.0", "opencv-python": "4.10.0",
        "opencv-python-headless": "4.10.0", "python-dateutil": "2.9.0.post0", "pyyaml": "6.0.2",
        "ruamel-yaml": "0.18.6", "scikit-learn": "1.6.1", "tables": "3.10.1", "torch": "2.5.1",
        "typing-extensions": "4.12.2",
    }  # python itself, and packages that do not depend on python (libtorch, cuda-cudart), provide nothing


def test_one_conda_package_may_provide_several_pypi_names_and_python_prefix_is_not_stripped_blindly():
    assert pypi_names(record("cupy", "13.3.0")) == ("cupy", "cupy-cuda12x")
    assert pypi_names(record("psycopg2", "2.9.9")) == ("psycopg2", "psycopg2-binary")
    assert pypi_names(record("python-build", "1.2.2")) == ("build",)
    assert pypi_names(record("python-dateutil", "2.9.0")) == ("python-dateutil",)  # its PyPI name
    assert pypi_names(record("python-igraph", "0.11.8")) == ("igraph", "python-igraph")


def test_purls_of_the_record_win_over_the_mapping(tmp_path):
    rec = record("my-torch-build", "2.5.1", purls=["pkg:pypi/torch@2.5.1", "pkg:github/x/y@1"], tmp=tmp_path)
    assert pypi_names(rec) == ("torch",)
    assert conda_provided([rec]) == {"torch": "2.5.1"}


def test_a_python_binding_wins_over_a_same_named_package():
    # conda-lock's rule: python-xxhash (PyPI xxhash) over xxhash, whatever the order
    both = [record("xxhash", "0.8.2"), record("python-xxhash", "3.5.0")]
    assert conda_provided(both) == {"xxhash": "3.5.0"}
    assert conda_provided(list(reversed(both))) == {"xxhash": "3.5.0"}


def _req(text, name, line=5):
    return PipRequirement(text, name, "env/environment.yml", line)


def test_requirements_satisfied_by_conda_are_dropped_and_conflicts_are_errors():
    target = wheel_target("linux-64", ["__glibc=2.36"], "3.11.10")
    provided = conda_provided([record("pytorch", "2.5.1"), record("pyyaml", "6.0.2")])
    kept = without_conda_provided([_req("torch >=2.4", "torch"), _req("PyYAML", "pyyaml"), _req("idna", "idna")],
                                  provided, target)
    assert [r.name for r in kept] == ["idna"]
    with pytest.raises(AnalysisError) as err:
        without_conda_provided([_req("torch ==2.3.*", "torch", line=9)], provided, target, "//env:lock: ")
    assert "conflicts with the conda package torch 2.5.1" in err.value.message
    assert err.value.location.line == 9


def test_pixis_conda_forge_mapping_names_what_hbs_own_does_not():
    """parselmouth's compressed mapping (what pixi reads for conda-forge), vendored: renamed packages,
    packages that hold no Python distribution, and a bundle recorded under another name keeps its own."""
    assert pypi_names(record("airflow", "2.10.4")) == ("airflow", "apache-airflow")
    assert pypi_names(record("astropy-base", "7.0.0")) == ("astropy", "astropy-base")
    assert pypi_names(record("antlr-python-runtime", "4.13.2")) == ("antlr-python-runtime", "antlr4-python3-runtime")
    assert pypi_names(record("jaxlib", "0.4.35")) == ("jax-cuda12-pjrt", "jaxlib")
    # metapackages and libraries: no PyPI name, even where they depend on python
    assert pypi_names(record("typing-extensions", "4.12.2")) == ()
    assert pypi_names(record("ray-default", "2.40.0")) == ()
    provided = conda_provided([record("typing-extensions", "4.12.2"), record("typing_extensions", "4.12.2"),
                               record("airflow", "2.10.4"), record("ray-default", "2.40.0")])
    assert provided == {"airflow": "2.10.4", "apache-airflow": "2.10.4", "typing-extensions": "4.12.2"}
    # hb's own mapping and the record's purls still come first
    assert pypi_names(record("pytorch", "2.5.1")) == ("torch",)
    assert pypi_names(record("numpy", "2.1.3")) == ("numpy",)
