"""AnalysisMemo: a rule's pure, slow analysis-time work kept between runs under a key of its inputs."""

import json

import pytest

from hermetic_build.memo import AnalysisMemo


def test_value_is_computed_once_per_key_and_kept_across_instances(tmp_path):
    calls = []

    def compute(value):
        return lambda: calls.append(value) or {"hash": value}

    assert AnalysisMemo(tmp_path / "memo").get("conda.content-hash", "k1", compute("a")) == {"hash": "a"}
    assert AnalysisMemo(tmp_path / "memo").get("conda.content-hash", "k1", compute("b")) == {"hash": "a"}
    assert AnalysisMemo(tmp_path / "memo").get("conda.content-hash", "k2", compute("c")) == {"hash": "c"}
    assert calls == ["a", "c"]
    assert not [p for p in (tmp_path / "memo").iterdir() if ".hb-tmp-" in p.name]


def test_damaged_or_foreign_files_are_computed_again(tmp_path):
    memo = AnalysisMemo(tmp_path)
    memo.get("x", "key", lambda: 1)
    (path,) = tmp_path.iterdir()
    path.write_text("{not json")
    assert memo.get("x", "key", lambda: 2) == 2
    path.write_text(json.dumps({"key": "another key", "value": 3}))  # e.g. a digest prefix collision
    assert memo.get("x", "key", lambda: 4) == 4
    assert json.loads(path.read_text()) == {"key": "key", "value": 4}


def test_without_a_directory_nothing_is_kept_and_namespaces_are_checked(tmp_path):
    calls = []
    memo = AnalysisMemo(None)
    memo.get("x", "k", lambda: calls.append(1))
    memo.get("x", "k", lambda: calls.append(1))
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="namespace"):
        AnalysisMemo(tmp_path).get("../escape", "k", lambda: 1)
    assert not list(tmp_path.iterdir())


def test_an_error_is_not_kept(tmp_path):
    memo = AnalysisMemo(tmp_path)
    with pytest.raises(RuntimeError):
        memo.get("x", "k", lambda: (_ for _ in ()).throw(RuntimeError("bad spec")))
    assert memo.get("x", "k", lambda: 5) == 5
