import pytest

from hermetic_build.label import Label
from hermetic_build.rule import Rule, attr, check_attrs

RULE = Rule("thing", lambda ctx: [], {
    "srcs": attr.label_list(allow_files=True),
    "dep": attr.label(),
    "mode": attr.string(default="fast", values=("fast", "slow")),
    "count": attr.int(default=1),
    "flag": attr.bool(),
    "env": attr.string_dict(),
    "per": attr.string_list_dict(),
})


def test_defaults_and_normalisation():
    attrs = check_attrs(RULE, {"name": "t", "srcs": ["a.txt", "//q:r"], "dep": ":d"}, "p")
    assert attrs["srcs"] == (Label("p", "a.txt"), Label("q", "r"))
    assert attrs["dep"] == Label("p", "d")
    assert attrs["mode"] == "fast" and attrs["count"] == 1 and attrs["flag"] is False and attrs["tags"] == ()


@pytest.mark.parametrize("raw, message", [
    ({"name": "t", "count": True}, "'count' must be a int"),
    ({"name": "t", "mode": "medium"}, "must be one of 'fast', 'slow'"),
    ({"name": "t", "srcs": ["a", "a"]}, "lists 'a' twice"),
    ({"name": "t", "srcs": [1]}, "list of strings"),
    ({"name": "t", "env": {"a": 1}}, "map strings to strings"),
    ({"name": "t", "per": {"a": "b"}}, "map strings to lists"),
    ({"name": "t", "dep": "//a/../b:c"}, "invalid package"),
    ({"name": "t", "modes": "x"}, "did you mean mode"),
    ({}, "missing mandatory attribute 'name'"),
])
def test_errors(raw, message):
    with pytest.raises(ValueError, match=message):
        check_attrs(RULE, raw, "p")
