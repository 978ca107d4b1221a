import pytest

from hermetic_build.label import Label, LabelSyntaxError, TargetPattern


@pytest.mark.parametrize("text, package, expected", [
    ("//env:nlp", None, Label("env", "nlp")),
    (":nlp", "env", Label("env", "nlp")),
    ("nlp", "env", Label("env", "nlp")),
    ("//env", None, Label("env", "env")),
    ("//a/b", None, Label("a/b", "b")),
    ("//:root", None, Label("", "root")),
    ("//pkg:sub/file.txt", None, Label("pkg", "sub/file.txt")),
])
def test_parse(text, package, expected):
    assert Label.parse(text, package) == expected


@pytest.mark.parametrize("text", ["", "//", "//a:", "//a/../b:c", "//a:../x", "@repo//a:b", "//a:b/", "//a b:c"])
def test_parse_rejects(text):
    with pytest.raises(LabelSyntaxError):
        Label.parse(text, "pkg")


def test_relative_needs_package():
    with pytest.raises(LabelSyntaxError):
        Label.parse(":x")


def test_str_roundtrip():
    for text in ["//env:nlp", "//:x", "//a/b:c"]:
        assert str(Label.parse(text)) == text


def test_patterns():
    assert TargetPattern.parse("//...") == TargetPattern("", None, True)
    assert TargetPattern.parse("//env/...") == TargetPattern("env", None, True)
    assert TargetPattern.parse("//env:all") == TargetPattern("env", None, False)
    assert TargetPattern.parse(":all", "env") == TargetPattern("env", None, False)
    assert TargetPattern.parse("//env:nlp") == TargetPattern("env", "nlp", False)
    p = TargetPattern.parse("//env/...")
    assert p.matches_package("env") and p.matches_package("env/gpu") and not p.matches_package("envx")
