"""HTTP(S) for image sources: connections, TLS, proxies, redirects, retries and resumable blob bodies.

The registry source speaks the distribution protocol over it, and both the registry and OCI layouts fetch
foreign layers (descriptors with ``urls``) through it. It knows nothing of manifests or auth: the caller
passes the headers, and for a resumable body a ``fetch`` callable that can add fresh credentials.

**Connections** are kept alive and reused, one per (scheme, host) per thread, so layers downloaded in
parallel each get their own. A one-off connection is never needed: a redirect to a CDN simply gets a
pooled connection to that host.

**TLS** uses the system's trust store plus, for host ``H`` (``host[:port]`` exactly as in the image
reference), the files in ``<dir>/H/`` for each directory in ``CERTS_DIRS`` (Docker's and podman's
``certs.d`` layout): ``*.crt`` are extra CAs, ``*.cert`` with the matching ``*.key`` a client certificate.
An extra directory of the same layout can apply to every host (GrootFS's
``remote_layer_client_certificates_path``). Hosts listed as insecure skip verification (client
certificates are still offered).

**Proxies** come from the environment as Go reads them (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, in
either case); loopback hosts are never proxied. HTTPS goes through a ``CONNECT`` tunnel.

**Retries**: transient failures are retried with exponential backoff (``BACKOFF`` doubling, with jitter,
each wait capped at ``MAX_WAIT``): connection errors (reset, timed out, closed without a response; refused
only once the host has answered us before, so a wrong address fails at once), HTTP 429 and 5xx, honouring a
``Retry-After`` given in seconds. A request is given up after ``MAX_ATTEMPTS`` attempts or once its retries
would outlast the budget, with one line naming the URL and the last cause. A body whose connection drops
mid-stream is resumed with ``Range: bytes=<offset>-`` (a server answering 200 instead of 206 has the first
``offset`` bytes skipped), so the verifying stream above sees one unbroken body; its budget counts from the
last failure that followed progress. Environment overrides (for tests and slow links):

* ``GRAFTFS_REGISTRY_TIMEOUT``: seconds a socket operation may block (default ``TIMEOUT``);
* ``GRAFTFS_REGISTRY_RETRY_BUDGET``: seconds one request may spend retrying (default ``RETRY_BUDGET``);
* ``GRAFTFS_CERTS_DIRS``: colon-separated ``certs.d`` directories (default ``CERTS_DIRS``).
"""

from __future__ import annotations

import _thread
import io
import os
import sys
import time

from .. import jsonc
from ..errors import FailedPrecondition, GraftfsError, InvalidArgument, NotFound, Unavailable, os_reason
from . import wire
from .wire import split_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable
    from typing import IO, Any

    Fetch = Callable[[dict[str, str]], tuple[wire.Response, str]]
    """``fetch(extra_headers) -> (response, url)``: (re)request a body, for resuming it."""

CERTS_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
MAX_REDIRECTS = 5
TIMEOUT = 30.0  # seconds per socket operation; GRAFTFS_REGISTRY_TIMEOUT overrides
RETRY_BUDGET = 30.0  # seconds one request may spend on retries; GRAFTFS_REGISTRY_RETRY_BUDGET overrides
MAX_ATTEMPTS = 5
BACKOFF = 0.2  # first wait, doubled at each retry
MAX_WAIT = 10.0  # cap on one wait, Retry-After included
USER_AGENT = "graftfs"
#: GrootFS's text for a certificate no trusted CA signed (Go's ``x509: certificate signed by unknown
#: authority``), which operators know to answer with ``--insecure-registry``.
INSECURE_TEXT = (
    "This registry is insecure. To pull images from this registry, please use the --insecure-registry option."
)
# OpenSSL verify codes meaning "no trusted CA vouches for this certificate".
_UNKNOWN_AUTHORITY = {18, 19, 20, 21}
_REDIRECTS = (301, 302, 303, 307, 308)


