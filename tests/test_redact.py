import pytest

from hermetic_build.redact import for_terminal, public_url, redact, redact_url


@pytest.mark.parametrize("url, public, shown", [
    ("https://alice:pw@mirror/c/linux-64/x.conda", "https://mirror/c/linux-64/x.conda",
     "https://***@mirror/c/linux-64/x.conda"),
    ("https://conda.anaconda.org/t/tk-1/chan/noarch/a.conda", "https://conda.anaconda.org/chan/noarch/a.conda",
     "https://conda.anaconda.org/t/***/chan/noarch/a.conda"),
    ("https://h/t/${TOKEN}/chan", "https://h/t/${TOKEN}/chan", "https://h/t/${TOKEN}/chan"),  # names no secret
    ("https://h/pkgs/t/x.conda", "https://h/pkgs/t/x.conda", "https://h/pkgs/t/x.conda"),  # a file named t/x
    ("https://s3/x.whl?X-Amz-Signature=abc&v=1", "https://s3/x.whl?v=1", "https://s3/x.whl?X-Amz-Signature=***&v=1"),
    ("https://idx/simple/?token=abc", "https://idx/simple/", "https://idx/simple/?token=***"),
    ("conda-forge", "conda-forge", "conda-forge"),
    ("//u:pw@host/c", "//host/c", "//***@host/c"),  # no scheme
    ("//third_party/t/chan:c", "//third_party/t/chan:c", "//third_party/t/chan:c"),  # a label, no token
    ("https://h/cb#access_token=abc&x=1", "https://h/cb#x=1", "https://h/cb#access_token=***&x=1"),
    ("https://h/x.whl#sha256=" + "a" * 64, "https://h/x.whl#sha256=" + "a" * 64, "https://h/x.whl#sha256=" + "a" * 64),
    ("file:///tmp/c/x.conda", "file:///tmp/c/x.conda", "file:///tmp/c/x.conda"),
])
def test_urls(url, public, shown):
    assert public_url(url) == public
    assert redact_url(url) == shown


def test_text_and_terminal():
    assert redact("error: http://u:p@h:1/x is unavailable") == "error: http://***@h:1/x is unavailable"
    assert for_terminal("a\x1b]52;c;eA==\x07b\rc\u202ed\x9b\n\tok") == "a\\x1b]52;c;eA==\\x07b\\x0dc\\u202ed\\x9b\n\tok"


def test_invisible_and_line_breaking_characters_are_escaped():
    """U+2028 breaks a line where a terminal or log viewer shows text; zero-width characters and the
    byte-order mark hide in names (helper 52's probe)."""
    assert for_terminal("a\u2028b\u2029c\u200bd\u200de\u2060f\ufeffg") == \
        "a\\u2028b\\u2029c\\u200bd\\u200de\\u2060f\\ufeffg"
