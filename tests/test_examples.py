"""The bundled example workspace, driven the way the README tells a newcomer to."""

import json

import pytest
from support import Workspace, copy_example


@pytest.fixture
def example(tmp_path) -> Workspace:
    return copy_example(tmp_path / "examples", tmp_path / "cache")


def test_data_pipeline(example):
    summary = example.build_json("//data:stats")
    assert summary["actions"]["executed"] == 6
    assert (example.root / "hb-out/data/stats/stats.txt").read_text().startswith("rows 400\n")


@pytest.mark.slow
def test_nlp_env_from_readme(example):
    example.hb("lock", "//env:nlp-lock", timeout=600)
    for name in ("conda-lock.yml", "conda-linux-64.lock", "conda-osx-arm64.lock"):
        assert (example.root / "env" / name).is_file()
    summary = example.build_json("//env:nlp-env")
    actions = json.loads(example.hb("aquery", "--json", "//env:nlp-env").stdout)
    assert sorted({a["mnemonic"] for a in actions}) == ["CondaFetch", "CondaStage", "WheelFetch"]
    assert summary["actions"]["executed"] == len(actions) == 7 + sum(a["mnemonic"] == "WheelFetch" for a in actions) + 1
    wheels = {a["params"]["filename"].split("-")[0] for a in actions if a["mnemonic"] == "WheelFetch"}
    assert {"numpy", "tokenizers"} <= wheels
    from support import run_in_prefix

    tree = example.root / summary["targets"]["//env:nlp-env"][0]["path"]
    assert run_in_prefix(tree, "/opt/env/bin/hb-hello").stdout == "hello from /opt/env\n"
    assert oct(tree.stat().st_mode & 0o777) == oct(0o755)  # published directories are not 0700
    assert example.build_json("//env:nlp-env")["actions"]["executed"] == 0


@pytest.mark.slow
def test_readme_main_job_builds_the_gpu_image(example):
    """The README's first command: hb lock //... then hb build //env:nlp-gpu."""
    example.hb("lock", "//...", timeout=900)
    summary = example.build_json("//env:nlp-gpu")
    assert summary["targets"]["//env:nlp-gpu"][0]["path"] == "hb-out/env/nlp-gpu"
    layout = example.root / "hb-out/env/nlp-gpu"
    assert oct(layout.stat().st_mode & 0o777) == oct(0o755)
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert example.build_json("//env:nlp-gpu")["actions"]["executed"] == 0
