"""HTTP/1.1 on a bare socket: the GET requests, keep-alive connections and body framing that registries need.

Not ``http.client``: importing it loads the ``email`` package (to parse headers), ``ssl``, ``re`` and
``enum``, about half of a warm ``docker://`` create, on every create Garden makes. This speaks the part of
HTTP/1.1 that registries, token services and blob stores use: one request at a time per connection,
``Content-Length``, ``chunked`` or connection-close bodies, keep-alive, proxies (absolute-form requests for
plain HTTP, ``CONNECT`` tunnels for HTTPS). ``ssl`` is imported by the caller only for ``https`` (it passes
an ``SSLContext``). Interface and errors follow ``http.client`` where the transport relies on them: a
``Content-Length`` body cut short reads as an early end with :attr:`Response.length` left above zero, a
``chunked`` one raises :class:`IncompleteRead`, a keep-alive connection the server closed raises
:class:`RemoteDisconnected`.
"""

from __future__ import annotations

import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ssl import SSLContext
    from typing import Any

_MAX_LINE = 65536
_MAX_HEADERS = 100
_CHUNK = 1 << 16


class HTTPException(Exception):
    """A response that does not follow HTTP."""


class IncompleteRead(HTTPException):
    def __init__(self, partial: bytes, expected: int | None = None) -> None:
        super().__init__(f"{len(partial)} bytes read" + (f", {expected} more expected" if expected else ""))
        self.partial = partial
        self.expected = expected


class BadStatusLine(HTTPException):
    pass


class RemoteDisconnected(ConnectionResetError, BadStatusLine):
    """The server closed the connection before it answered (an idle keep-alive connection, typically)."""


