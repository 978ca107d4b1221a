"""Secrets out of URLs, and untrusted text made safe for a terminal.

Credentials reach hb inside URLs: `https://user:password@mirror/...`, anaconda.org's
`https://conda.anaconda.org/t/<TOKEN>/channel`, a signed object-store URL's `?X-Amz-Signature=`.
hb never stores them: `public_url` is the URL that lock files, action parameters (so keys, caches and
remotes), conda-meta records, SBOMs and provenance get; fetches take credentials from the user's
netrc at request time (rules/conda/connections.py). `for_terminal` is the one filter everything hb
prints goes through (errors, progress, command output): it masks any credential left in a URL and
escapes control characters, so a package name, a server's error body or a command's output cannot
move the cursor, rewrite a line (`\\r`), set the window title or write the clipboard (OSC 52).
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# a query parameter whose value is a credential (case-insensitive; X-Amz-*, X-Goog-* included)
_SECRET_PARAM = re.compile(r"(?i)^(.*token.*|.*secret.*|.*passw.*|pwd|.*signature.*|sig|.*credential.*|"
                           r"auth.*|.*api[_-]?key.*|key|access[_-]?key.*|session.*)$")
# anaconda.org / Quetz / Anaconda Server: a token as a path component after /t/ (with more path after
# it: a file named t/x.conda is no token). `${VAR}`, `$VAR` and
# conda's own `<TOKEN>` mask name no secret and are kept.
_TOKEN_PATH = re.compile(r"/t/(?!\$\{?[A-Za-z_][A-Za-z0-9_]*\}?(?:/|$)|<TOKEN>(?:/|$))[^/]+(?=/)")
# URLs inside free text (error bodies, exception messages, command output)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def _split(url: str):
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:  # an invalid IPv6 netloc: no parts to clean
        return None


def _clean(url: str, replacement: str | None) -> str:
    """url with its userinfo, /t/ token and secret query values replaced by `replacement`
    (None: removed: no userinfo, no /t/<token> component, no secret parameter)."""
    parts = _split(url)
    if parts is None or not (parts.scheme or parts.netloc):  # `//user:pw@host/...` has no scheme
        return url
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        netloc = host if replacement is None else f"{replacement}@{host}"
    path = parts.path
    if parts.scheme:  # not `//pkg/t/x:label`, a channel label of a workspace
        path = _TOKEN_PATH.sub("" if replacement is None else f"/t/{replacement}", path)
    # a fragment is never sent, but OAuth-style URLs carry tokens there (#access_token=...)
    query, fragment = _without_secrets(parts.query, replacement), _without_secrets(parts.fragment, replacement)
    if (netloc, path, query, fragment) == (parts.netloc, parts.path, parts.query, parts.fragment):
        return url
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, fragment))


def _without_secrets(pairs: str, replacement: str | None) -> str:
    """`a=1&token=x` with each secret parameter's value replaced (None: the parameter removed)."""
    if not pairs or "=" not in pairs:
        return pairs
    kept = []
    for item in pairs.split("&"):
        name, eq, _value = item.partition("=")
        if eq and _SECRET_PARAM.match(urllib.parse.unquote_plus(name)):
            if replacement is not None:
                kept.append(f"{name}={replacement}")
        else:
            kept.append(item)
    return "&".join(kept)


def public_url(url: str) -> str:
    """url without credentials: what hb records, keys, installs and publishes."""
    return _clean(url, None)


def redact_url(url: str) -> str:
    """url with each credential replaced by *** (its shape kept, for messages)."""
    return _clean(url, MASK)


def redact(text: str) -> str:
    """text with every URL in it redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


# C0 controls but newline and tab, DEL, C1 controls (8-bit CSI/OSC), Unicode's bidirectional marks,
# overrides and isolates (text that displays in another order than it reads), its line and paragraph
# separators, and the invisible ones (zero-width spaces and joiners, word joiner, byte-order mark)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """text with every control character but newline and tab written as an escape (`\\x1b`)."""
    return _UNSAFE.sub(_escape, text)


def for_terminal(text: str) -> str:
    """What hb prints: credentials in URLs masked, control characters escaped."""
    return printable(redact(text))
