"""A small client for the OCI distribution API (registries): blobs (HEAD, GET, monolithic and chunked
upload, cross-repository mount) and manifests, with basic and bearer-token auth and TLS with a custom
CA. Used by the OCI-registry remote cache and by image push."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .bounded import ERROR_BODY_BYTES, finished, read_at_most, with_deadline

CHUNK = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json")
# a manifest (or a config or other JSON blob read whole) larger than this is refused after reading at
# most one byte more; hb's own action-cache manifests list every blob of a tree, hence generous
MAX_MANIFEST_BYTES = 16 << 20
TOKEN_BYTES = 64 << 10  # a token server's answer
# a blob GET or HEAD may be answered with a redirect to where the bytes are (Docker Hub, ghcr.io,
# quay.io and cloud registries send them to a CDN or an object store): followed up to this many times
REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class RegistryError(Exception):
    """A registry answered with an error (status and its message)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RegistryAuthError(RegistryError):
    pass


class RegistryUnavailable(RegistryError):
    pass


@dataclass(frozen=True)
class RegistryRef:
    """host[:port]/repository[:tag|@digest] (what `hb push` and oci:// caches take)."""

    host: str
    repository: str
    reference: str | None = None
    secure: bool = True

    @staticmethod
    def parse(text: str, *, default_secure: bool | None = None) -> "RegistryRef":
        secure = default_secure
        for prefix, is_secure in (("oci+http://", False), ("oci+https://", True), ("oci://", None),
                                  ("docker://", None)):
            if text.startswith(prefix):
                text = text[len(prefix):]
                secure = is_secure if is_secure is not None else secure
                break
        host, _, rest = text.partition("/")
        if not rest or not host:
            raise ValueError(f"not a registry reference: {text!r} (expected host[:port]/repository[:tag])")
        reference = None
        if "@" in rest:
            rest, reference = rest.split("@", 1)
        elif ":" in rest.rsplit("/", 1)[-1]:
            rest, reference = rest.rsplit(":", 1)
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", rest):
            raise ValueError(f"invalid repository name {rest!r}: lowercase letters, digits, '.', '_', '-', '/'")
        if secure is None:
            hostname = host.rsplit(":", 1)[0]
            secure = not (hostname in ("127.0.0.1", "localhost", "::1") and not os.environ.get("HB_REMOTE_CA"))
        return RegistryRef(host, rest, reference, secure)


def docker_config_credentials(host: str) -> tuple[str, str] | None:
    """user/password for host from ~/.docker/config.json (auths[host].auth), if any."""
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (FileNotFoundError, ValueError):
        return None
    for key in (host, f"https://{host}", f"http://{host}"):
        entry = auths.get(key)
        if entry and entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
    return None