def split_host(netloc: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` (``[v6][:port]``) as a host and a port number."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = netloc.rpartition(":")
        if not sep:
            host, port = netloc, ""
    if port and not port.isdigit():
        raise OSError(f"invalid port in `{netloc}`")
    return host, int(port) if port else default_port


def _connect(host: str, port: int, timeout: float) -> Any:
    last: OSError | None = None
    # An ASCII name as bytes: a str would be encoded with the idna codec, one more import per create.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    raise last or OSError(f"no address for {host}")


class _Reader:
    """Buffered reads from a socket: lines for the status and headers, the rest straight into the caller's
    buffer."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()

    def readline(self) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > _MAX_LINE:
                raise HTTPException("header line too long")
            start = len(self.buf)
            chunk = self.sock.recv(_CHUNK)
            if not chunk:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            self.buf += chunk

    def readinto(self, view: memoryview) -> int:
        if self.buf:
            n = min(len(view), len(self.buf))
            view[:n] = self.buf[:n]
            del self.buf[:n]
            return n
        return int(self.sock.recv_into(view))


class Connection:
    """One keep-alive connection to ``netloc`` (``host[:port]``), over TLS when given a ``context``, and
    through the HTTP proxy ``proxy`` (``host:port``, with ``proxy_headers``) when given one."""

    def __init__(
        self,
        netloc: str,
        timeout: float,
        *,
        context: SSLContext | None = None,
        proxy: str = "",
        proxy_headers: dict[str, str] | None = None,
    ) -> None:
        self.netloc = netloc
        self.timeout = timeout
        self.context = context
        self.proxy = proxy
        self.proxy_headers = proxy_headers or {}
        self.sock: Any = None
        self._reader: _Reader | None = None
        self._method = "GET"

    def connect(self) -> None:
        host, port = split_host(self.netloc, 443 if self.context is not None else 80)
        sock = _connect(*split_host(self.proxy, 80), self.timeout) if self.proxy else _connect(host, port, self.timeout)
        try:
            if self.context is not None:
                if self.proxy:
                    self._tunnel(sock, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
                sock = self.context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = _Reader(sock)

    def _tunnel(self, sock: Any, target: str) -> None:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        lines += [f"{name}: {value}" for name, value in self.proxy_headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reader = _Reader(sock)
        _, status, reason = _status(reader)
        _headers(reader)
        if status != 200:
            raise OSError(f"Tunnel connection failed: {status} {reason}")
        if reader.buf:
            raise HTTPException("proxy sent data before the tunnel opened")

    def request(self, method: str, target: str, headers: dict[str, str]) -> None:
        if self.sock is None:
            self.connect()
        if self.proxy and self.context is None:
            # Plain HTTP through a proxy: the request line carries the absolute URL.
            target = f"http://{self.netloc}{target}"
            headers = {**headers, **self.proxy_headers}
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.netloc}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"invalid value for header {name}")
            lines.append(f"{name}: {value}")
        self._method = method
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def getresponse(self) -> Response:
        assert self._reader is not None
        return Response(self, self._reader, self._method)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self._reader = None


def _status(reader: _Reader) -> tuple[str, int, str]:
    line = reader.readline()
    if not line:
        raise RemoteDisconnected("Remote end closed connection without response")
    version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise BadStatusLine(repr(line[:80]))
    return version, int(code), reason.strip()


def _headers(reader: _Reader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise HTTPException(f"malformed header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise HTTPException(f"more than {_MAX_HEADERS} headers")


class Response:
    """One response; its body is read with :meth:`read` or :meth:`readinto`. Closing it before the end of
    its body closes the connection (the unread rest would be taken for the next response)."""

    def __init__(self, conn: Connection, reader: _Reader, method: str) -> None:
        self._conn = conn
        self._reader = reader
        while True:
            version, self.status, self.reason = _status(reader)
            self.headers = _headers(reader)
            if not 100 <= self.status < 200:
                break
        connection = self.headers.get("connection", "").lower()
        self._will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        self.length: int | None = None
        self._chunked = False
        self._chunk_left = 0
        self._done = False
        if method == "HEAD" or self.status in (204, 304):
            self.length = 0
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif self.headers.get("content-length", "").strip().isdigit():
            self.length = int(self.headers["content-length"])
        else:
            self._will_close = True  # the body ends when the server closes the connection
        if self.length == 0:
            self._finish()

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes (all of the body without it); fewer only at its end."""
        out = bytearray()
        while amt is None or len(out) < amt:
            want = _CHUNK if amt is None else min(amt - len(out), _CHUNK)
            buffer = bytearray(want)
            n = self.readinto(buffer)
            if n == 0:
                break
            out += buffer[:n]
        if amt is None and self.length:
            raise IncompleteRead(bytes(out), self.length)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self._chunked:
            return self._read_chunk(view)
        if self.length is not None:
            n = self._reader.readinto(view[: self.length])
            if n == 0:
                self._conn.close()  # cut short: `length` stays above zero, for the caller to see
                self._done = True
                return 0
            self.length -= n
            if self.length == 0:
                self._finish()
            return n
        n = self._reader.readinto(view)
        if n == 0:
            self._finish()
        return n

    def _read_chunk(self, view: memoryview) -> int:
        if self._chunk_left == 0:
            line = self._reader.readline()
            size = line.split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(size, 16)
            except ValueError:
                self._conn.close()
                raise IncompleteRead(b"") from None
            if self._chunk_left == 0:
                while self._reader.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._finish()
                return 0
        n = self._reader.readinto(view[: self._chunk_left])
        if n == 0:
            self._conn.close()
            raise IncompleteRead(b"")
        self._chunk_left -= n
        if self._chunk_left == 0 and self._reader.readline() not in (b"\r\n", b"\n"):
            self._conn.close()
            raise IncompleteRead(b"")
        return n

    def _finish(self) -> None:
        self._done = True
        if self._will_close:
            self._conn.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()


def split_url(url: str) -> tuple[str, str, str, str]:
    """``(scheme, netloc, path, query)`` of an absolute URL, its fragment dropped (``urllib.parse.urlsplit``
    without importing ``urllib.parse``, which loads ``re`` and ``ipaddress``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.isascii() or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return "", "", url, ""
    rest = rest.partition("#")[0]
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    end = min(ends) if ends else len(rest)
    path, _, query = rest[end:].partition("?")
    return scheme.lower(), rest[:end], path, query
