"""The no-op shortcut (hermetic_build/noop.py): a repeated build is answered from the record of the
last one, and every kind of change makes the build run the ordinary way again.

Each test first makes the shortcut answer (`settle`: files older than RACY_SECONDS, one build that
records, one that must be answered by the record), then changes one thing and checks that the
next build noticed it."""

import json
import os
import time

from hermetic_build.filecache import RACY_SECONDS

BUILD = """\
load("//defs:macros.bzl", "shout")
genrule(name = "one", srcs = ["in1.txt"], outs = ["one.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
genrule(name = "two", srcs = [":one"], outs = ["two.txt"], cmd = "rev < $(SRCS) > $(OUTS)")
genrule(name = "greet", outs = ["greet.txt"], cmd = "echo hello $GREETING > $(OUTS)")
genrule(name = "all_txt", srcs = glob(["data/*.txt"]), outs = ["all.txt"], cmd = "cat $(SRCS) /dev/null > $(OUTS)")
shout(name = "loud", src = "in1.txt")
"""
MACROS = """\
def shout(name, src):
    genrule(name = name, srcs = [src], outs = [name + ".txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
"""


def make(ws):
    ws.write("hermetic.toml", 'env_allowlist = ["GREETING"]\n')
    ws.hb("trust")  # env_allowlist passes host variables into actions: it needs the user's trust
    ws.write("a/BUILD.hermetic", BUILD)
    ws.write("a/in1.txt", "first\n")
    ws.write("a/data/x.txt", "x\n")
    ws.write("defs/BUILD.hermetic", "")
    ws.write("defs/macros.bzl", MACROS)


def build(ws, *labels):
    return json.loads(ws.hb("build", "--json", *(labels or ("//...",))).stdout)


def settle(ws, *labels):
    """Build, wait until every file (outputs too) is older than RACY_SECONDS, build again (which
    records), and check that the next identical build is answered by the record."""
    build(ws, *labels)
    time.sleep(RACY_SECONDS + 0.2)
    build(ws, *labels)
    again = build(ws, *labels)
    assert again.get("noop") is True, again
    assert again["actions"]["executed"] == 0
    return again


def out(ws, rel):
    return (ws.root / "hb-out" / rel).read_text()


def test_repeated_build_is_answered_by_the_record_with_the_same_summary(workspace):
    make(workspace)
    first = build(workspace)
    shortcut = settle(workspace)
    assert shortcut["targets"] == first["targets"]
    assert shortcut["actions"]["cached"] == first["actions"]["executed"] == 5
    # the plain output lists the same targets and outputs
    text = workspace.hb("build", "//a:two").stdout
    assert "//a:two" in text and "hb-out/a/two/two.txt" in text


def test_edited_source_is_noticed_even_with_the_same_size(workspace):
    make(workspace)
    settle(workspace)
    workspace.write("a/in1.txt", "fired\n")
    summary = build(workspace)
    assert "noop" not in summary and summary["actions"]["executed"] >= 2
    assert out(workspace, "a/two/two.txt") == "DERIF\n"
    assert out(workspace, "a/loud/loud.txt") == "FIRED\n"


def test_edited_build_file_and_bzl_file_are_noticed(workspace):
    make(workspace)
    settle(workspace)
    workspace.write("a/BUILD.hermetic", BUILD.replace("rev <", "cat <"))
    assert "noop" not in build(workspace)
    assert out(workspace, "a/two/two.txt") == "FIRST\n"
    settle(workspace)
    workspace.write("defs/macros.bzl", MACROS.replace("tr a-z A-Z", "tr a-z a-z"))
    assert "noop" not in build(workspace)
    assert out(workspace, "a/loud/loud.txt") == "first\n"


def test_changed_allowlisted_environment_variable_is_noticed(workspace, monkeypatch):
    make(workspace)
    monkeypatch.setenv("GREETING", "world")
    settle(workspace, "//a:greet")
    assert out(workspace, "a/greet/greet.txt") == "hello world\n"
    monkeypatch.setenv("GREETING", "again")
    summary = build(workspace, "//a:greet")
    assert "noop" not in summary and summary["actions"]["executed"] == 1
    assert out(workspace, "a/greet/greet.txt") == "hello again\n"
    settle(workspace, "//a:greet")
    monkeypatch.delenv("GREETING")
    assert "noop" not in build(workspace, "//a:greet")
    assert out(workspace, "a/greet/greet.txt") == "hello\n"


def test_changed_setting_is_noticed(workspace):
    make(workspace)
    settle(workspace)
    workspace.write("hermetic.toml", 'env_allowlist = ["GREETING", "OTHER"]\n')
    assert workspace.hb("build", "//...", check=False).returncode == 2  # a changed allowlist is asked again
    workspace.hb("trust")
    assert "noop" not in build(workspace)


def test_deleted_or_modified_published_output_is_restored(workspace):
    make(workspace)
    settle(workspace)
    published = workspace.root / "hb-out/a/two/two.txt"
    published.unlink()
    assert "noop" not in build(workspace)
    assert published.read_text() == "TSRIF\n"
    settle(workspace)
    published.write_text("XXXXX\n")  # same size
    assert "noop" not in build(workspace)
    assert published.read_text() == "TSRIF\n"


def test_cache_gc_and_clean_are_noticed(workspace):
    make(workspace)
    settle(workspace)
    workspace.hb("cache", "gc", "--max-size", "0")
    summary = build(workspace)
    assert "noop" not in summary and summary["actions"]["executed"] == 5
    settle(workspace)
    workspace.hb("clean")
    summary = build(workspace)
    assert "noop" not in summary and summary["actions"]["cached"] == 5
    assert out(workspace, "a/two/two.txt") == "TSRIF\n"


def test_new_package_and_new_glob_match_are_noticed(workspace):
    make(workspace)
    settle(workspace)
    workspace.write("a/data/y.txt", "y\n")
    assert "noop" not in build(workspace)
    assert out(workspace, "a/all_txt/all.txt") == "x\ny\n"
    settle(workspace)
    workspace.write("b/BUILD.hermetic", 'genrule(name = "new", outs = ["n.txt"], cmd = "echo n > $(OUTS)")\n')
    summary = build(workspace)
    assert "noop" not in summary and "//b:new" in summary["targets"]


def test_other_patterns_and_fresh_files_do_not_use_the_record(workspace):
    make(workspace)
    settle(workspace)
    assert "noop" not in build(workspace, "//a:one")  # another request
    build(workspace)  # records //... again (files are old)
    workspace.write("a/in1.txt", "first\n")  # same content, fresh stamp: too new to record
    build(workspace)
    assert "noop" not in build(workspace)


def test_ordinary_no_op_build_does_not_rewrite_action_records(workspace):
    """Without the record (files too fresh), a build with nothing to do still leaves actions.json
    (the keys `hb explain` compares) as it was; a change rewrites it."""
    make(workspace)
    build(workspace)
    state = next((workspace.cache / "workspaces").iterdir())
    records = state / "actions.json"
    before = os.stat(records)
    summary = build(workspace)
    assert "noop" not in summary and summary["actions"]["executed"] == 0
    after = os.stat(records)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    workspace.write("a/in1.txt", "other\n")
    build(workspace)
    assert os.stat(records).st_ino != before.st_ino
