"""Registry images (``docker://[host[:port]]/repository[:tag|@digest]``) over the OCI distribution API.

One persistent ``http.client`` connection to the registry carries the manifest, config and layer requests;
blobs redirected elsewhere (a CDN, object storage) get a connection of their own. Manifests and configs are
small and read whole: a manifest is checked against its digest whenever one is known (pulling by digest,
or a manifest chosen from an index), the config always. Layers are returned as the live HTTP response and
verified while they stream (see layers.stream).

Plain HTTP is used for the hosts the caller lists as insecure (``--insecure-registry``, exact
``host[:port]``), HTTPS with the system's trust store otherwise. Anonymous access only: a registry that
asks for credentials is reported as such.

Transient failures are retried with exponential backoff (``BACKOFF`` doubling, with jitter, each wait capped
at ``MAX_WAIT``): connection errors (reset, timed out, closed without a response; refused only once the host
has answered us before, so a wrong address fails at once), HTTP 429 and 5xx, honouring a ``Retry-After``
given in seconds. A failing request is given up after ``MAX_ATTEMPTS`` attempts or once its retries would
outlast ``RETRY_BUDGET`` seconds, with one line naming the URL and the last cause. A layer whose connection
drops mid-stream is resumed with ``Range: bytes=<offset>-`` (a server answering 200 instead of 206 has the
first ``offset`` bytes skipped), so the verifying stream above sees one unbroken body; its budget counts from
the last failure that followed progress. Environment overrides (for tests and slow links):

* ``GRAFTFS_REGISTRY_TIMEOUT``: seconds a socket operation may block (default ``TIMEOUT``);
* ``GRAFTFS_REGISTRY_RETRY_BUDGET``: seconds one request may spend retrying (default ``RETRY_BUDGET``).
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import random
import ssl
import time
import urllib.parse

from ..errors import GraftfsError, InvalidImage, NotFound, Unsupported
from ..reference import ImageRef
from . import platform
from .base import ImageSpec, LayerInfo, check_digest, image_spec, parse_object, verify_blob
from .oci_layout import INDEX_TYPES, MAX_INDEX_DEPTH, MAX_JSON

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import IO, Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1_TYPES = {
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
}
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
MAX_REDIRECTS = 5
TIMEOUT = 30.0  # seconds per socket operation; GRAFTFS_REGISTRY_TIMEOUT overrides
RETRY_BUDGET = 30.0  # seconds one request may spend on retries; GRAFTFS_REGISTRY_RETRY_BUDGET overrides
MAX_ATTEMPTS = 5
BACKOFF = 0.2  # first wait, doubled at each retry
MAX_WAIT = 10.0  # cap on one wait, Retry-After included
USER_AGENT = "graftfs"


class RegistrySource:
    def __init__(self, ref: ImageRef, insecure: Iterable[str] = ()) -> None:
        self.url = ref.original
        self.host = ref.host
        self.repository = ref.repository
        self.reference = ref.digest or ref.tag
        self.by_digest = bool(ref.digest)
        self.insecure = frozenset(insecure)
        self.scheme = "http" if self.host in self.insecure else "https"
        self.timeout = _env_seconds("GRAFTFS_REGISTRY_TIMEOUT", TIMEOUT)
        self.budget = _env_seconds("GRAFTFS_REGISTRY_RETRY_BUDGET", RETRY_BUDGET)
        self._conn: http.client.HTTPConnection | None = None
        self._reached: set[str] = set()  # hosts that answered at least once: refusals there are transient

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=self.timeout)
        return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ssl.create_default_context())

    def _get(
        self, path: str, retry: _Retry, accept: str = "", extra: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPResponse, str]:
        """GET ``path`` on the registry, following redirects and retrying transient failures (connection
        errors, 429, 5xx). Returns the response and the URL that gave it."""
        while True:
            try:
                resp, url = self._get_once(path, accept, extra or {})
            except _Transient as exc:
                retry.failed(exc.url, exc.cause)
                continue
            if resp.status != 429 and resp.status < 500:
                return resp, url
            delay = _retry_after(resp.getheader("Retry-After"))
            cause = f"HTTP {resp.status} {resp.reason}"
            try:
                detail = _registry_error(resp.read(64 << 10))
            except (OSError, http.client.HTTPException):
                detail = ""
                self._drop(url)
            resp.close()
            retry.failed(url, cause + (f": {detail}" if detail else ""), delay)

    def _get_once(self, path: str, accept: str, extra: dict[str, str]) -> tuple[http.client.HTTPResponse, str]:
        headers = {"User-Agent": USER_AGENT, **extra}
        if accept:
            headers["Accept"] = accept
        scheme, netloc, target = self.scheme, self.host, path
        for _ in range(MAX_REDIRECTS + 1):
            url = f"{scheme}://{netloc}{target}"
            shared = scheme == self.scheme and netloc == self.host
            if shared:
                if self._conn is None:
                    self._conn = self._connect(scheme, netloc)
                conn = self._conn
            else:
                conn = self._connect(scheme, netloc)
            try:
                # A one-off connection asks the server to close it: the response then owns the socket.
                resp = self._send(conn, target, headers if shared else {**headers, "Connection": "close"}, shared)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if shared:
                    self._conn = None
                if _transient(exc, netloc in self._reached):
                    raise _Transient(url, _describe(exc)) from None
                raise GraftfsError(f"fetching {url}: {_describe(exc)}") from None
            self._reached.add(netloc)
            if resp.status not in (301, 302, 303, 307, 308):
                return resp, url
            location = resp.getheader("Location") or ""
            try:
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop(url)
                raise _Transient(url, _describe(exc)) from None
            finally:
                resp.close()
            if not location:
                raise GraftfsError(f"{url}: redirect without a Location")
            parts = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise GraftfsError(f"{url}: unsupported redirect to `{location}`")
            scheme, netloc = parts.scheme, parts.netloc
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers.pop("Accept", None)
        raise GraftfsError(f"fetching {path}: too many redirects")

    def _send(
        self, conn: http.client.HTTPConnection, target: str, headers: dict[str, str], reused: bool
    ) -> http.client.HTTPResponse:
        try:
            conn.request("GET", target, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            # The registry closed the idle keep-alive connection between two requests: open a new one.
            conn.close()
            conn.request("GET", target, headers=headers)
            return conn.getresponse()

    def _drop(self, url: str) -> None:
        """Forget the shared connection if ``url`` was fetched over it (its state is unknown now)."""
        if urllib.parse.urlsplit(url).netloc == self.host:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check_status(self, resp: http.client.HTTPResponse, what: str) -> None:
        if resp.status == 200:
            return
        body = resp.read(64 << 10)
        resp.close()
        if resp.status == 401:
            raise Unsupported(f"{self.url}: registry requires authentication, not supported yet")
        if resp.status == 404:
            raise NotFound(f"{what} not found in {self.host}/{self.repository}")
        detail = _registry_error(body)
        raise GraftfsError(
            f"fetching {what} from {self.host}/{self.repository}: HTTP {resp.status} {resp.reason}"
            + (f": {detail}" if detail else "")
        )

    def _fetch(self, path: str, what: str, accept: str = "", not_found: str = "") -> tuple[str, bytes]:
        """A small document (manifest, config), read whole; returns its Content-Type and bytes."""
        retry = _Retry(self.budget)
        while True:
            resp, url = self._get(path, retry, accept)
            if resp.status == 404 and not_found:
                resp.read()
                resp.close()
                raise NotFound(not_found)
            self._check_status(resp, what)
            content_type = (resp.getheader("Content-Type") or "").partition(";")[0].strip()
            try:
                data = resp.read(MAX_JSON + 1)
                if len(data) <= MAX_JSON and resp.length:  # closed before its Content-Length
                    raise http.client.IncompleteRead(data, resp.length)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(url)
                if not _transient(exc, True):
                    raise GraftfsError(f"reading {what}: {_describe(exc)}") from None
                retry.failed(url, _describe(exc))
                continue
            finally:
                resp.close()
            if len(data) > MAX_JSON:
                self._drop(url)
                raise InvalidImage(f"{what} is larger than {MAX_JSON} bytes")
            return content_type, data

    # -- manifests -----------------------------------------------------------------------------------------

    def _manifest(
        self, reference: str, digest: str = "", size: int = -1, top: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """Fetch a manifest or index; returns its media type (from the response) and the document."""
        content_type, data = self._fetch(
            f"/v2/{self.repository}/manifests/{reference}",
            f"manifest `{reference}`",
            ACCEPT,
            f"{self.url} does not exist or you do not have permissions to see it." if top else "",
        )
        if digest:
            verify_blob(data, digest, size, "manifest")
        doc = parse_object(data, f"manifest `{reference}`")
        media_type = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else content_type
        if content_type in SCHEMA1_TYPES or media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise InvalidImage("schema 1 manifests are not supported")
        return str(media_type or content_type), doc

    def resolve(self) -> ImageSpec:
        try:
            media_type, doc = self._manifest(self.reference, self.reference if self.by_digest else "", top=True)
        except NotFound as exc:
            if exc.message.startswith(self.url):  # the GrootFS text, unwrapped
                raise
            raise exc.wrap("fetching image reference") from exc
        except GraftfsError as exc:
            raise exc.wrap("fetching image reference") from exc
        try:
            for depth in range(MAX_INDEX_DEPTH + 1):
                if media_type not in INDEX_TYPES and "manifests" not in doc:
                    return self._from_manifest(doc)
                if depth == MAX_INDEX_DEPTH:
                    break
                desc = self._pick(doc)
                digest = check_digest(desc.get("digest"), "manifest")
                size = desc.get("size", -1)
                media_type, doc = self._manifest(digest, digest, size if isinstance(size, int) else -1)
            raise InvalidImage("image indexes are nested too deeply")
        except GraftfsError as exc:
            raise exc.wrap("fetching image reference") from exc

    def _pick(self, index: dict[str, Any]) -> dict[str, Any]:
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
            raise InvalidImage("invalid image index: no manifests list")
        if not manifests:
            raise InvalidImage("image index lists no manifests")
        chosen = platform.choose(manifests)
        if chosen is None:
            raise NotFound(f"no image for platform {platform.host_string()} in the image index of {self.url}")
        return chosen

    def _config(self, desc: dict[str, Any]) -> dict[str, Any]:
        digest = check_digest(desc.get("digest"), "config")
        size = desc.get("size", -1)
        _, data = self._fetch(f"/v2/{self.repository}/blobs/{digest}", f"config blob `{digest}`")
        verify_blob(data, digest, size, "config")
        return parse_object(data, f"config `{digest}`")

    def _from_manifest(self, manifest: dict[str, Any]) -> ImageSpec:
        cfg_desc = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(cfg_desc, dict) or not isinstance(layers, list):
            raise InvalidImage("manifest has no config or no layers")
        config = self._config(cfg_desc)
        return image_spec(layers, config)

    # -- blobs ---------------------------------------------------------------------------------------------

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        digest = check_digest(layer.blob, "layer")
        retry = _Retry(self.budget)
        resp, url = self._get(f"/v2/{self.repository}/blobs/{digest}", retry)
        if resp.status == 404 and layer.urls:
            resp.read()
            resp.close()
            raise NotFound(
                f"layer `{digest}` is not in the registry and fetching foreign layers from "
                f"{layer.urls[0]} is not supported by this build yet"
            )
        self._check_status(resp, f"layer blob `{digest}`")
        return io.BufferedReader(_Body(self, digest, retry, resp, url), buffer_size=1 << 16)

    def _resume(self, digest: str, offset: int, retry: _Retry) -> tuple[http.client.HTTPResponse, str, int]:
        """Ask again for a blob from ``offset`` on; returns the response, its URL and how many bytes of it
        to skip (all of ``offset`` when the server ignores the range and sends the whole blob)."""
        resp, url = self._get(f"/v2/{self.repository}/blobs/{digest}", retry, extra={"Range": f"bytes={offset}-"})
        if resp.status == 206:
            content_range = resp.getheader("Content-Range") or ""
            unit, _, rest = content_range.partition(" ")
            first = rest.partition("-")[0]
            if unit != "bytes" or not first.isdigit() or int(first) != offset:
                resp.close()
                self._drop(url)
                raise GraftfsError(f"fetching {url}: asked for bytes {offset}- and got `{content_range}`")
            return resp, url, 0
        self._check_status(resp, f"layer blob `{digest}`")
        return resp, url, offset


class _Retry:
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
            wait = min(BACKOFF * 2 ** (self.attempts - 1), MAX_WAIT) * random.uniform(0.5, 1.0)
        else:
            wait = min(retry_after, MAX_WAIT)
        if self.attempts >= MAX_ATTEMPTS or elapsed + wait > self.budget:
            raise GraftfsError(
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
    Closed before its end, it also drops the shared connection: the unread rest of the body would otherwise
    be taken for the next response."""

    def __init__(
        self, source: RegistrySource, digest: str, retry: _Retry, resp: http.client.HTTPResponse, url: str
    ) -> None:
        super().__init__()
        self._source = source
        self._digest = digest
        self._retry = retry
        self._resp: http.client.HTTPResponse | None = resp
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
                self._resp, self._url, self._skip = self._source._resume(self._digest, self._pos, self._retry)
            try:
                if self._skip:
                    data = self._resp.read(min(self._skip, 1 << 16))
                    if not data:
                        raise http.client.IncompleteRead(b"", self._skip)
                    self._skip -= len(data)
                    continue
                n = self._resp.readinto(buffer)
            except (OSError, http.client.HTTPException) as exc:
                self._release()
                if not _transient(exc, True):
                    raise GraftfsError(f"reading blob from {self._url}: {_describe(exc)}") from None
                self._failed(exc)
                continue
            if n == 0 and buffer:
                if self._resp.length:  # http.client reports a body cut short of its Content-Length as EOF
                    self._release()
                    self._failed(http.client.IncompleteRead(b""))
                    continue
                self._done = True
                self._resp.close()
            self._pos += n
            return n

    def _failed(self, exc: BaseException) -> None:
        if self._pos > self._failed_at >= 0:
            self._retry.restart()  # progress since the last failure: a new count
        self._failed_at = self._pos
        self._retry.failed(self._url, _describe(exc))

    def _release(self) -> None:
        """Drop the response and, if it was on the shared connection, that connection too."""
        if self._resp is not None:
            self._resp.close()
            self._resp = None
            self._source._drop(self._url)

    def close(self) -> None:
        if not self.closed and not self._done:
            self._release()
        elif self._resp is not None:
            self._resp.close()
        super().close()


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def _transient(exc: BaseException, reached: bool) -> bool:
    """Worth another attempt: the connection broke, timed out or was closed without an answer. A refusal
    counts only from a host that answered before (a restarting registry, not a wrong address)."""
    if isinstance(exc, ConnectionRefusedError):
        return reached
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return False  # certificate and protocol errors do not go away
    return isinstance(
        exc,
        (
            ConnectionError,  # reset, aborted, broken pipe; RemoteDisconnected is one too
            TimeoutError,
            http.client.IncompleteRead,
            http.client.BadStatusLine,
        ),
    )


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the end of the response"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _registry_error(body: bytes) -> str:
    """The first message of a distribution-spec error body, if it has one."""
    try:
        errors = json.loads(body).get("errors")
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, LookupError, TypeError):
        return ""
