"""A small S3 client on the standard library: what publishing layers needs, and nothing more.

Layers are published to S3 under their digest, so every write is conditional (``If-None-Match: *``): a layer
that is already there is not uploaded again, and a 412 from the server means exactly that. Large files go up
as multipart uploads streamed from the file part by part, so memory stays bounded whatever the layer's size.

**Signing** is AWS Signature Version 4 with the payload's SHA-256 in ``x-amz-content-sha256`` (never
``UNSIGNED-PAYLOAD``: the server then checks the body it received against what was signed, which is the
integrity check an upload of content-addressed data wants). A file is read twice, once to hash and once to
send; a multipart upload hashes and signs each part on its own. Addressing is path-style
(``<endpoint>/<bucket>/<key>``), which every S3 implementation accepts, Ceph's RADOS Gateway and MinIO
included, and which needs no DNS for bucket names.

**Configuration** comes from the arguments, else from the environment variables the AWS tools read:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION`` (default ``us-east-1``), ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (default
AWS's own regional endpoint).

**Errors** are graftfs's classes, each one line naming the operation, ``s3://bucket/key`` and the server's
error code and message: :class:`~graftfs.errors.NotFound` (404, ``NoSuchKey``, ``NoSuchBucket``),
:class:`~graftfs.errors.PermissionDenied` (403: ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``,
``AccessDenied``; expired or invalid session tokens), :class:`~graftfs.errors.Unavailable` (connection
failures, timeouts, 5xx, 429 and ``SlowDown``, once bounded retries with exponential backoff are spent),
:class:`~graftfs.errors.InvalidArgument` (any other 4xx). The secret key and the session token never appear
in a message, a ``repr`` or a log line: they are kept out of every text this module builds, and scrubbed
from the server's texts, which it does not control.

A client holds one keep-alive connection and is not thread-safe: use one per thread.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import http.client
import os
import secrets
import socket
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

from ..errors import (
    AlreadyExists,
    GraftfsError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

if TYPE_CHECKING:
    from ..log import Logger

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_REGION = "us-east-1"
#: Our floor for a multipart part (S3's own is 5 MiB): fewer, larger parts cost fewer round trips.
MIN_PART_SIZE = 8 << 20
#: S3's ceiling on parts per upload; a file too large for that many parts of the chosen size gets larger parts.
MAX_PARTS = 10_000
#: How much of a body is read from the file and written to the socket at a time.
CHUNK = 1 << 20
#: Error codes that say "try again later" whatever their status (S3 returns some of them as 400 or 409).
RETRYABLE_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "ConditionalRequestConflict"}
)
#: 4xx codes that are about credentials, not the request: fixed by other credentials, so PermissionDenied.
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload"})


# --- Signature Version 4 -----------------------------------------------------------------------------------


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """SigV4's URI encoding: every byte but the unreserved characters ``A-Za-z0-9-_.~`` percent-encoded
    (upper-case hex, UTF-8), ``/`` kept in paths only. ``quote`` keeps exactly those unreserved characters."""
    return urllib.parse.quote(text, safe="/" if keep_slash else "")


def canonical_query(params: Mapping[str, str] | Sequence[tuple[str, str]]) -> str:
    """The query string, encoded and sorted as SigV4 signs it; the request sends this same string, so what is
    signed and what is sent cannot differ."""
    items = params.items() if isinstance(params, Mapping) else params
    encoded = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False)) for k, v in items)
    return "&".join(f"{k}={v}" for k, v in encoded)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), date), region), service), "aws4_request")


@dataclass(frozen=True)
class Credentials:
    """An access key pair, with the secret and token left out of ``repr`` (and so out of any message that
    formats the object)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def hidden(self) -> list[str]:
        return [s for s in (self.secret_key, self.session_token) if s]


def canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], payload_sha256: str
) -> tuple[str, str]:
    """SigV4's canonical request for lower-cased ``headers`` (all of them signed), and its signed-headers list."""
    names = sorted(headers)
    # Values trimmed and inner runs of spaces collapsed, as the canonical form requires.
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in names)
    signed_headers = ";".join(names)
    return "\n".join([method, path, query, canonical_headers, signed_headers, payload_sha256]), signed_headers


def sign(
    method: str,
    host: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    payload_sha256: str,
    credentials: Credentials,
    region: str,
    now: datetime,
    service: str = "s3",
) -> dict[str, str]:
    """The headers to send for a request signed with SigV4: ``headers`` plus ``host``, ``x-amz-date``,
    ``x-amz-content-sha256``, ``x-amz-security-token`` (with a session token) and ``authorization``.

    ``path`` is the URI path as sent (already encoded with :func:`uri_encode`: S3 does not encode it twice),
    ``query`` the string from :func:`canonical_query`. Every header passed is signed, so a proxy cannot add
    or change one (``If-None-Match`` included); Content-Length is left to the caller and not signed, as the
    AWS SDKs do.
    """
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    date = stamp[:8]
    out = {k.lower(): v for k, v in headers.items()}
    out["host"] = host
    out["x-amz-date"] = stamp
    out["x-amz-content-sha256"] = payload_sha256
    if credentials.session_token:
        out["x-amz-security-token"] = credentials.session_token
    request, signed_headers = canonical_request(method, path, query, out, payload_sha256)
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(request.encode()).hexdigest()])
    signature = hmac.new(
        signing_key(credentials.secret_key, date, region, service), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope},"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )
    return out