class Transport:
    def __init__(self, insecure: Iterable[str] = (), extra_certs: str = "") -> None:
        self.insecure = frozenset(insecure)
        self.extra_certs = extra_certs
        self.timeout = env_seconds("GRAFTFS_REGISTRY_TIMEOUT", TIMEOUT)
        self.budget = env_seconds("GRAFTFS_REGISTRY_RETRY_BUDGET", RETRY_BUDGET)
        dirs = os.environ.get("GRAFTFS_CERTS_DIRS")
        self.certs_dirs = tuple(d for d in dirs.split(":") if d) if dirs is not None else CERTS_DIRS
        # _thread, not threading: threading imports functools and collections, a tenth of a warm create.
        self._lock = _thread.allocate_lock()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._local = _thread._local()  # .conns: this thread's keep-alive connections by (scheme, netloc)
        self._all: list[wire.Connection] = []
        self._reached: set[str] = set()  # hosts that answered at least once: refusals there are transient

    def retry(self) -> Retry:
        return Retry(self.budget)

    # -- connections -------------------------------------------------------------------------------------------

    def _connection(self, scheme: str, netloc: str) -> wire.Connection:
        conns: dict[tuple[str, str], wire.Connection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            conn = self._connect(scheme, netloc)
            conns[(scheme, netloc)] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _connect(self, scheme: str, netloc: str) -> wire.Connection:
        proxy = _proxy_for(scheme, netloc)
        context = self.context(netloc) if scheme == "https" else None
        if proxy is None:
            return wire.Connection(netloc, self.timeout, context=context)
        proxy_netloc, proxy_headers = proxy
        return wire.Connection(netloc, self.timeout, context=context, proxy=proxy_netloc, proxy_headers=proxy_headers)

    def drop(self, url: str) -> None:
        """Forget this thread's connection that fetched ``url`` (its state is unknown now)."""
        scheme, netloc, _, _ = split_url(url)
        conns = self._local.__dict__.get("conns", {})
        conn = conns.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local.__dict__.pop("conns", None)

    # -- TLS -----------------------------------------------------------------------------------------------------

    def context(self, netloc: str) -> ssl.SSLContext:
        with self._lock:
            context = self._contexts.get(netloc)
            if context is None:
                context = self._contexts[netloc] = self._make_context(netloc)
            return context

    def _make_context(self, netloc: str) -> ssl.SSLContext:
        import ssl  # only for https: plain-HTTP registries never load the TLS stack

        if netloc in self.insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context()
        dirs = [os.path.join(d, netloc) for d in self.certs_dirs]
        if self.extra_certs:
            dirs.append(self.extra_certs)
        for directory in dirs:
            try:
                names = sorted(os.listdir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise FailedPrecondition(f"reading certificates in {directory}: {os_reason(exc)}") from None
            for name in names:
                path = os.path.join(directory, name)
                try:
                    if name.endswith(".crt") and context.verify_mode != ssl.CERT_NONE:
                        context.load_verify_locations(cafile=path)
                    elif name.endswith(".cert"):
                        key = path[: -len(".cert")] + ".key"
                        if not os.path.exists(key):
                            raise FailedPrecondition(f"missing key {key} for client certificate {path}")
                        context.load_cert_chain(path, key)
                    elif name.endswith(".key") and not os.path.exists(path[: -len(".key")] + ".cert"):
                        raise FailedPrecondition(
                            f"missing client certificate {path[: -len('.key')]}.cert for key {path}"
                        )
                except (ssl.SSLError, OSError) as exc:
                    raise FailedPrecondition(f"loading {path}: {describe(exc)}") from None
        return context

    # -- requests --------------------------------------------------------------------------------------------------

    def get(self, url: str, retry: Retry, headers: dict[str, str] | None = None) -> tuple[wire.Response, str]:
        """GET ``url``, following redirects and retrying transient failures (connection errors, 429, 5xx).
        Returns the response (any other status, for the caller to judge) and the URL that gave it."""
        while True:
            try:
                resp, final = self._get_once(url, headers or {})
            except _Transient as exc:
                retry.failed(exc.url, exc.cause)
                continue
            if resp.status != 429 and resp.status < 500:
                return resp, final
            delay = _retry_after(resp.getheader("Retry-After"))
            cause = f"HTTP {resp.status} {resp.reason}"
            try:
                detail = registry_error(resp.read(64 << 10))
            except (OSError, wire.HTTPException):
                detail = ""
                self.drop(final)
            resp.close()
            retry.failed(final, cause + (f": {detail}" if detail else ""), delay)

    def _get_once(self, url: str, extra: dict[str, str]) -> tuple[wire.Response, str]:
        headers = {"User-Agent": USER_AGENT, **extra}
        origin = split_url(url)[1]
        for _ in range(MAX_REDIRECTS + 1):
            scheme, netloc, path, query = split_url(url)
            if scheme not in ("http", "https") or not netloc:
                raise InvalidArgument(f"unsupported URL `{url}`: only http and https are supported")
            if netloc != origin:
                # Credentials are for the host they were given to, never for a CDN it redirects to.
                headers.pop("Authorization", None)
            target = (path or "/") + (f"?{query}" if query else "")
            conn = self._connection(scheme, netloc)
            try:
                resp = self._send(conn, target, headers)
            except (OSError, wire.HTTPException) as exc:
                self.drop(url)
                if _unknown_authority(exc):
                    raise FailedPrecondition(INSECURE_TEXT, final=True) from None
                if transient(exc, netloc in self._reached):
                    raise _Transient(url, describe(exc)) from None
                raise ConnectFailed(f"fetching {url}: {describe(exc)}") from None
            self._reached.add(netloc)
            if resp.status not in _REDIRECTS:
                return resp, url
            location = resp.getheader("Location") or ""
            try:
                resp.read()
            except (OSError, wire.HTTPException) as exc:
                self.drop(url)
                raise _Transient(url, describe(exc)) from None
            finally:
                resp.close()
            if not location:
                raise Unavailable(f"{url}: redirect without a Location")
            from urllib.parse import urljoin  # redirects are rare (a CDN for blobs)

            url = urljoin(url, location)
            headers.pop("Accept", None)
        raise Unavailable(f"fetching {url}: too many redirects")

    @staticmethod
    def _send(conn: wire.Connection, target: str, headers: dict[str, str]) -> wire.Response:
        reused = conn.sock is not None
        try:
            conn.request("GET", target, headers=headers)
            return conn.getresponse()
        except (wire.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            # The server closed the idle keep-alive connection between two requests: open a new one.
            conn.close()
            conn.request("GET", target, headers=headers)
            return conn.getresponse()

    def body(self, resp: wire.Response, url: str, fetch: Fetch, retry: Retry) -> IO[bytes]:
        """A blob's response as a stream that resumes with range requests (made by ``fetch``) when the
        connection drops."""
        return io.BufferedReader(_Body(self, resp, url, fetch, retry), buffer_size=1 << 16)

    def open_url(self, url: str) -> IO[bytes]:
        """A resumable stream of ``url`` (no credentials: foreign layers live on public servers or behind
        the client certificates of :attr:`extra_certs`)."""
        retry = self.retry()

        def fetch(extra: dict[str, str]) -> tuple[wire.Response, str]:
            return self.get(url, retry, extra)

        resp, final = fetch({})
        if resp.status != 200:
            resp.close()
            self.drop(final)
            raise (NotFound if resp.status == 404 else Unavailable)(
                f"fetching {final}: HTTP {resp.status} {resp.reason}"
            )
        return self.body(resp, final, fetch, retry)

    def open_first(self, urls: Iterable[str]) -> tuple[IO[bytes] | None, list[str]]:
        """The first of a foreign layer's http(s) ``urls`` that answers, and the errors of those that did
        not (``None`` and the errors when none did)."""
        errors: list[str] = []
        for url in urls:
            if url.startswith(("http://", "https://")):
                try:
                    return self.open_url(url), errors
                except GraftfsError as exc:
                    errors.append(exc.message)
        return None, errors

    def resume(self, resp: wire.Response, url: str, offset: int) -> tuple[wire.Response | None, int]:
        """Check the answer to a ``Range: bytes=<offset>-`` request. Returns the response and how many bytes
        of it to skip (all of ``offset`` when the server ignored the range), or ``None`` when the status is
        not 200/206 (the caller judges it)."""
        if resp.status == 206:
            content_range = resp.getheader("Content-Range") or ""
            unit, _, rest = content_range.partition(" ")
            first = rest.partition("-")[0]
            if unit != "bytes" or not first.isdigit() or int(first) != offset:
                resp.close()
                self.drop(url)
                raise Unavailable(f"fetching {url}: asked for bytes {offset}- and got `{content_range}`")
            return resp, 0
        if resp.status == 200:
            return resp, offset
        return None, 0


class ConnectFailed(Unavailable):
    """A connection (or TLS handshake) failed in a way retrying will not fix."""


class Retry:
    """Attempts and time spent on one request; :meth:`failed` waits before the next attempt or gives up."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.attempts = 0
        self.start = time.monotonic()

    def restart(self) -> None:
        """The request made progress since its last failure: the next failure starts a new count."""
        self.attempts = 0
        self.start = time.monotonic()

    def failed(self, url: str, cause: str, retry_after: float | None = None) -> None:
        self.attempts += 1
        elapsed = time.monotonic() - self.start
        if retry_after is None:
            import random  # only when a request has failed

            wait = min(BACKOFF * 2 ** (self.attempts - 1), MAX_WAIT) * random.uniform(0.5, 1.0)
        else:
            wait = min(retry_after, MAX_WAIT)
        if self.attempts >= MAX_ATTEMPTS or elapsed + wait > self.budget:
            raise Unavailable(
                f"fetching {url}: gave up after {self.attempts} attempt{'s' if self.attempts > 1 else ''} "
                f"in {elapsed:.1f}s: {cause}"
            )
        time.sleep(wait)


class _Transient(Exception):
    def __init__(self, url: str, cause: str) -> None:
        super().__init__(cause)
        self.url = url
        self.cause = cause


class _Body(io.RawIOBase):
    """A blob's HTTP response. A connection lost mid-stream is resumed with a range request, transparently.
    Closed before its end, it also drops its connection: the unread rest of the body would otherwise be
    taken for the next response."""

    def __init__(self, transport: Transport, resp: wire.Response, url: str, fetch: Fetch, retry: Retry) -> None:
        super().__init__()
        self._transport = transport
        self._fetch = fetch
        self._retry = retry
        self._resp: wire.Response | None = resp
        self._url = url
        self._pos = 0  # bytes handed out
        self._failed_at = -1  # position of the last failure
        self._skip = 0
        self._done = False
        self._error: GraftfsError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._error is not None:
            raise self._error  # gave up already: later reads (a drain after the failure) do not start over
        try:
            return self._readinto(buffer)
        except GraftfsError as exc:
            self._error = exc
            self._release()
            raise

    def _readinto(self, buffer: Any) -> int:
        while True:
            if self._done:
                return 0
            if self._resp is None:
                resp, self._url = self._fetch({"Range": f"bytes={self._pos}-"})
                self._resp, self._skip = self._transport.resume(resp, self._url, self._pos)
                if self._resp is None:
                    resp.close()
                    raise Unavailable(f"resuming {self._url}: HTTP {resp.status} {resp.reason}")
            try:
                if self._skip:
                    data = self._resp.read(min(self._skip, 1 << 16))
                    if not data:
                        raise wire.IncompleteRead(b"", self._skip)
                    self._skip -= len(data)
                    continue
                n = self._resp.readinto(buffer)
            except (OSError, wire.HTTPException) as exc:
                self._release()
                if not transient(exc, True):
                    raise Unavailable(f"reading blob from {self._url}: {describe(exc)}") from None
                self._failed(exc)
                continue
            if n == 0 and buffer:
                if self._resp.length:  # a body cut short of its Content-Length reads as an early EOF
                    self._release()
                    self._failed(wire.IncompleteRead(b""))
                    continue
                self._done = True
                self._resp.close()
            self._pos += n
            return n

    def _failed(self, exc: BaseException) -> None:
        if self._pos > self._failed_at >= 0:
            self._retry.restart()  # progress since the last failure: a new count
        self._failed_at = self._pos
        self._retry.failed(self._url, describe(exc))

    def _release(self) -> None:
        """Drop the response and the connection it came on."""
        if self._resp is not None:
            self._resp.close()
            self._resp = None
            self._transport.drop(self._url)

    def close(self) -> None:
        if not self.closed and not self._done:
            self._release()
        elif self._resp is not None:
            self._resp.close()
        super().close()


def _proxy_for(scheme: str, netloc: str) -> tuple[str, dict[str, str]] | None:
    """The proxy (``host:port`` and its headers) for ``scheme://netloc``, from the environment as Go's
    ``http.ProxyFromEnvironment`` reads it; ``None`` to connect directly."""
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    value = next((os.environ[n] for n in names if os.environ.get(n)), "")
    if not value:
        return None
    import urllib.parse  # only with a proxy configured

    host = urllib.parse.urlsplit(f"//{netloc}").hostname or ""
    if host == "localhost" or _is_loopback(host) or _no_proxy(host, netloc):
        return None
    proxy = urllib.parse.urlsplit(value if "://" in value else f"http://{value}")
    if proxy.scheme not in ("http", ""):
        raise FailedPrecondition(f"unsupported proxy `{proxy.scheme}://{proxy.hostname}`: only http:// proxies")
    headers = {}
    if proxy.username is not None:
        user = urllib.parse.unquote(proxy.username)
        password = urllib.parse.unquote(proxy.password or "")
        headers["Proxy-Authorization"] = basic_authorization(user, password)
    return f"{proxy.hostname}:{proxy.port or 80}", headers


def basic_authorization(user: str, password: str) -> str:
    """An HTTP basic ``Authorization`` (or ``Proxy-Authorization``) value."""
    import binascii  # built in: base64 would import struct and re-export the same function

    return "Basic " + binascii.b2a_base64(f"{user}:{password}".encode(), newline=False).decode()


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _no_proxy(host: str, netloc: str) -> bool:
    import ipaddress

    value = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower() for e in value.split(",")):
        if not entry:
            continue
        if entry == "*" or entry in (host.lower(), netloc.lower()):
            return True
        domain = entry.lstrip("*")
        suffix = domain if domain.startswith(".") else "." + domain
        if host.lower().endswith(suffix) or ("." + host.lower()) == suffix:
            return True
        try:
            if ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            pass
    return False


def env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default  # NaN compares false


def transient(exc: BaseException, reached: bool) -> bool:
    """Worth another attempt: the connection broke, timed out or was closed without an answer. A refusal
    counts only from a host that answered before (a restarting registry, not a wrong address)."""
    if isinstance(exc, ConnectionRefusedError):
        return reached
    ssl = sys.modules.get("ssl")  # no TLS error without the TLS stack loaded
    if ssl is not None and isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return False  # certificate and protocol errors do not go away
    return isinstance(
        exc,
        (
            ConnectionError,  # reset, aborted, broken pipe; RemoteDisconnected is one too
            TimeoutError,
            wire.IncompleteRead,
            wire.BadStatusLine,
        ),
    )


def _unknown_authority(exc: BaseException) -> bool:
    """A certificate that no trusted CA vouches for (what --insecure-registry is for)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in _UNKNOWN_AUTHORITY


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, wire.IncompleteRead):
        return "connection closed before the end of the response"
    ssl = sys.modules.get("ssl")
    if ssl is None:
        pass
    elif isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        hint = ""
        if reason in ("SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            hint = " (the server wants a client certificate: client.cert and client.key in certs.d/<host>/)"
        return f"TLS handshake failed: {reason.lower().replace('_', ' ')}{hint}"
    if isinstance(exc, OSError) and exc.strerror:
        return os_reason(exc)
    return str(exc) or type(exc).__name__


def registry_error(body: bytes) -> str:
    """The first message of a distribution-spec error body, if it has one."""
    try:
        errors = jsonc.loads(body).get("errors")
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, LookupError, TypeError):
        return ""
