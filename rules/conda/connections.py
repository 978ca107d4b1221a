"""HTTP GETs over kept-alive connections: each thread keeps one connection per (scheme, host, port),
so the hundreds of fetches of an environment pay for one TCP (and TLS) handshake per thread and
server instead of one per package. Redirects are followed (http and https only); a connection the
server closed while it sat idle is replaced once, before anything of the response was read. URLs
that a proxy setting (http_proxy, https_proxy, no_proxy) applies to go through urllib, which honours it.

Credentials for a private channel or index come from the user's files, by host: the JSON file that
`RATTLER_AUTH_FILE` names (rattler's and pixi's format, which `hb lock`'s solver reads too:
`{"host": {"BasicHTTP": {"username": .., "password": ..}} | {"BearerToken": ..} | {"CondaToken": ..}}`,
`*.domain` for its subdomains), else the netrc (`$NETRC`, else `~/.netrc`: `machine HOST login USER
password SECRET`; its `default` entry is never used: a lock can name any host). They go to that host
only, and only over https or to this machine's loopback: a lock (a checkout's file) cannot have them
sent in clear. A URL's own userinfo or /t/<token> never gets here: hb strips them (redact.py)."""

from __future__ import annotations

import base64
import functools
import http.client
import ipaddress
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request

USER_AGENT = "hermetic-build"
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
# a request on a reused connection that fails with one of these before a status line arrives: the
# server closed the idle connection (keep-alive timeout); the request is sent again on a new one
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError, BrokenPipeError)

_local = threading.local()
_tls: ssl.SSLContext | None = None
_tls_lock = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    global _tls
    with _tls_lock:
        if _tls is None:
            _tls = ssl.create_default_context()  # what urllib.request.urlopen uses: system CAs, hostname checked
        return _tls


@functools.cache
def _proxies() -> dict:
    return urllib.request.getproxies()  # read once: the environment of an hb process does not change


@functools.cache
def _netrc_hosts() -> dict:
    """host -> (login, account, password) of the user's netrc; {} without one (or unreadable)."""
    import netrc

    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return dict(netrc.netrc(path).hosts)
    except (OSError, netrc.NetrcParseError):
        return {}


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@functools.cache
def _auth_file() -> dict:
    """RATTLER_AUTH_FILE's host -> authentication; {} without one (or unreadable, or not a JSON object)."""
    import json

    path = os.environ.get("RATTLER_AUTH_FILE")
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _credential(host: str, port: int | None):
    """("basic", user, password) | ("bearer", token) | ("conda", token) for host, or None."""
    entries = _auth_file()
    names = [f"{host}:{port}", host] if port else [host]
    labels = host.split(".")
    names += ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]  # *.prefix.dev for repo.prefix.dev
    for name in names:
        entry = entries.get(name)
        if entry is None:
            continue
        basic = entry.get("BasicHTTP") or entry.get("BasicHttp")
        if isinstance(basic, dict):
            return "basic", str(basic.get("username", "")), str(basic.get("password", ""))
        for kind, key in (("bearer", "BearerToken"), ("conda", "CondaToken")):
            if isinstance(entry.get(key), str):
                return kind, entry[key]
    found = _netrc_hosts().get(host)
    return ("basic", found[0], found[2] or "") if found is not None else None


def authenticate(parsed) -> tuple[dict, str]:
    """(headers, path prefix) for this request's host from the user's credentials (the module's doc);
    the prefix is `/t/<token>` for a conda token. Never a part of a URL hb records or shows."""
    host = parsed.hostname or ""
    if not (parsed.scheme == "https" or _loopback(host)):
        return {}, ""
    try:
        port = parsed.port
    except ValueError:
        port = None
    found = _credential(host, port)
    if found is None:
        return {}, ""
    if found[0] == "basic":
        return {"Authorization": "Basic " + base64.b64encode(f"{found[1]}:{found[2]}".encode()).decode()}, ""
    if found[0] == "bearer":
        return {"Authorization": f"Bearer {found[1]}"}, ""
    return {}, "/t/" + urllib.parse.quote(found[1], safe="")