def _local_error(what: str, exc: OSError) -> GraftfsError:
    """A failure of a local file while a request streams: its own error, never taken for the network's (which
    would be retried and reported as the server being unavailable)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{what}: {_describe(exc)}")
    return InvalidArgument(f"{what}: {_describe(exc)}")


# --- Bodies -------------------------------------------------------------------------------------------------


class _Body:
    """A request body that can be hashed and then sent, as often as retries need, without holding it all."""

    size = 0
    sha256 = EMPTY_SHA256

    def chunks(self) -> Iterator[bytes | memoryview]:
        return iter(())


class _BytesBody(_Body):
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.size = len(self.data)
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    def chunks(self) -> Iterator[memoryview]:
        for start in range(0, self.size, CHUNK):
            yield self.data[start : start + CHUNK]


class _FileBody(_Body):
    """``length`` bytes of a seekable binary file from ``offset``: read once to hash, then again to send."""

    def __init__(self, file: IO[bytes], offset: int, length: int, what: str) -> None:
        self.file, self.offset, self.size, self.what = file, offset, length, what
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        self.sha256 = digest.hexdigest()

    def chunks(self) -> Iterator[bytes]:
        try:
            self.file.seek(self.offset)
        except OSError as e:
            raise _local_error(self.what, e) from None
        left = self.size
        while left:
            try:
                chunk = self.file.read(min(CHUNK, left))
            except OSError as e:
                raise _local_error(self.what, e) from None
            if not chunk:
                # The file shrank under us: what was hashed is not what would be sent.
                raise InvalidArgument(f"{self.what}: the file changed while it was being uploaded")
            left -= len(chunk)
            yield chunk


# --- Objects ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without its quotes
    last_modified: str  # as the server wrote it (ISO 8601 in listings, an HTTP date in HEAD)


def _local(tag: str) -> str:
    """An element's name without its XML namespace (S3 uses one, some servers none)."""
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: ET.Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _parse_xml(data: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(data)
    except ET.ParseError:
        return None


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _Retry(Exception):
    """An attempt failed in a way worth retrying; ``reason`` is the one-line cause, ``final`` the error to
    raise if no attempt is left."""

    def __init__(self, reason: str, final: GraftfsError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


def _describe(exc: BaseException) -> str:
    """A connection failure as a short phrase (Python's texts carry errno numbers and class names)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, BrokenPipeError):
        return "the server closed the connection while the request was sent"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the response ended early ({len(exc.partial)} bytes)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


# --- The client ---------------------------------------------------------------------------------------------


class S3Client:
    """Objects in one S3 bucket.

    Every argument left ``None`` is read from ``environ`` (default :data:`os.environ`) as the AWS tools read
    it. ``retries`` is how many times a failed request is tried again (connection failures, timeouts, 5xx,
    throttling), waiting ``backoff`` seconds and doubling each time. Files larger than
    ``multipart_threshold`` (default: ``part_size``) are uploaded in parts of ``part_size`` bytes (at least
    :data:`MIN_PART_SIZE`).
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        part_size: int = MIN_PART_SIZE,
        multipart_threshold: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        log: Logger | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        if not bucket or "/" in bucket:
            raise InvalidArgument(f"s3: invalid bucket name {bucket!r}")
        self.bucket = bucket
        self.region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        access_key = access_key or env.get("AWS_ACCESS_KEY_ID")
        secret_key = secret_key or env.get("AWS_SECRET_ACCESS_KEY")
        if session_token is None:
            session_token = env.get("AWS_SESSION_TOKEN") or None
        if not access_key or not secret_key:
            raise PermissionDenied(
                f"s3://{bucket}: no S3 credentials: give an access key and a secret key, "
                "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        for what, value in (("access key", access_key), ("secret key", secret_key), ("session token", session_token)):
            # A header value with a line break (a token read from a file with its newline) would make
            # http.client raise an error that quotes it: refused here, without quoting it.
            if value and any(c < " " or c == "\x7f" for c in value):
                raise InvalidArgument(f"s3://{bucket}: the {what} holds a control character (a line break?)")
        self._credentials = Credentials(access_key, secret_key, session_token)
        self.endpoint = (
            endpoint
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or (f"https://s3.{self.region}.amazonaws.com")
        ).rstrip("/")
        url = urllib.parse.urlsplit(self.endpoint)
        if url.username is not None or url.password is not None:
            # Never echoed: user:password@ in an endpoint is a credential.
            raise InvalidArgument("s3: invalid endpoint: credentials in it are not used (give them as keys)")
        if url.scheme not in ("http", "https") or not url.hostname or url.path or url.query:
            raise InvalidArgument(f"s3: invalid endpoint {self.endpoint!r}: want http(s)://host[:port]")
        self._https = url.scheme == "https"
        self._hostname = url.hostname
        try:
            self._port = url.port or (443 if self._https else 80)
        except ValueError as e:
            raise InvalidArgument(f"s3: invalid endpoint {self.endpoint!r}: {e}") from None
        # The Host header as the server sees it: the port only when it is not the scheme's default.
        self._host = url.netloc
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.multipart_threshold = self.part_size if multipart_threshold is None else multipart_threshold
        self._ssl = ssl_context
        self._log = log
        self._conn: http.client.HTTPConnection | None = None

    def __repr__(self) -> str:
        # The access key ID is not a secret (it is in every Authorization header); the secret and token are.
        return (
            f"S3Client(endpoint={self.endpoint!r}, bucket={self.bucket!r}, region={self.region!r}, "
            f"access_key={self._credentials.access_key!r})"
        )

    # -- connection --

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> S3Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                context = self._ssl or ssl.create_default_context()
                self._conn = http.client.HTTPSConnection(
                    self._hostname, self._port, timeout=self.timeout, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(self._hostname, self._port, timeout=self.timeout)
        return self._conn

    # -- requests --

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"

    def _scrub(self, text: str) -> str:
        """The server's text without our secrets and on one line. The secret key is never sent, but the
        session token is, and a server may echo what it got. (A secret of a few characters would match
        ordinary words and cannot be told apart in a text: those are left, as no real credential is that
        short.)"""
        for secret in self._credentials.hidden():
            if len(secret) >= 8:
                text = text.replace(secret, "<redacted>")
        return " ".join(text.split())

    def _error(self, op: str, key: str | None, resp: _Response) -> GraftfsError | _Retry:
        """The error for a failed response, or a :class:`_Retry` if the request is worth trying again."""
        code = message = ""
        root = _parse_xml(resp.body) if resp.body else None
        if root is not None and _local(root.tag) == "Error":
            code, message = _child_text(root, "Code"), _child_text(root, "Message")
        code = code or http.client.responses.get(resp.status, "").replace(" ", "") or "Error"
        text = self._scrub(f"{resp.status} {code}" + (f": {message}" if message else ""))
        line = f"s3 {op} {self._where(key)}: {text}"
        if resp.status >= 500 or resp.status == 429 or code in RETRYABLE_CODES:
            return _Retry(text, Unavailable(line))
        if resp.status == 404 or code in NOT_FOUND_CODES:
            return NotFound(line)
        if resp.status == 403 or code in CREDENTIAL_CODES:
            return PermissionDenied(line)
        if code == "BucketAlreadyExists":
            return AlreadyExists(line)
        return InvalidArgument(line)

    def _request(
        self,
        op: str,
        method: str,
        key: str | None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: _Body | None = None,
        ok: Sequence[int] = (200,),
        sink: Callable[[http.client.HTTPResponse], None] | None = None,
    ) -> _Response:
        """Send a signed request, retrying what is transient; return the response if its status is in ``ok``.

        With ``sink``, a successful response's body is handed to it to stream (a failure while it reads is
        retried like any other: the sink must start over when called again); otherwise it is read whole.
        """
        path = "/" + uri_encode(self.bucket, keep_slash=False)
        if key is not None:
            path += "/" + uri_encode(key, keep_slash=True)
        qs = canonical_query(query or {})
        target = path + ("?" + qs if qs else "")
        where = self._where(key)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(op, method, key, path, qs, target, headers or {}, body, ok, sink)
            except _Retry as retry:
                if attempt > self.retries:
                    final = retry.final
                    raise type(final)(f"{final.message} ({attempt} attempts)") from None
                wait = self.backoff * (2 ** (attempt - 1))
                if self._log is not None:
                    self._log.debug("s3-retrying", op=op, object=where, attempt=attempt, reason=retry.reason, wait=wait)
                time.sleep(wait)

    def _attempt(
        self,
        op: str,
        method: str,
        key: str | None,
        path: str,
        qs: str,
        target: str,
        headers: Mapping[str, str],
        body: _Body | None,
        ok: Sequence[int],
        sink: Callable[[http.client.HTTPResponse], None] | None,
    ) -> _Response:
        where = self._where(key)

        def unavailable(exc: BaseException) -> _Retry:
            self.close()  # the connection is in an unknown state: the next attempt opens a new one
            reason = _describe(exc)
            return _Retry(reason, Unavailable(f"s3 {op} {where} at {self.endpoint}: {reason}"))

        payload = body.sha256 if body is not None else EMPTY_SHA256
        signed = sign(method, self._host, path, qs, headers, payload, self._credentials, self.region, datetime.now(UTC))
        try:
            resp = self._exchange(method, target, signed, body, ok, sink)
        except ssl.SSLCertVerificationError as e:
            # Not transient: retrying cannot make the certificate valid.
            self.close()
            raise Unavailable(f"s3 {op} {where} at {self.endpoint}: {e.verify_message or e}") from None
        except (OSError, http.client.HTTPException) as e:
            raise unavailable(e) from None
        except BaseException:
            self.close()  # a sink's or a body's own error, or ^C: the connection is mid-request
            raise
        if resp.status in ok:
            return resp
        raise self._error(op, key, resp)

    def _exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: _Body | None,
        ok: Sequence[int],
        sink: Callable[[http.client.HTTPResponse], None] | None,
    ) -> _Response:
        """One request and its response on the kept-alive connection (opened if need be)."""
        conn = self._connection()
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            try:
                conn.putheader(name, value)
            except ValueError:  # http.client's text quotes the value, which may be a credential
                self.close()
                raise InvalidArgument(f"s3 {method}: header {name} has a value HTTP cannot carry") from None
        if body is not None or method in ("PUT", "POST"):
            conn.putheader("Content-Length", str(body.size if body is not None else 0))
        conn.endheaders()
        try:
            if body is not None:
                for chunk in body.chunks():
                    conn.send(chunk)
        except (OSError, http.client.HTTPException) as e:
            # A server that refuses a request (bad signature, no such bucket) may answer and close before
            # reading the body: its answer, if it got through, says more than the broken pipe.
            try:
                early = conn.getresponse()
                resp = _Response(early.status, {k.lower(): v for k, v in early.getheaders()}, early.read())
            except (OSError, http.client.HTTPException):
                raise e from None
            self.close()
            if resp.status in ok:
                raise e from None  # an answer to a request it did not read whole cannot be success
            return resp
        raw = conn.getresponse()
        resp = _Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, b"")
        if raw.status in ok and sink is not None:
            sink(raw)
        else:
            # Read even a HEAD's (empty) body: http.client only frees the connection for the next request once
            # the response is read, and a request sent before that fails after the server has acted on it.
            resp.body = raw.read()
        if raw.will_close:
            self.close()
        return resp

    # -- operations --

    def create_bucket(self) -> bool:
        """Create the bucket; False if it is already ours (S3 and RGW differ: RGW may simply answer 200)."""
        body: _Body | None = None
        if self.region != DEFAULT_REGION:
            body = _BytesBody(
                (
                    '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    f"<LocationConstraint>{_xml_escape(self.region)}</LocationConstraint></CreateBucketConfiguration>"
                ).encode()
            )
        resp = self._request("create_bucket", "PUT", None, body=body, ok=(200, 409))
        if resp.status == 409:
            root = _parse_xml(resp.body)
            if root is not None and _child_text(root, "Code") == "BucketAlreadyOwnedByYou":
                return False
            error = self._error("create_bucket", None, resp)
            raise error.final if isinstance(error, _Retry) else error
        return True

    def put_object(
        self, key: str, data: bytes | bytearray | memoryview | IO[bytes], *, if_none_match: bool = True
    ) -> bool:
        """Upload ``data`` (bytes, or a seekable binary file from its current position to its end) as ``key``
        in one request. With ``if_none_match`` (the default) an existing object is left as it is and False
        returned; True means this call stored the object."""
        self._check_key(key)
        if isinstance(data, bytes | bytearray | memoryview):
            body: _Body = _BytesBody(data)
        else:
            what = f"s3 put_object {self._where(key)}"
            try:
                start = data.tell()
                size = data.seek(0, os.SEEK_END) - start
            except OSError as e:
                # A pipe cannot be hashed and then sent: the signature needs the hash before the first byte.
                raise _local_error(f"{what}: the body must be a seekable file", e) from None
            body = _FileBody(data, start, size, what)
        return self._put(key, body, if_none_match)

    def put_file(self, key: str, path: str | os.PathLike[str], *, if_none_match: bool = True) -> bool:
        """Upload the file at ``path`` as ``key``: in one request up to ``multipart_threshold`` bytes, else as a
        multipart upload streamed part by part. Returns as :meth:`put_object` does."""
        self._check_key(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with below; only open()'s error is ours to word
        except OSError as e:
            raise InvalidArgument(f"s3 put_file {self._where(key)}: {path}: {_describe(e)}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size <= self.multipart_threshold:
                return self._put(key, _FileBody(f, 0, size, f"s3 put_file {self._where(key)}"), if_none_match)
            return self._multipart(key, f, size, if_none_match)

    def _put(self, key: str, body: _Body, if_none_match: bool) -> bool:
        headers = {"if-none-match": "*"} if if_none_match else {}
        # 412 Precondition Failed: an object is already there, which for content-addressed keys is the same
        # content. (A retry after a lost answer to our own upload lands here too, rightly.)
        ok = (200, 412) if if_none_match else (200,)
        resp = self._request("put_object", "PUT", key, headers=headers, body=body, ok=ok)
        return resp.status != 412

    def _multipart(self, key: str, f: IO[bytes], size: int, if_none_match: bool) -> bool:
        where = self._where(key)
        # Not every server honours If-None-Match on CompleteMultipartUpload (Ceph RGW 16 ignores it and overwrites):
        # look first, so that an existing layer costs one HEAD instead of its whole upload.
        if if_none_match and self.exists(key):
            return False
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        resp = self._request("create_multipart_upload", "POST", key, query={"uploads": ""})
        root = _parse_xml(resp.body)
        upload_id = _child_text(root, "UploadId") if root is not None else ""
        if not upload_id:
            raise Unavailable(f"s3 create_multipart_upload {where}: the answer has no UploadId")
        try:
            parts = []
            for number, offset in enumerate(range(0, size, part_size), start=1):
                body = _FileBody(f, offset, min(part_size, size - offset), f"s3 upload_part {where}")
                resp = self._request(
                    "upload_part",
                    "PUT",
                    key,
                    query={"partNumber": str(number), "uploadId": upload_id},
                    body=body,
                )
                etag = resp.headers.get("etag", "")
                if not etag:
                    raise Unavailable(f"s3 upload_part {where}: part {number} was answered without an ETag")
                parts.append(f"<Part><PartNumber>{number}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>")
            manifest = _BytesBody(
                ("<CompleteMultipartUpload>" + "".join(parts) + "</CompleteMultipartUpload>").encode()
            )
            headers = {"if-none-match": "*"} if if_none_match else {}
            try:
                resp = self._request(
                    "complete_multipart_upload",
                    "POST",
                    key,
                    query={"uploadId": upload_id},
                    headers=headers,
                    body=manifest,
                    ok=(200, 412) if if_none_match else (200,),
                )
            except NotFound:
                # NoSuchUpload after a retry: the first attempt completed the upload and its answer was lost.
                info = self._head_or_none(key)
                if info is not None and info.size == size:
                    return True
                raise
            if resp.status == 412:
                # Someone completed the same key between our HEAD and now: theirs stays, ours is dropped.
                self._abort(key, upload_id)
                return False
            # S3 may answer 200 and only then report a failure in the body (it streams while it assembles).
            root = _parse_xml(resp.body)
            if root is not None and _local(root.tag) == "Error":
                error = self._error("complete_multipart_upload", key, _Response(500, resp.headers, resp.body))
                raise error.final if isinstance(error, _Retry) else error
        except BaseException:
            self._abort(key, upload_id)
            raise
        return True

    def _abort(self, key: str, upload_id: str) -> None:
        """Best effort: an upload left behind only costs the server space until its lifecycle rules clean up,
        and the error that made us abort is the one to report."""
        try:
            self._request("abort_multipart_upload", "DELETE", key, query={"uploadId": upload_id}, ok=(200, 204))
        except GraftfsError:
            pass

    def head_object(self, key: str) -> ObjectInfo:
        """The object's size, ETag and modification time; NotFound if it is not there."""
        self._check_key(key)
        resp = self._request("head_object", "HEAD", key)
        return ObjectInfo(
            key=key,
            size=int(resp.headers.get("content-length", "0")),
            etag=resp.headers.get("etag", "").strip('"'),
            last_modified=resp.headers.get("last-modified", ""),
        )

    def _head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return self.head_object(key)
        except NotFound:
            return None

    def exists(self, key: str) -> bool:
        return self._head_or_none(key) is not None

    def get_object(self, key: str, dest: str | os.PathLike[str] | IO[bytes]) -> ObjectInfo:
        """Stream the object into ``dest``: a path (written under a temporary name beside it and renamed
        into place only when complete) or a seekable binary file (written from its current position)."""
        self._check_key(key)
        if isinstance(dest, str | os.PathLike):
            final = os.fspath(dest)
            tmp = f"{final}.part-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                try:
                    f = open(tmp, "xb")  # noqa: SIM115 - closed by the with below
                except OSError as e:
                    raise _local_error(f"s3 get_object {self._where(key)}: {final}", e) from None
                with f:
                    info = self._get_into(key, f)
                try:
                    os.replace(tmp, final)
                except OSError as e:
                    raise _local_error(f"s3 get_object {self._where(key)}: {final}", e) from None
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            return info
        return self._get_into(key, dest)

    def _get_into(self, key: str, f: IO[bytes]) -> ObjectInfo:
        what = f"s3 get_object {self._where(key)}"
        try:
            start = f.tell()
        except OSError:
            start = -1  # a pipe: fine, unless a retry has to start over
        got: dict[str, str] = {}

        def sink(raw: http.client.HTTPResponse) -> None:
            try:
                if got:
                    # A retry starts over: drop whatever the failed attempt wrote.
                    if start < 0:
                        raise OSError(errno.ESPIPE, "cannot start over on a stream that cannot seek")
                    f.seek(start)
                    f.truncate()
                got["started"] = "yes"
            except OSError as e:
                raise _local_error(what, e) from None
            expected = raw.getheader("content-length")
            n = 0
            while chunk := raw.read(CHUNK):
                try:
                    f.write(chunk)
                except OSError as e:
                    raise _local_error(what, e) from None
                n += len(chunk)
            if expected is not None and n != int(expected):
                raise http.client.IncompleteRead(b"", int(expected) - n)
            got["size"] = str(n)

        resp = self._request("get_object", "GET", key, sink=sink)
        try:
            f.flush()
        except OSError as e:
            raise _local_error(what, e) from None
        return ObjectInfo(
            key=key,
            size=int(got.get("size", "0")),
            etag=resp.headers.get("etag", "").strip('"'),
            last_modified=resp.headers.get("last-modified", ""),
        )

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, page by page (ListObjectsV2, following
        continuation tokens)."""
        token = ""
        while True:
            # encoding-type=url: keys may hold characters XML 1.0 cannot carry; the server percent-encodes them.
            query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
            if token:
                query["continuation-token"] = token
            resp = self._request("list_objects", "GET", None, query=query)
            root = _parse_xml(resp.body)
            if root is None or _local(root.tag) != "ListBucketResult":
                raise Unavailable(f"s3 list_objects {self._where(None)}: the answer is not a ListBucketResult")
            encoded = _child_text(root, "EncodingType") == "url"
            for elem in root:
                if _local(elem.tag) != "Contents":
                    continue
                key = _child_text(elem, "Key")
                yield ObjectInfo(
                    key=urllib.parse.unquote_plus(key) if encoded else key,
                    size=int(_child_text(elem, "Size") or "0"),
                    etag=_child_text(elem, "ETag").strip('"'),
                    last_modified=_child_text(elem, "LastModified"),
                )
            token = _child_text(root, "NextContinuationToken")
            if _child_text(root, "IsTruncated") != "true" or not token:
                return

    def delete_object(self, key: str) -> None:
        """Delete the object; deleting one that is not there is not an error (S3 answers 204 either way)."""
        self._check_key(key)
        self._request("delete_object", "DELETE", key, ok=(200, 204))

    def _check_key(self, key: str) -> None:
        if not key or len(key.encode()) > 1024:
            raise InvalidArgument(f"s3: invalid object key {key!r} in {self._where(None)}")


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
