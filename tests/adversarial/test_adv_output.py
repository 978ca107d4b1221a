"""What hb prints (redact.for_terminal): control characters in text that comes from BUILD files,
commands, packages or servers are escaped, never written raw to the terminal; credentials in URLs are
masked in messages and in the build record."""

import json

ESC_PAYLOADS = "\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2K\rall good\x9b31m\u202e"


def _assert_inert(text: str) -> None:
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in text, repr(text)


def test_command_output_with_escape_sequences_is_escaped(workspace):
    workspace.write("p/BUILD.hermetic", f'genrule(name = "g", outs = ["o"], cmd = "printf \'{ESC_PAYLOADS!s}\' >&2; exit 1")\n'
                    .replace("\x1b", "\\\\033").replace("\x07", "\\\\007").replace("\r", "\\\\r")
                    .replace("\x9b", "\\\\233").replace("\u202e", "\\\\342\\\\200\\\\256"))
    proc = workspace.hb("build", "//p:g", check=False)
    assert proc.returncode != 0
    _assert_inert(proc.stderr)
    assert "\\x1b]52;c;" in proc.stderr, proc.stderr  # shown, as an escape


def test_build_file_strings_are_escaped_in_errors_and_prints(workspace):
    workspace.write("p/BUILD.hermetic", 'print("\\x1b]0;owned\\x07")\nfail("\\x1b[2J\\rcleared")\n')
    proc = workspace.hb("build", "//p:all", check=False)
    assert proc.returncode != 0
    _assert_inert(proc.stderr + proc.stdout)


def test_query_output_of_hostile_strings_is_escaped(workspace):
    # already safe before redact.for_terminal: aquery shows parameters as JSON
    workspace.write("p/BUILD.hermetic", 'genrule(name = "g", outs = ["o"], cmd = "echo \\x1b]52;c;eA==\\x07 > $(OUTS)")\n')
    proc = workspace.hb("aquery", "//p:g")
    _assert_inert(proc.stdout + proc.stderr)
    data = json.loads(workspace.hb("aquery", "--json", "//p:g").stdout)  # JSON escapes it; still the same string
    assert "\x1b]52" in data[0]["params"]["cmd"]


def test_remote_cache_password_is_neither_printed_nor_recorded(workspace):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "g", outs = ["o"], cmd = "echo hi > $(OUTS)")\n')
    url = "http://hb:s3cretRC@127.0.0.1:1/"
    warned = workspace.hb("build", "--remote-cache", url, "//p:g")
    failed = workspace.hb("build", "--remote-cache", url, "--remote-required", "--no-remote-upload", "//p:g",
                          check=False)
    assert failed.returncode != 0 and "http://***@127.0.0.1:1/" in failed.stderr, failed.stderr
    assert "s3cretRC" not in warned.stderr + failed.stderr
    for path in workspace.cache.rglob("*"):
        assert not path.is_file() or b"s3cretRC" not in path.read_bytes(), path
