"""Loading BUILD.hermetic files and analysis, in-process."""

import pytest

import rules  # noqa: F401 - registers genrule
from hermetic_build.analysis import Analyzer
from hermetic_build.errors import AnalysisError, BuildFileError
from hermetic_build.label import Label
from hermetic_build.rule import registered_rules
from hermetic_build.workspace import find_workspace


def analyzer(ws):
    return Analyzer(find_workspace(ws.root), registered_rules())


def test_genrule_target_and_location(workspace):
    workspace.write("p/a.txt", "a")
    workspace.write("p/BUILD.hermetic", """\
        # comment
        genrule(name = "x", srcs = ["a.txt"], outs = ["b"], cmd = "cp $(SRCS) $(OUTS)")
    """)
    result = analyzer(workspace).analyze(["//p:x"])
    target = result.targets[Label("p", "x")]
    assert str(target.location) == "p/BUILD.hermetic:2"
    assert [a.params["cmd"] for a in result.actions] == ["cp p/a.txt hb-out/p/x/b"]


def test_macro_location_is_the_build_file_call(workspace):
    workspace.write("p/defs.bzl", """\
        def mac(name):
            genrule(name = name, outs = ["o"], cmd = "true > $(OUTS)")
    """)
    workspace.write("p/BUILD.hermetic", 'load(":defs.bzl", "mac")\n\nmac("m")\n')
    result = analyzer(workspace).analyze(["//p:m"])
    assert str(result.targets[Label("p", "m")].location) == "p/BUILD.hermetic:3"
    assert result.loads == ("p/defs.bzl",)


def test_syntax_error_has_file_and_line(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x",\n   outs = ["o"]\n   cmd = "x")\n')
    with pytest.raises(BuildFileError) as exc:
        analyzer(workspace).analyze(["//p:x"])
    assert str(exc.value.location).startswith("p/BUILD.hermetic:")


def test_unknown_attribute_suggests(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x", outs = ["o"], cmd = "x",\n  src = ["a"])\n')
    with pytest.raises(BuildFileError) as exc:
        analyzer(workspace).analyze(["//p:x"])
    assert str(exc.value.location) == "p/BUILD.hermetic:1"
    assert "unknown attribute 'src'" in exc.value.message and "did you mean srcs" in exc.value.message


def test_wrong_type_and_missing(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x", outs = "o", cmd = "x")\n')
    # a value of the wrong type is an analysis error (exit 4, README); a missing one a BUILD file error
    with pytest.raises(AnalysisError, match="'outs' must be a string_list") as exc:
        analyzer(workspace).analyze(["//p:x"])
    assert str(exc.value.location) == "p/BUILD.hermetic:1"
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x", outs = ["o"])\n')
    with pytest.raises(BuildFileError, match="missing mandatory attribute 'cmd'"):
        analyzer(workspace).analyze(["//p:x"])


def test_no_io_no_clock_no_python(workspace):
    for source in ['open("/etc/passwd")', 'print("x")', "import os", 'load("/etc/passwd", "x")']:
        workspace.write("p/BUILD.hermetic", source + "\n")
        with pytest.raises(BuildFileError):
            analyzer(workspace).analyze(["//p:all"])


def test_duplicate_target(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="x", outs=["o"], cmd="x")\ngenrule(name="x", outs=["o"], cmd="x")\n')
    with pytest.raises(BuildFileError, match="already defined at p/BUILD.hermetic:1"):
        analyzer(workspace).analyze(["//p:x"])


def test_glob_excludes_subpackages(workspace):
    workspace.write("p/a.txt", "")
    workspace.write("p/d/b.txt", "")
    workspace.write("p/d/c.md", "")
    workspace.write("p/sub/BUILD.hermetic", "")
    workspace.write("p/sub/x.txt", "")
    workspace.write("p/BUILD.hermetic", 'genrule(name="g", srcs=glob(["**/*.txt"], exclude=["a.*"]), outs=["o"], cmd="cat $(SRCS) > $(OUTS)")\n')
    result = analyzer(workspace).analyze(["//p:g"])
    assert result.actions[0].inputs[0].path == "p/d/b.txt" and len(result.actions[0].inputs) == 1


def test_unknown_label_suggests(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="final", outs=["o"], cmd="x")\n')
    with pytest.raises(AnalysisError) as exc:
        analyzer(workspace).analyze(["//p:fnal"])
    assert exc.value.hint == "did you mean //p:final?"


def test_dep_on_missing_file_or_target(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="a", outs=["o"], cmd="x")\n\ngenrule(name="b", srcs=[":aa"], outs=["o"], cmd="x")\n')
    with pytest.raises(AnalysisError) as exc:
        analyzer(workspace).analyze(["//p:b"])
    assert str(exc.value.location) == "p/BUILD.hermetic:3" and "did you mean //p:a?" in exc.value.hint


def test_cycle_reports_chain(workspace):
    workspace.write("p/BUILD.hermetic", """\
        genrule(name="a", srcs=[":b"], outs=["o"], cmd="x")
        genrule(name="b", srcs=["//q:c"], outs=["o"], cmd="x")
    """)
    workspace.write("q/BUILD.hermetic", 'genrule(name="c", srcs=["//p:a"], outs=["o"], cmd="x")\n')
    with pytest.raises(AnalysisError) as exc:
        analyzer(workspace).analyze(["//p:a"])
    message = exc.value.message
    assert "dependency cycle" in message
    for label in ("//p:a", "//p:b", "//q:c"):
        assert label in message


def test_missing_package(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="a", srcs=["//nope:x"], outs=["o"], cmd="x")\n')
    with pytest.raises(BuildFileError, match="no package //nope"):
        analyzer(workspace).analyze(["//p:a"])


def test_recursive_pattern_and_root_package(workspace):
    workspace.write("BUILD.hermetic", 'genrule(name="r", outs=["o"], cmd="x")\n')
    workspace.write("a/b/BUILD.hermetic", 'genrule(name="c", outs=["o"], cmd="x")\n')
    result = analyzer(workspace).analyze(["//..."])
    assert sorted(map(str, result.requested)) == ["//:r", "//a/b:c"]
    assert result.actions[0].outputs[0].path in ("hb-out/r/o", "hb-out/a/b/c/o")