def _uses_proxy(parsed: urllib.parse.ParseResult) -> bool:
    return parsed.scheme in _proxies() and not urllib.request.proxy_bypass(parsed.hostname or "")


def _connection(scheme: str, netloc: str, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    """This thread's connection to netloc, and whether it was used before."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    conn = pool.get((scheme, netloc))
    if conn is not None:
        return conn, True
    if scheme == "https":
        conn = http.client.HTTPSConnection(netloc, timeout=timeout, context=_tls_context())
    else:
        conn = http.client.HTTPConnection(netloc, timeout=timeout)
    pool[(scheme, netloc)] = conn
    return conn, False


def _drop(scheme: str, netloc: str) -> None:
    conn = getattr(_local, "pool", {}).pop((scheme, netloc), None)
    if conn is not None:
        conn.close()


class Response:
    """The body of a successful GET, read in chunks; close() returns its connection to the pool
    only when the body was read to its end (else the connection is closed)."""

    def __init__(self, response, release):
        self._response = response
        self._release = release
        self.length = response.length  # Content-Length, None when the server sent none

    def read(self, size: int) -> bytes:
        return self._response.read(size)

    def read1(self, size: int) -> bytes:
        """At most one socket read (so a caller can give up on a server that trickles)."""
        return self._response.read1(size)

    def close(self) -> None:
        if self._response.length == 0:
            self._response.close()  # read to its end through read1, which leaves it open
        self._release(self._response.isclosed() and not self._response.length)  # read to its end

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def get(url: str, timeout: float):
    """Open url for reading (a Response, or urllib's response where a proxy applies). Raises
    urllib.error.HTTPError for an error status, like urllib.request.urlopen."""
    for _hop in range(MAX_REDIRECTS + 1):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise urllib.error.URLError(f"cannot fetch {url}: only http and https URLs are followed")
        if _uses_proxy(urllib.parse.urlparse(url)):
            headers, prefix = authenticate(parsed)
            if prefix:
                url = urllib.parse.urlunsplit(parsed._replace(path=prefix + parsed.path))
            return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers}),
                                          timeout=timeout)
        response = _send(parsed, timeout)
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            left = 1 << 20  # a redirect's body is read (to reuse the connection) up to 1 MiB, never kept
            while left > 0 and (chunk := response.read(min(left, 65536))):
                left -= len(chunk)
            _finish(parsed, response, reusable=response.isclosed() and not response.length)
            if not location:
                raise urllib.error.HTTPError(url, response.status, "redirect without a Location", response.msg, None)
            url = urllib.parse.urljoin(url, location)
            continue
        if response.status != 200:
            reason, headers = response.reason, response.msg
            _drop(parsed.scheme, parsed.netloc)
            raise urllib.error.HTTPError(url, response.status, reason, headers, None)
        return Response(response, lambda reusable, p=parsed, r=response: _finish(p, r, reusable))
    raise urllib.error.HTTPError(url, 310, f"more than {MAX_REDIRECTS} redirects", None, None)


def _send(parsed: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPResponse:
    headers, prefix = authenticate(parsed)
    target = urllib.parse.urlunsplit(("", "", prefix + (parsed.path or "/"), parsed.query, ""))
    while True:
        conn, reused = _connection(parsed.scheme, parsed.netloc, timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, **headers})
            return conn.getresponse()
        except _STALE:
            _drop(parsed.scheme, parsed.netloc)
            if not reused:
                raise
        except BaseException:
            _drop(parsed.scheme, parsed.netloc)
            raise


def _finish(parsed: urllib.parse.SplitResult, response: http.client.HTTPResponse, reusable: bool) -> None:
    """Keep the connection for the next GET when the response was read whole, else close it."""
    if not reusable or response.will_close:
        _drop(parsed.scheme, parsed.netloc)
