"""Loading BUILD.hermetic files and analysis, in-process."""

import pytest

import rules  # noqa: F401 - registers genrule
from hermetic_build.analysis import Analyzer
from hermetic_build.errors import AnalysisError, BuildFileError, UsageError
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


# ----- issue 8: clean errors instead of tracebacks ----------------------------------------------
def test_output_inside_another_output_names_both_targets(workspace):
    workspace.write("p/BUILD.hermetic", """\
        genrule(name = "a", outs = ["x"], cmd = "echo > $(OUTS)")
        genrule(name = "a/x", outs = ["y"], cmd = "echo > $(OUTS)")
    """)
    with pytest.raises(AnalysisError) as exc:
        analyzer(workspace).analyze(["//p:all"])
    assert str(exc.value.location) == "p/BUILD.hermetic:2"
    assert exc.value.message == ("//p:a/x: output hb-out/p/a/x/y is inside hb-out/p/a/x, an output of //p:a "
                                 "(p/BUILD.hermetic:1)")


def test_targets_nested_by_name_without_colliding_outputs_are_fine(workspace):
    workspace.write("p/BUILD.hermetic", """\
        genrule(name = "a", outs = ["x"], cmd = "echo > $(OUTS)")
        genrule(name = "a/y", outs = ["z"], cmd = "echo > $(OUTS)")
    """)
    assert len(analyzer(workspace).analyze(["//p:all"]).actions) == 2


def test_pattern_matching_no_target_is_a_usage_error(workspace):
    with pytest.raises(UsageError, match=r"no targets match //\.\.\.: the workspace at .* has no BUILD.hermetic files"):
        analyzer(workspace).analyze(["//..."])
    workspace.write("p/BUILD.hermetic", "X = 1\n")
    with pytest.raises(UsageError, match="no targets match //p:all: p/BUILD.hermetic defines no targets"):
        analyzer(workspace).analyze(["//p:all"])


@pytest.mark.parametrize("pattern", ["//../...", "//p/../...", "//p/...:x", "//..:all"])
def test_patterns_cannot_leave_the_workspace(workspace, pattern):
    with pytest.raises(AnalysisError, match="invalid package"):
        analyzer(workspace).analyze([pattern])


@pytest.mark.parametrize("call, message", [
    ('glob(["../*"])', "glob() pattern '../*' must be a relative path inside the package"),
    ('glob(["/etc/*"])', "glob() pattern '/etc/*' must be a relative path inside the package"),
    ('glob("*.txt")', "glob() include must be a list of patterns, got str '*.txt'"),
    ('glob(["*.txt"], exclude = "a")', "glob() exclude must be a list of patterns"),
])
def test_bad_glob_patterns_are_errors_at_their_line(workspace, call, message):
    workspace.write("p/BUILD.hermetic", f'\ngenrule(name = "g", srcs = {call}, outs = ["o"], cmd = "x")\n')
    with pytest.raises(BuildFileError) as exc:
        analyzer(workspace).analyze(["//p:g"])
    assert message in exc.value.message and str(exc.value.location) == "p/BUILD.hermetic:2"


def test_unreadable_build_files_are_build_file_errors(workspace):
    (workspace.root / "p").mkdir()
    (workspace.root / "p/BUILD.hermetic").write_bytes(b'# ok\ngenrule(name = "x", outs = ["o"], cmd = "\xff")\n')
    with pytest.raises(BuildFileError, match=r"not valid UTF-8 \(byte 0xff\)") as exc:
        analyzer(workspace).analyze(["//p:x"])
    assert str(exc.value.location) == "p/BUILD.hermetic:2"
    (workspace.root / "p/BUILD.hermetic").unlink()
    (workspace.root / "p/BUILD.hermetic").mkdir()
    with pytest.raises(BuildFileError, match="no package //p: p/BUILD.hermetic is a directory"):
        analyzer(workspace).analyze(["//p:x"])
    (workspace.root / "p/BUILD.hermetic").rmdir()
    (workspace.root / "p/BUILD.hermetic").symlink_to(workspace.root / "nowhere")
    with pytest.raises(BuildFileError, match="is a broken symbolic link"):
        analyzer(workspace).analyze(["//p:x"])


def test_load_errors(workspace):
    workspace.write("p/BUILD.hermetic", 'load(":nope.bzl", "x")\n')
    with pytest.raises(BuildFileError, match="p/nope.bzl does not exist"):
        analyzer(workspace).analyze(["//p:all"])
    workspace.write("p/a.bzl", 'load(":b.bzl", "y")\nx = 1\n')
    workspace.write("p/b.bzl", 'load(":a.bzl", "x")\ny = 1\n')
    workspace.write("p/BUILD.hermetic", 'load(":a.bzl", "x")\n')
    with pytest.raises(BuildFileError, match=r"load cycle: p/a.bzl -> p/b.bzl -> p/a.bzl"):
        analyzer(workspace).analyze(["//p:all"])


def test_errors_of_dependency_packages_keep_their_order(workspace):
    """Packages are evaluated ahead in one child; errors still surface where analysis meets them."""
    workspace.write("p/BUILD.hermetic", 'genrule(name = "a", srcs = ["//q:nope"], outs = ["o"], cmd = "x")\n')
    workspace.write("q/BUILD.hermetic", 'genrule(name = "b", outs = ["o"], cmd = "x")\n')
    workspace.write("r/BUILD.hermetic", "syntax error here\n")
    with pytest.raises(AnalysisError, match="names //q:nope, which is neither a target nor a file"):
        analyzer(workspace).analyze(["//p:a"])
    with pytest.raises(BuildFileError) as exc:
        analyzer(workspace).analyze(["//..."])
    assert str(exc.value.location).startswith("r/BUILD.hermetic:1")


def test_recursion_error_is_short(workspace):
    workspace.write("p/BUILD.hermetic", "def f():\n    f()\n\nf()\n")
    with pytest.raises(BuildFileError) as exc:
        analyzer(workspace).analyze(["//p:all"])
    assert str(exc.value.location) == "p/BUILD.hermetic:2" and "call stack overflow" in exc.value.message
    assert len(exc.value.render().splitlines()) <= 6


def test_packages_shared_among_children_analyse_as_one_child_does(workspace, monkeypatch):
    """With the packages dealt out to several children (and one package named from both shares),
    the analysis is the one a single child gives, down to the order packages were loaded in."""
    import hermetic_build.buildfile as buildfile

    for p in range(6):
        dep = ', "//shared:s"' if p % 2 else ""
        workspace.write(f"p{p}/BUILD.hermetic",
                        f'genrule(name = "t", srcs = [":u"{dep}], outs = ["o"], cmd = "x")\n'
                        f'genrule(name = "u", outs = ["o2"], cmd = "y")\n')
    workspace.write("shared/BUILD.hermetic", 'genrule(name = "s", outs = ["o"], cmd = "z")\n')

    def analyse(count):
        monkeypatch.setattr(buildfile, "_shares", lambda wanted: [wanted[i::count] for i in range(count)])
        a = analyzer(workspace)
        result = a.analyze(["//p0:t", "//p1:t", "//p2:t", "//p3:t", "//p4:t", "//p5:t"])
        return result, list(a.loader._packages)

    one, order_one = analyse(1)
    for count in (2, 3):
        many, order_many = analyse(count)
        assert order_many == order_one == ["p0", "p1", "p2", "p3", "p4", "p5", "shared"]
        assert many.actions == one.actions and many.targets == one.targets and many.packages == one.packages
