import pytest

from hermetic_build.errors import UsageError
from hermetic_build.query import _parse, _patterns


def test_parse_nested():
    tree = _parse("kind(gen.*, rdeps(//..., deps(//a:b)))")
    assert tree == ("call", "kind", [("word", "gen.*"), ("call", "rdeps", [("word", "//..."),
                    ("call", "deps", [("word", "//a:b")])])])
    assert _patterns(tree, []) == ["//...", "//a:b"]


@pytest.mark.parametrize("text", ["", "deps(//a:b", "deps(//a:b))", "deps(,)"])
def test_parse_errors(text):
    with pytest.raises(UsageError):
        _parse(text)