class RegistryClient:
    def __init__(self, host: str, *, secure: bool = True, cafile: str | None = None,
                 credentials: tuple[str, str] | None = None, timeout: float = 30.0,
                 environment_credentials: bool = True):
        """environment_credentials=False: only a login for this very host (~/.docker/config.json), never
        HB_REGISTRY_USER/HB_REMOTE_USER, which name no host: for a host that a BUILD file names (oci_pull),
        whoever wrote it would get them."""
        import ssl  # here, not at import: most builds never talk to a registry
        self.host = host
        self.secure = secure
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=cafile) if secure else None
        self._cafile, self._ssl_elsewhere = cafile, None
        self.environment_credentials = environment_credentials
        if credentials is None:
            user = environment_credentials and (os.environ.get("HB_REGISTRY_USER") or os.environ.get("HB_REMOTE_USER"))
            if user:
                credentials = (user, os.environ.get("HB_REGISTRY_PASSWORD") or os.environ.get("HB_REMOTE_PASSWORD", ""))
            else:
                credentials = docker_config_credentials(host)
        # a BUILD file may write oci+http://host: a login for a host on the network is never sent in clear
        # for it (only to this machine's own loopback registry)
        self.withheld = (credentials is not None and not secure and not environment_credentials
                         and urllib.parse.urlsplit(f"//{host}").hostname not in ("127.0.0.1", "localhost", "::1"))
        self.credentials = None if self.withheld else credentials
        self._tokens: dict[str, str] = {}  # scope -> "Bearer ..." or "Basic ..."
        self._local = threading.local()
        self.base = f"{'https' if secure else 'http'}://{host}"

    # ----- transport ----------------------------------------------------------------------------------
    def _conn(self, host: str | None = None):
        import http.client  # here, not at import: most builds never talk to a registry
        host = host or self.host
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(host)
        if conn is None:
            if self.secure:
                conn = http.client.HTTPSConnection(host, timeout=self.timeout, context=self._ssl_for(host))
            else:
                conn = http.client.HTTPConnection(host, timeout=self.timeout)
            conns[host] = conn
        return conn

    def _ssl_for(self, host: str):
        """The registry's TLS context; for another host (where a blob redirect leads: a CDN with a
        public certificate) the system's CAs as well as a private CA given for the registry."""
        if host == self.host or self._cafile is None:
            return self._ssl
        if self._ssl_elsewhere is None:
            import ssl

            self._ssl_elsewhere = ssl.create_default_context()
            self._ssl_elsewhere.load_verify_locations(cafile=self._cafile)
        return self._ssl_elsewhere

    def _drop(self, host: str | None = None) -> None:
        conns = getattr(self._local, "conns", {})
        conn = conns.pop(host or self.host, None)
        if conn is not None:
            conn.close()

    def request(self, method: str, url: str, *, scope: str, body=None, headers=None, stream_to=None,
                expect=(200,), size: int | None = 0):
        """(status, headers, body). Answers 401 by authenticating (basic or bearer) and retrying once.
        Every answer is bounded (bounded.py): it must be read within the timeout plus 1 s per 8 MiB of
        `size` (None: no total deadline, for a stream of unknown size), a 200's body is read by
        stream_to(response) or whole up to MAX_MANIFEST_BYTES (RegistryError when longer), any other
        answer's up to ERROR_BODY_BYTES (enough for its error message)."""
        for attempt in range(3):
            status, resp_headers, data = self._send(method, url, scope, body, headers, stream_to, size)
            if status == 200 and stream_to is None and len(data) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{method} {url.split('?')[0]}: {self.host} answered with more than "
                                    f"{MAX_MANIFEST_BYTES} bytes, more than such an answer may have; refused", status)
            # only the registry's own challenge is answered: a host a redirect led to gets no credentials
            if status == 401 and attempt == 0 and self._is_registry(url):
                self._authenticate(resp_headers.get("WWW-Authenticate", ""), scope)
                continue
            if status in (401, 403):
                raise RegistryAuthError(_describe(method, url, status, data), status)
            if status >= 500 and attempt < 2:
                continue
            if status not in expect:
                raise RegistryError(_describe(method, url, status, data), status)
            return status, resp_headers, data
        raise RegistryError(_describe(method, url, status, data), status)

    def _is_registry(self, url: str) -> bool:
        """Whether `url` (a path, or an absolute URL a redirect or an upload's Location gave) is on the
        registry's own host: the only one that gets its credentials, or has its 401 answered."""
        return "://" not in url or urllib.parse.urlparse(url).netloc == self.host

    def _send(self, method, url, scope, body, headers, stream_to, size):
        import http.client  # here, not at import: most builds never talk to a registry
        import ssl  # here, not at import: most builds never talk to a registry
        parsed = urllib.parse.urlparse(url if "://" in url else self.base + url)
        host = parsed.netloc
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        headers = dict(headers or {})
        if scope in self._tokens and self._is_registry(url):  # never to a host a redirect leads to
            headers["Authorization"] = self._tokens[scope]
        for attempt in range(2):
            conn = self._conn(host)
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                if size is not None:
                    with_deadline(conn, self.timeout, size)
                else:  # a stream of unknown size: the per-read timeout only
                    conn.response_class = http.client.HTTPResponse
                    if conn.sock is not None:
                        conn.sock.settimeout(self.timeout)
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                if stream_to is not None and response.status == 200:
                    data = stream_to(response)
                else:  # a 200's whole body, at most MAX_MANIFEST_BYTES + 1 (request() checks its limit)
                    data = read_at_most(response, MAX_MANIFEST_BYTES if response.status == 200 else ERROR_BODY_BYTES)
                if not finished(response):
                    self._drop(host)  # the rest of the body is never read
                return response.status, response.headers, data
            except ssl.SSLError as exc:
                self._drop(host)
                raise RegistryUnavailable(f"TLS error talking to {host}: {exc.reason or exc}; "
                                          "if it uses a private CA, set HB_REMOTE_CA=/path/to/ca.pem") from None
            except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as exc:
                self._drop(host)
                if attempt == 1 or isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                    raise RegistryUnavailable(f"{host}: {type(exc).__name__}: {exc}") from None

    def _authenticate(self, challenge: str, scope: str) -> None:
        import http.client  # here, not at import: most builds never talk to a registry
        scheme, _, params = challenge.partition(" ")
        if self.withheld:
            raise RegistryAuthError(f"{self.host} requires a login, and the BUILD file names it over plain http "
                                    "(oci+http://): hb does not send your login for it in clear; name it with "
                                    "https", 401)
        if self.credentials is None and scheme.lower() == "basic":
            raise RegistryAuthError(f"{self.host} requires a login: " + (
                "set HB_REGISTRY_USER/HB_REGISTRY_PASSWORD or log in with docker login" if self.environment_credentials
                else f"log in with `docker login {self.host}` (~/.docker/config.json; HB_REGISTRY_USER is not sent "
                     "to a registry a BUILD file names)"), 401)
        if scheme.lower() == "basic":
            user, password = self.credentials
            self._tokens[scope] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            return
        if scheme.lower() == "bearer":
            fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
            query = {"service": fields.get("service", "")}
            query["scope"] = fields.get("scope") or scope
            parsed = self._realm(fields.get("realm"))
            headers = {}
            if self.credentials:
                user, password = self.credentials
                headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            conn = (http.client.HTTPSConnection(parsed.netloc, timeout=self.timeout, context=self._ssl)
                    if parsed.scheme == "https" else http.client.HTTPConnection(parsed.netloc, timeout=self.timeout))
            with_deadline(conn, self.timeout)
            try:
                conn.request("GET", (parsed.path or "/") + "?" + (parsed.query + "&" if parsed.query else "")
                             + urllib.parse.urlencode(query), headers=headers)
                response = conn.getresponse()
                data = read_at_most(response, TOKEN_BYTES)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                raise RegistryUnavailable(f"token server {parsed.netloc}: {type(exc).__name__}: {exc}") from None
            finally:
                conn.close()
            if len(data) > TOKEN_BYTES:
                raise RegistryAuthError(f"token server {parsed.netloc} answered with more than {TOKEN_BYTES} bytes",
                                        response.status)
            if response.status != 200:
                raise RegistryAuthError(f"token server {parsed.netloc} refused: HTTP {response.status}", response.status)
            try:
                answer = json.loads(data)
                token = (answer.get("token") or answer.get("access_token")) if isinstance(answer, dict) else None
            except (ValueError, RecursionError):
                token = None
            # a token becomes a header value: printable ASCII without spaces (RFC 6750's b64token and JWTs)
            if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]{1,16384}", token):
                raise RegistryAuthError(f"token server {parsed.netloc} answered without a usable token "
                                        "(a JSON object with a \"token\" string)", 401)
            self._tokens[scope] = f"Bearer {token}"
            return
        raise RegistryAuthError(f"{self.host} asked for unsupported authentication {challenge!r}", 401)

    def _realm(self, realm: str | None):
        """The token server a registry names, parsed; refused unless it is https, or http where the
        registry itself is plain http: the registry's password is sent there (and file:, ftp: or a
        plain-http realm of an https registry would send it elsewhere or in clear)."""
        parsed = urllib.parse.urlparse(realm or "")
        allowed = ("https",) if self.secure else ("https", "http")
        if parsed.scheme not in allowed or not parsed.netloc:
            raise RegistryAuthError(
                f"{self.host} names the token server (realm) {str(realm)[:200]!r}: hb asks only an "
                + ("https" if self.secure else "http or https") + " URL for a token, and sends it the credentials "
                "for this registry; refused", 401)
        return parsed

    # ----- blobs ----------------------------------------------------------------------------------------
    @staticmethod
    def _scope(repo: str, push: bool) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    def blob_size(self, repo: str, digest: str) -> int | None:
        """Size of blob `digest` ("sha256:...") in repo, or None when absent."""
        status, headers, _ = self._blob_request("HEAD", repo, digest, None, 0)
        if status != 200:
            return None
        length = headers.get("Content-Length", "0")
        if not re.fullmatch(r"[0-9]{1,19}", length.strip()):
            raise RegistryError(f"HEAD /v2/{repo}/blobs/{digest}: {self.host} answered with the Content-Length "
                                f"{length[:40]!r}, not a size", status)
        return int(length)

    def get_blob(self, repo: str, digest: str, stream_to=None, *, size: int | None = None):
        """The blob (read whole: at most MAX_MANIFEST_BYTES, a JSON blob's size), or what
        stream_to(response) returns; None when absent. `size`, when known, gives the read its
        deadline (a stream of unknown size has the per-read timeout only)."""
        if stream_to is None and size is None:
            size = MAX_MANIFEST_BYTES
        status, _, data = self._blob_request("GET", repo, digest, stream_to, size)
        return data if status == 200 else None

    def _blob_request(self, method: str, repo: str, digest: str, stream_to, size: int | None):
        """A blob's GET or HEAD, following the registry's redirects to where the bytes are (a CDN, an
        object store's signed URL). A redirect may only lead to the registry's own scheme (https, or
        http for a plain-http registry: never down to http, never to file: or another scheme) and
        carries no credentials: the Authorization header goes to the registry's host only (_send).
        Whatever comes back is checked by the caller against the digest, as the registry's own answer is."""
        url = f"/v2/{repo}/blobs/{digest}"
        for _ in range(REDIRECTS + 1):
            status, headers, data = self.request(method, url, scope=self._scope(repo, False), stream_to=stream_to,
                                                 expect=(200, 404, *REDIRECT_STATUSES), size=size)
            if status not in REDIRECT_STATUSES:
                return status, headers, data
            url = self._redirect_target(method, url, headers.get("Location"))
        raise RegistryError(f"{method} /v2/{repo}/blobs/{digest}: {self.host} redirected it more than {REDIRECTS} "
                            "times", status)

    def _redirect_target(self, method: str, url: str, location: str | None) -> str:
        """The absolute URL a redirect names, relative to `url`; RegistryError unless it is allowed."""
        current = url if "://" in url else self.base + url
        target = urllib.parse.urljoin(current, (location or "").strip())
        parsed = urllib.parse.urlparse(target)
        scheme = "https" if self.secure else "http"
        if not location or parsed.scheme != scheme or not parsed.hostname or any(c in target for c in "\r\n\0 "):
            raise RegistryError(f"{method} {current.split('?')[0]}: {self.host} redirected it to "
                                f"{(location or '(no Location)')[:200]!r}; hb follows a registry's redirect only to "
                                f"another {scheme} URL")
        return target

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; False when the registry wants an upload instead."""
        status, headers, _ = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}",
            scope=f"repository:{repo}:pull,push repository:{from_repo}:pull", expect=(201, 202),
            headers={"Content-Length": "0"})
        if status == 202:  # an upload session was opened instead; cancel it
            location = headers.get("Location")
            if location:
                try:
                    self.request("DELETE", location, scope=self._scope(repo, True), expect=(204, 404))
                except RegistryError:
                    pass
        return status == 201

    def upload_blob(self, repo: str, source, digest: str, size: int, *, chunk_size: int | None = None) -> None:
        """Upload bytes or a file path. Monolithic (one PUT), or chunked (PATCH per chunk_size)."""
        scope = self._scope(repo, True)
        _, headers, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, expect=(202,),
                                     headers={"Content-Length": "0"})
        location = headers["Location"]
        if isinstance(source, (bytes, bytearray)):
            opener = _BytesSource(bytes(source))
        else:
            opener = _FileSource(Path(source))
        with opener as f:
            if chunk_size:
                offset = 0
                while offset < size:
                    chunk = f.read(min(chunk_size, size - offset))
                    _, headers, _ = self.request(
                        "PATCH", location, scope=scope, body=chunk, expect=(202,),
                        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                                 "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
                    location = headers["Location"]
                    offset += len(chunk)
                body, length = b"", 0
            else:
                body, length = f, size
            sep = "&" if "?" in location else "?"
            self.request("PUT", f"{location}{sep}digest={digest}", scope=scope, body=body, expect=(201,),
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})

    # ----- manifests ------------------------------------------------------------------------------------
    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        _, headers, _ = self.request("PUT", f"/v2/{repo}/manifests/{reference}", scope=self._scope(repo, True),
                                     body=data, expect=(201,),
                                     headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        returned = headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RegistryError(f"registry stored manifest {returned}, expected {digest}")
        return digest

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        status, headers, data = self.request("GET", f"/v2/{repo}/manifests/{reference}",
                                             scope=self._scope(repo, False), expect=(200, 404),
                                             headers={"Accept": ", ".join(MANIFEST_TYPES)},
                                             size=MAX_MANIFEST_BYTES)
        if status != 200:
            return None
        if reference.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != reference:
            raise RegistryError(f"manifest {reference} from {self.host}/{repo} does not match its digest")
        return data, headers.get("Content-Type", "")


class _BytesSource:
    def __init__(self, data: bytes):
        import io

        self._f = io.BytesIO(data)

    def __enter__(self):
        return self._f

    def __exit__(self, *exc):
        self._f.close()


class _FileSource:
    def __init__(self, path: Path):
        self._path = path

    def __enter__(self):
        self._f = open(self._path, "rb")
        return self._f

    def __exit__(self, *exc):
        self._f.close()


def _describe(method: str, url: str, status: int, data) -> str:
    detail = ""
    try:
        errors = json.loads(data or b"{}").get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status} for {method} {url.split('?')[0]}" + (f" ({detail})" if detail else "")
