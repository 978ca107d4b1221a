"""End-to-end: the real `hb` command on temporary workspaces."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from support import require_tool

CHAIN = {
    "a/BUILD.hermetic": """\
        genrule(name = "one", srcs = ["in1.txt"], outs = ["one.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
        genrule(name = "two", srcs = ["in2.txt"], outs = ["two.txt"], cmd = "rev < $(SRCS) > $(OUTS)")
    """,
    "a/in1.txt": "first\n",
    "a/in2.txt": "second\n",
    "b/BUILD.hermetic": """\
        genrule(name = "join", srcs = ["//a:one", "//a:two"], outs = ["join.txt"], cmd = "cat $(SRCS) > $(OUTS)")
        genrule(name = "count", srcs = [":join"], outs = ["count.txt"], cmd = "wc -l < $(SRCS) > $(OUTS)")
    """,
}


CHAIN = {k: textwrap.dedent(v) for k, v in CHAIN.items()}


def make_chain(ws):
    for rel, text in CHAIN.items():
        ws.write(rel, text)


def executed(summary):
    return summary["actions"]["executed"], summary["actions"]["cached"]


def test_chain_caches_and_reruns_only_downstream(workspace):
    make_chain(workspace)
    first = workspace.build_json("//b:count")
    assert executed(first) == (4, 0)
    assert (workspace.root / "hb-out/b/count/count.txt").read_text().strip() == "2"
    assert (workspace.root / "hb-out/b/count/count.txt").exists()
    assert first["targets"]["//b:count"][0]["path"] == "hb-out/b/count/count.txt"

    assert executed(workspace.build_json("//b:count")) == (0, 4)

    workspace.write("a/in2.txt", "changed\n")
    explain = workspace.hb("explain", "//b:count").stdout
    assert "input a/in2.txt changed" in explain
    assert "Genrule //a:one" not in explain
    summary = workspace.build_json("//b:count")
    # two and join re-run; count re-runs only if join's output changed (it did: new content)
    assert executed(summary) == (3, 1)
    assert executed(workspace.build_json("//b:join")) == (0, 3)
    assert (workspace.root / "hb-out/b/join/join.txt").read_text() == "FIRST\ndegnahc\n"
    assert workspace.hb("explain", "//b:count").stdout.startswith("everything is up to date")


def test_early_cutoff_when_output_unchanged(workspace):
    make_chain(workspace)
    workspace.build_json("//b:count")
    workspace.write("a/in1.txt", "FIRST\n")  # uppercased output is identical
    assert executed(workspace.build_json("//b:count")) == (1, 3)


def test_explain_names_changed_attribute(workspace):
    make_chain(workspace)
    workspace.build_json("//b:count")
    workspace.write("a/BUILD.hermetic", CHAIN["a/BUILD.hermetic"].replace("rev <", "rev <  "))
    out = workspace.hb("explain", "//b:count").stdout
    assert "parameter 'cmd' changed" in out and "Genrule //a:two" in out


def test_query_aquery_graph(workspace):
    make_chain(workspace)
    assert workspace.hb("query", "deps(//b:count)").stdout.split() == ["//a:one", "//a:two", "//b:count", "//b:join"]
    assert workspace.hb("query", "rdeps(//..., //a:two)").stdout.split() == ["//a:two", "//b:count", "//b:join"]
    assert workspace.hb("query", "kind(genrule, //a:all)").stdout.split() == ["//a:one", "//a:two"]
    aq = json.loads(workspace.hb("aquery", "--json", "//b:join").stdout)
    assert [a["owner"] for a in aq] == ["//a:one", "//a:two", "//b:join"]
    assert aq[0]["key"] and aq[0]["inputs"] == {"a/in1.txt": aq[0]["inputs"]["a/in1.txt"]}
    assert aq[2]["key"] is None and aq[2]["status"] == "would run"
    dot = workspace.hb("graph", "//b:count").stdout
    assert '"//b:count" -> "//b:join"' in dot
    require_tool("dot")
    workspace.hb("graph", "//b:count", "--format", "png", "-o", str(workspace.root / "g.png"))
    assert (workspace.root / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_relative_labels_from_package_dir(workspace):
    make_chain(workspace)
    proc = workspace.hb("build", "--json", ":join", cwd=workspace.root / "b")
    assert list(json.loads(proc.stdout)["targets"]) == ["//b:join"]


@pytest.mark.parametrize("build, expected_code, expected", [
    ('genrule(name = "x", outs = ["o"] cmd = "x")\n', 3, "p/BUILD.hermetic:1"),
    ('genrule(name = "x", outs = ["o"], cmd = "x", sources = [])\n', 3, "p/BUILD.hermetic:1: genrule() got an unknown attribute 'sources'"),
    ('genrule(name = "x", srcs = [":y"], outs = ["o"], cmd = "x")\n', 4, "neither a target nor a file"),
    # README: 4 = analysis (unknown label, cycle, bad attribute value)
    ('genrule(name = "x", outs = "o", cmd = "x")\n', 4, "p/BUILD.hermetic:1: genrule() attribute 'outs' must be a string_list"),
    ('genrule(name = "x", outs = ["o"], cmd = 5)\n', 4, "p/BUILD.hermetic:1: genrule() attribute 'cmd' must be a string"),
    ('genrule(name = "x", outs = ["o", "o"], cmd = "x")\n', 4, "lists 'o' twice"),
    ('genrule(name = "x", outs = ["o"])\n', 3, "p/BUILD.hermetic:1: genrule() is missing mandatory attribute 'cmd'"),
    ('genrule(name = "x", outs = ["o"], cmd = "x")\ngenrule(name = "x/o", outs = ["y"], cmd = "x")\n', 4,
     "p/BUILD.hermetic:2: //p:x/o: output hb-out/p/x/o/y is inside hb-out/p/x/o, an output of //p:x (p/BUILD.hermetic:1)"),
    ('x = [0] * 2000000000\n', 3, "p/BUILD.hermetic: evaluation used more than starlark_memory_mb = 2048 MiB"),
])
def test_errors_have_location_and_exit_code(workspace, build, expected_code, expected):
    workspace.write("p/BUILD.hermetic", build)
    proc = workspace.hb("build", "//p:all", check=False)
    assert proc.returncode == expected_code, proc.stderr
    assert expected in proc.stderr


@pytest.mark.parametrize("path, build, label, expected", [
    # hb's own names at the root of hb-out/ (F8: an IsADirectoryError at every later build)
    ("BUILD.hermetic", 'genrule(name = ".hb-manifest.json", outs = ["o"], cmd = "echo > $(OUTS)")\n',
     "//:.hb-manifest.json",
     "analysis error: BUILD.hermetic:1: //:.hb-manifest.json: output 'o' (hb-out/.hb-manifest.json/o) would be "
     "hb-out/.hb-manifest.json, a name hb keeps for its record of the outputs it published"),
    ("BUILD.hermetic", 'genrule(name = "a", outs = ["o"], cmd = "x")\ngenrule(name = ".internal", outs = ["o"], '
     'cmd = "echo > $(OUTS)")\n', "//:.internal",
     "analysis error: BUILD.hermetic:2: //:.internal: output 'o' (hb-out/.internal/o) would be hb-out/.internal, "
     "a name hb keeps for its intermediate outputs"),
    # a name the sweep of a killed build's temporary files would delete
    ("p/BUILD.hermetic", 'genrule(name = "x", outs = ["d/.o.hb-tmp-99999999-ab"], cmd = "x")\n', "//p:x",
     "analysis error: p/BUILD.hermetic:1: //p:x: output 'd/.o.hb-tmp-99999999-ab' (hb-out/p/x/d/.o.hb-tmp-99999999-ab) "
     "has a part '.o.hb-tmp-99999999-ab' named like one of hb's temporary files, which hb deletes"),
    # control characters in an output (F9: "ValueError: embedded null byte" and a traceback)
    ("p/BUILD.hermetic", 'genrule(name = "x", outs = ["a\\x00b"], cmd = "x")\n', "//p:x",
     "analysis error: p/BUILD.hermetic:1: //p:x: invalid output path 'a\\x00b': it contains a control character"),
    ("p/BUILD.hermetic", 'genrule(name = "x", outs = ["a\\nb"], cmd = "x")\n', "//p:x",
     "analysis error: p/BUILD.hermetic:1: //p:x: invalid output path 'a\\nb': it contains a control character"),
    # a $(location) that is not a label (F9: LabelSyntaxError and a traceback)
    ("p/BUILD.hermetic", 'genrule(name = "x", outs = ["o"], cmd = "echo $(location //../..:x) > $(OUTS)")\n', "//p:x",
     "analysis error: p/BUILD.hermetic:1: //p:x: $(location //../..:x) in cmd: invalid package name in label "
     "'//../..:x'"),
])
def test_outputs_hb_cannot_write_are_refused_at_their_target(workspace, path, build, label, expected):
    workspace.write(path, build)
    proc = workspace.hb("build", label, check=False)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_directory_where_the_manifest_belongs_is_replaced(workspace):
    """What a root target named .hb-manifest.json published before the name was reserved: the next
    build removes it and writes the manifest, instead of failing with IsADirectoryError every time."""
    workspace.write("BUILD.hermetic", 'genrule(name = "y", outs = ["o"], cmd = "echo y > $(OUTS)")\n')
    (workspace.root / "hb-out/.hb-manifest.json").mkdir(parents=True)
    (workspace.root / "hb-out/.hb-manifest.json/o").write_text("\n")
    workspace.hb("build", "//:y")
    assert "hb-out/y/o" in json.loads((workspace.root / "hb-out/.hb-manifest.json").read_text())
    workspace.hb("build", "//:y")


def test_unknown_label_suggestion_and_usage_errors(workspace):
    make_chain(workspace)
    proc = workspace.hb("build", "//b:jion", check=False)
    assert proc.returncode == 4 and "did you mean //b:join?" in proc.stderr
    proc = workspace.hb("build", "//b:bad:label", check=False)
    assert proc.returncode == 4
    proc = workspace.hb("build", check=False)
    assert proc.returncode == 2


@pytest.mark.parametrize("command", [["build"], ["query"], ["aquery"], ["lock"], ["explain"]])
def test_a_pattern_that_matches_nothing_is_a_usage_error(workspace, command):
    proc = workspace.hb(*command, "//...", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"no targets match //...: the workspace at {workspace.root} has no BUILD.hermetic files" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_separate_builds_of_nested_outputs_replace_each_other_in_hb_out(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "a", outs = ["x"], cmd = "echo a > $(OUTS)")\n'
                                        'genrule(name = "a/x", outs = ["y"], cmd = "echo y > $(OUTS)")\n')
    workspace.hb("build", "//p:a")
    workspace.hb("build", "//p:a/x")
    assert (workspace.root / "hb-out/p/a/x/y").read_text() == "y\n"
    workspace.hb("build", "//p:a")
    assert (workspace.root / "hb-out/p/a/x").read_text() == "a\n"


@pytest.mark.parametrize("args, expected", [
    (["build", "--frob", "//..."], "No such option"),
    (["build", "//../..."], "invalid package in pattern"),
    (["frob"], "No such command"),
])
def test_bad_command_lines(workspace, args, expected):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "a", outs = ["x"], cmd = "echo > $(OUTS)")\n')
    proc = workspace.hb(*args, check=False)
    assert proc.returncode in (2, 4) and expected in proc.stderr and "Traceback" not in proc.stderr


def test_bad_starlark_settings(workspace):
    (workspace.root / "hermetic.toml").write_text("starlark_memory_mb = 0\n")
    proc = workspace.hb("build", "//...", check=False)
    assert proc.returncode == 2 and "'starlark_memory_mb' must be a positive integer" in proc.stderr


def test_cycle_exit_code(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="x", srcs=[":y"], outs=["o"], cmd="x")\ngenrule(name="y", srcs=[":x"], outs=["o"], cmd="x")\n')
    proc = workspace.hb("build", "//p:x", check=False)
    assert proc.returncode == 4
    assert "dependency cycle: //p:x -> //p:y -> //p:x" in proc.stderr or "//p:y -> //p:x -> //p:y" in proc.stderr


def test_undeclared_file_read_fails_in_bwrap(workspace):
    require_tool("bwrap")
    secret = workspace.write("p/secret.txt", "secret")
    workspace.write("p/BUILD.hermetic", f'genrule(name="x", outs=["o"], cmd="cat {secret} > $(OUTS)")\n'
                    'genrule(name="net", outs=["o"], cmd="cat < /dev/tcp/127.0.0.1/22 > $(OUTS) || exit 7")\n'
                    'genrule(name="rel", outs=["o"], cmd="cat p/secret.txt > $(OUTS)")\n')
    for target in ("//p:x", "//p:rel"):
        proc = workspace.hb("build", target, check=False)
        assert proc.returncode == 5, proc.stderr
        assert "No such file or directory" in proc.stderr
    proc = workspace.hb("build", "//p:net", check=False)
    assert proc.returncode == 5


def test_sandbox_environment_is_scrubbed(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="env", outs=["env.txt"], cmd="env | sort > $(OUTS)")\n')
    env = workspace.env()
    env["SECRET_TOKEN"] = "leak"
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "//p:env"], cwd=workspace.root,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (workspace.root / "hb-out/p/env/env.txt").read_text()
    assert "SECRET_TOKEN" not in text
    assert "SOURCE_DATE_EPOCH=0" in text and "PATH=/usr/local/bin:/usr/bin:/bin" in text
    assert "HOME=/hb/home" in text


def test_missing_declared_output(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="x", outs=["a", "b"], cmd="touch hb-out/p/x/a")\n')
    proc = workspace.hb("build", "//p:x", check=False)
    assert proc.returncode == 5
    assert "//p:x: Genrule failed: declared output hb-out/p/x/b was not created" in proc.stderr


def test_failing_command_shows_stderr(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="x", outs=["a"], cmd="echo boom >&2; exit 3")\n')
    proc = workspace.hb("build", "//p:x", check=False)
    assert proc.returncode == 5 and "status 3" in proc.stderr and "boom" in proc.stderr


def test_corrupt_blob_is_detected_and_rebuilt(workspace):
    make_chain(workspace)
    first = workspace.build_json("//b:count")
    digest = first["targets"]["//b:count"][0]["digest"].split("/")[0]
    join_digest = workspace.build_json("//b:join")["targets"]["//b:join"][0]["digest"].split("/")[0]
    for h in (digest, join_digest):
        blob = workspace.cache / "cas" / h[:2] / h
        os.chmod(blob, 0o644)
        data = bytearray(blob.read_bytes())
        data[0] ^= 0xFF
        blob.write_bytes(bytes(data))
    (workspace.root / "hb-out/b/count/count.txt").unlink()
    workspace.write("b/BUILD.hermetic", CHAIN["b/BUILD.hermetic"] + 'genrule(name="more", srcs=[":join"], outs=["m"], cmd="cp $(SRCS) $(OUTS)")\n')
    summary = workspace.build_json("//b:count", "//b:more")
    assert (workspace.root / "hb-out/b/count/count.txt").read_text().strip() == "2"
    assert (workspace.root / "hb-out/b/more/m").read_text() == "FIRST\ndnoces\n"
    assert summary["actions"]["executed"] >= 2
    assert executed(workspace.build_json("//b:count", "//b:more")) == (0, 5)


def test_kill_9_mid_build_leaves_usable_cache(workspace):
    workspace.write("p/BUILD.hermetic", "\n".join(
        f'genrule(name="s{i}", outs=["o{i}"], cmd="head -c 3000000 /dev/zero > $(OUTS); sleep 0.3")' for i in range(8))
        + '\ngenrule(name="all", srcs=[' + ",".join(f'":s{i}"' for i in range(8)) + '], outs=["all"], cmd="cat $(SRCS) | wc -c > $(OUTS)")\n')
    proc = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "-j", "2", "//p:all"],
                            cwd=workspace.root, env=workspace.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    time.sleep(1.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = workspace.build_json("//p:all")
    assert summary["actions"]["executed"] + summary["actions"]["cached"] == 9
    assert (workspace.root / "hb-out/p/all/all").read_text().strip() == str(8 * 3000000)


def test_two_concurrent_builds_share_a_cache(workspace, tmp_path):
    make_chain(workspace)
    workspace.write("b/BUILD.hermetic", CHAIN["b/BUILD.hermetic"] + "\n".join(
        f'genrule(name="p{i}", srcs=[":join"], outs=["o"], cmd="sleep 0.1; cat $(SRCS) > $(OUTS); echo {i} >> $(OUTS)")'
        for i in range(6)) + "\n")
    procs = [subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "--json", "//b:all"],
                              cwd=workspace.root, env=workspace.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert executed(workspace.build_json("//b:all")) == (0, 10)
    assert (workspace.root / "hb-out/b/p3/o").read_text().endswith("3\n")


def test_clean_cache_stats_and_gc(workspace):
    make_chain(workspace)
    workspace.build_json("//b:count")
    stats = json.loads(workspace.hb("cache", "stats", "--json").stdout)
    assert stats["local"]["blobs"] > 0 and stats["last_build"]["executed"] == 4
    workspace.hb("cache", "gc", "--max-size", "0")
    assert json.loads(workspace.hb("cache", "stats", "--json").stdout)["local"]["bytes"] == 0
    workspace.hb("clean")
    assert not (workspace.root / "hb-out").exists()
    assert executed(workspace.build_json("//b:count")) == (4, 0)


def test_outputs_in_hb_out_are_restored_when_deleted_or_edited(workspace):
    make_chain(workspace)
    workspace.build_json("//b:join")
    out = workspace.root / "hb-out/b/join/join.txt"
    out.write_text("tampered")
    assert executed(workspace.build_json("//b:join")) == (0, 3)
    assert out.read_text() == "FIRST\ndnoces\n"


def test_gc_waits_for_a_running_build(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name="slow", outs=["o"], cmd="sleep 2; echo done > $(OUTS)")\n')
    build = subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", "build", "//p:slow"], cwd=workspace.root,
                             env=workspace.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    started = time.monotonic()
    gc = workspace.hb("cache", "gc", "--max-size", "0")
    waited = time.monotonic() - started
    out, err = build.communicate(timeout=60)
    assert build.returncode == 0, err
    assert waited > 0.5, "gc must wait for the build holding the cache"
    assert "removed" in gc.stdout
    assert (workspace.root / "hb-out/p/slow/o").read_text() == "done\n"


def test_plain_progress_lines_when_not_a_tty(workspace):
    make_chain(workspace)
    err = workspace.hb("build", "//b:count").stderr
    assert "Genrule //a:one (" in err and "[4/4] Genrule //b:count (" in err and "4 actions executed, 0 cached" in err


def test_a_full_disk_is_one_line_not_a_traceback(workspace, monkeypatch, capsys):
    """A full disk while publishing into hb-out/ (or writing the cache) ended hb with a Python
    traceback ending in "OSError: [Errno 28] No space left on device"."""
    import errno

    from hermetic_build import cli
    from hermetic_build.build import Session

    make_chain(workspace)
    monkeypatch.setenv("HB_CACHE_DIR", str(workspace.cache))

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Session, "build", full)
    with pytest.raises(SystemExit) as info:
        cli.main(["-C", str(workspace.root), "build", "//b:count"], prog_name="hb")
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "error: no space left on the device: No space left on device" in err and "hb cache gc" in err
    assert "Traceback" not in err
