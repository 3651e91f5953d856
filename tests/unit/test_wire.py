"""The HTTP/1.1 client against a raw socket server that answers with exactly the bytes each case needs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from graftfs.sources import wire


@contextmanager
def server(*answers: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """A server on 127.0.0.1 that, on one connection, reads a request head and sends each answer in turn
    (closing after the last). Yields its ``host:port`` and the request heads it got."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for answer in answers:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                requests.append(head)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", requests
    finally:
        listener.close()
        thread.join(5)


_opened: list[wire.Connection] = []


def connection(netloc: str, **kwargs: Any) -> wire.Connection:
    """A connection closed after the test (an unclosed socket is a warning, an error here)."""
    conn = wire.Connection(netloc, 5, **kwargs)
    _opened.append(conn)
    return conn


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def get(conn: wire.Connection, target: str = "/x") -> wire.Response:
    conn.request("GET", target, {"Accept": "*/*"})
    return conn.getresponse()


def test_content_length_bodies_on_one_keep_alive_connection() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Two: a\r\nx-two: b\r\n\r\nhello"
    with server(answer, answer) as (host, requests):
        conn = connection(host)
        first = get(conn)
        assert (first.status, first.reason, first.read()) == (200, "OK", b"hello")
        assert first.getheader("X-TWO") == "a, b"
        sock = conn.sock
        assert get(conn).read(100) == b"hello"
        assert conn.sock is sock, "the connection was not kept alive"
        conn.close()
    assert requests[0].startswith(b"GET /x HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
    assert b"Accept: */*\r\n" in requests[0]


def test_chunked_body_with_extensions_and_trailers() -> None:
    body = b"4;ext=1\r\nwire\r\n7\r\n client\r\n0\r\nTrailer: x\r\n\r\n"
    with server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body) as (host, _):
        resp = get(connection(host))
        assert resp.length is None
        assert resp.read() == b"wire client"


def test_a_chunked_body_cut_short_is_an_incomplete_read() -> None:
    with server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort") as (host, _):
        resp = get(connection(host))
        with pytest.raises(wire.IncompleteRead):
            resp.read()


def test_a_content_length_body_cut_short_ends_early_with_length_left() -> None:
    with server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") as (host, _):
        resp = get(connection(host))
        buffer = bytearray(64)
        assert resp.readinto(buffer) == 3
        assert resp.readinto(buffer) == 0
        assert resp.length == 7
    with server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") as (host, _), pytest.raises(wire.IncompleteRead):
        get(connection(host)).read()


def test_a_body_without_length_ends_when_the_server_closes() -> None:
    with server(b"HTTP/1.0 200 OK\r\n\r\nuntil the end") as (host, _):
        conn = connection(host)
        assert get(conn).read() == b"until the end"
        assert conn.sock is None


def test_interim_responses_are_skipped_and_204_has_no_body() -> None:
    with server(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n") as (host, _):
        resp = get(connection(host))
        assert (resp.status, resp.read()) == (204, b"")


def test_a_keep_alive_connection_the_server_closed_is_a_connection_reset() -> None:
    """RemoteDisconnected (a ConnectionResetError) when the close arrived first; a plain reset when the
    server's kernel answered the request with RST: the transport retries both on a fresh connection."""
    with server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as (host, _):
        conn = connection(host)
        assert get(conn).status == 200
        with pytest.raises(ConnectionResetError):
            get(conn)


def test_garbage_is_a_bad_status_line() -> None:
    with server(b"SSH-2.0-OpenSSH\r\n\r\n") as (host, _), pytest.raises(wire.BadStatusLine):
        get(connection(host))


def test_closing_a_response_before_its_end_closes_the_connection() -> None:
    with server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100) as (host, _):
        conn = connection(host)
        resp = get(conn)
        assert resp.read(10) == b"x" * 10
        resp.close()
        assert conn.sock is None


def test_header_values_cannot_smuggle_lines() -> None:
    conn = connection("127.0.0.1:1")
    conn.sock = socket.socket()  # never used: the request is refused before anything is sent
    with pytest.raises(ValueError):
        conn.request("GET", "/", {"Authorization": "Bearer x\r\nEvil: 1"})


def test_plain_http_through_a_proxy_sends_the_absolute_url() -> None:
    with server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as (proxy, requests):
        conn = connection("registry.example:5000", proxy=proxy, proxy_headers={"Proxy-Authorization": "x"})
        assert get(conn, "/v2/").read() == b"ok"
    assert requests[0].startswith(b"GET http://registry.example:5000/v2/ HTTP/1.1\r\nHost: registry.example:5000\r\n")
    assert b"Proxy-Authorization: x\r\n" in requests[0]


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("https://h:5000/v2/a/b?x=1&y=2#frag", ("https", "h:5000", "/v2/a/b", "x=1&y=2")),
        ("HTTP://h", ("http", "h", "", "")),
        ("http://[::1]:80?q", ("http", "[::1]:80", "", "q")),
        ("relative/path", ("", "", "relative/path", "")),
    ],
)
def test_split_url_matches_urlsplit(url: str, parts: tuple[str, str, str, str]) -> None:
    from urllib.parse import urlsplit

    assert wire.split_url(url) == parts
    expected = urlsplit(url)
    assert parts == (expected.scheme, expected.netloc, expected.path, expected.query)


def test_split_host() -> None:
    assert wire.split_host("h:5000", 80) == ("h", 5000)
    assert wire.split_host("h", 443) == ("h", 443)
    assert wire.split_host("[::1]:8080", 80) == ("::1", 8080)
    assert wire.split_host("[::1]", 80) == ("::1", 80)
