"""The S3 client against a real S3 server: Ceph's RADOS Gateway, started once for the module
(tests/support/rgw.py). If the gateway cannot start, every test here fails with the reason: the packages
are installable wherever the suite runs, so nothing is skipped."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from graftfs.errors import NotFound, PermissionDenied, Unavailable
from graftfs.log import LEVELS, Logger
from graftfs.repository.s3 import S3Client
from tests.support.rgw import RGW, processes_using, start_rgw


@pytest.fixture(scope="module")
def rgw() -> Iterator[RGW]:
    with start_rgw() as server:
        yield server
    # start_rgw has killed and reaped its daemons; nothing naming its private ceph.conf may be left.
    assert processes_using(server.workdir / "ceph.conf") == []
    assert not server.workdir.exists()


_buckets = iter(range(1_000_000))


@pytest.fixture
def client(rgw: RGW) -> Iterator[S3Client]:
    """A client for a fresh bucket of its own."""
    endpoint, access_key, secret_key = rgw
    with S3Client(
        f"test-{next(_buckets)}-{os.getpid()}",
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        environ={},
        retries=2,
        backoff=0.05,
    ) as c:
        assert c.create_bucket()
        yield c


def test_rgw_is_small_and_quick(rgw: RGW) -> None:
    # The figures the fixture is meant to keep (the budget: tens of seconds, a few hundred MB).
    assert rgw.started_in < 60, rgw.started_in
    assert 0 < rgw.rss_bytes() < 600 << 20, rgw.rss_bytes()


def test_put_get_head_delete(client: S3Client, tmp_path: Path) -> None:
    data = b"layer bytes\n" * 1000
    key = "sha256/" + hashlib.sha256(data).hexdigest()
    assert client.put_object(key, data)
    info = client.head_object(key)
    assert info.size == len(data)
    assert info.etag == hashlib.md5(data).hexdigest()  # a single-part upload's ETag is its MD5
    dest = tmp_path / "out"
    got = client.get_object(key, dest)
    assert dest.read_bytes() == data
    assert got.size == len(data)
    assert os.listdir(tmp_path) == ["out"]  # the temporary name is gone
    with open(tmp_path / "out2", "wb") as f:
        client.get_object(key, f)
    assert (tmp_path / "out2").read_bytes() == data
    # A file object body, from its current position.
    with open(dest, "rb") as f:
        f.seek(100)
        assert client.put_object("from-file", f)
    client.get_object("from-file", tmp_path / "from-file")
    assert (tmp_path / "from-file").read_bytes() == data[100:]
    client.delete_object(key)
    with pytest.raises(NotFound):
        client.head_object(key)
    client.delete_object(key)  # not there any more: still no error


def test_keys_that_need_encoding(client: S3Client, tmp_path: Path) -> None:
    keys = ["a b/c+d=e&f?g#h", "ключ/ü", "x%20y", "tilde~under_score.dash-", "semi;colon:at@bang!"]
    for key in keys:
        assert client.put_object(key, key.encode())
    assert sorted(o.key for o in client.list_objects()) == sorted(keys)
    for key in keys:
        client.get_object(key, tmp_path / "k")
        assert (tmp_path / "k").read_bytes() == key.encode()
    assert [o.key for o in client.list_objects("a b/")] == ["a b/c+d=e&f?g#h"]


def test_list_follows_continuation_tokens(client: S3Client) -> None:
    """More than one page (RGW, like S3, returns at most 1000 keys a page)."""
    keys = {f"layers/{i:05d}" for i in range(1010)}
    for key in sorted(keys):
        client.put_object(key, b"x")
    client.put_object("other/1", b"y")
    listed = [o.key for o in client.list_objects("layers/")]
    assert listed == sorted(keys)
    assert all(o.size == 1 for o in client.list_objects("layers/"))
    assert len(list(client.list_objects())) == 1011
    assert list(client.list_objects("nothing-here/")) == []


def test_if_none_match_uploads_nothing_new(client: S3Client, rgw: RGW) -> None:
    assert client.put_object("layer", b"first")
    before = client.head_object("layer")
    time.sleep(1.1)  # Last-Modified has a resolution of one second: an overwrite would show
    assert client.put_object("layer", b"second") is False
    after = client.head_object("layer")
    assert after == before
    # Without the condition the object is replaced.
    assert client.put_object("layer", b"second", if_none_match=False)
    assert client.head_object("layer").etag == hashlib.md5(b"second").hexdigest()


def test_multipart_round_trip(client: S3Client, tmp_path: Path) -> None:
    src = tmp_path / "big"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(20):  # 20 MiB: parts of 8, 8 and 4 MiB
            f.write(bytes([i]) + block[1:])
    assert client.put_file("big", src)
    info = client.head_object("big")
    assert info.size == 20 << 20
    assert info.etag.endswith("-3")  # a multipart ETag counts its parts
    dest = tmp_path / "back"
    client.get_object("big", dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    # Again: already there, so nothing is uploaded (not even a multipart upload begun) and False comes back.
    time.sleep(1.1)
    assert client.put_file("big", src) is False
    assert client.head_object("big") == info
    # A small file goes up in one request.
    small = tmp_path / "small"
    small.write_bytes(b"small")
    assert client.put_file("small", small)
    assert client.head_object("small").etag == hashlib.md5(b"small").hexdigest()


def test_wrong_secret_is_permission_denied(rgw: RGW, client: S3Client) -> None:
    wrong_secret = "not-the-secret-" + rgw.secret_key[::-1]
    bad = S3Client(
        client.bucket,
        endpoint=rgw.endpoint,
        access_key=rgw.access_key,
        secret_key=wrong_secret,
        environ={},
        retries=0,
    )
    unknown = S3Client(client.bucket, endpoint=rgw.endpoint, access_key="NOSUCHKEY", secret_key="x" * 40, environ={})
    with bad, unknown:
        check_refused(bad, unknown, rgw, wrong_secret)


def check_refused(bad: S3Client, unknown: S3Client, rgw: RGW, wrong_secret: str) -> None:
    for call in (lambda: bad.put_object("k", b"data"), lambda: list(bad.list_objects()), lambda: bad.head_object("k")):
        with pytest.raises(PermissionDenied) as caught:
            call()
        text = str(caught.value)
        assert "\n" not in text
        assert wrong_secret not in text and rgw.secret_key not in text
        assert f"s3://{bad.bucket}" in text
        assert wrong_secret not in repr(bad)
    with pytest.raises(PermissionDenied, match="SignatureDoesNotMatch"):
        bad.put_object("k", b"data")
    with pytest.raises(PermissionDenied, match="InvalidAccessKeyId"):
        unknown.put_object("k", b"data")


def test_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        c = S3Client("b", endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="s" * 40, environ={})
        c.retries, c.backoff = 2, 0.01
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            c.put_object("k", b"data")
        assert time.monotonic() - t0 < 5
    text = str(caught.value)
    assert text == f"s3 put_object s3://b/k at http://127.0.0.1:{port}: connection refused (3 attempts)"


def test_missing_key_and_bucket_are_not_found(client: S3Client, rgw: RGW, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="NoSuchKey"):
        client.get_object("missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    assert os.listdir(tmp_path) == []
    with pytest.raises(NotFound):
        client.head_object("missing")
    assert not client.exists("missing")
    endpoint, access_key, secret_key = rgw
    with S3Client(
        "no-such-bucket", endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={}
    ) as nobucket:
        with pytest.raises(NotFound, match="NoSuchBucket"):
            nobucket.put_object("k", b"data")
        with pytest.raises(NotFound, match="NoSuchBucket"):
            list(nobucket.list_objects())


def test_create_bucket_twice(client: S3Client) -> None:
    # RGW answers 200 to its owner (S3 would say BucketAlreadyOwnedByYou): either way, no error.
    assert client.create_bucket() in (True, False)


# --- Faults: a proxy in front of RGW that fails the requests a test chooses ---------------------------------

#: A rule sees (method, path, query) and answers None (forward to RGW), an HTTP status to answer with, or
#: "drop" to close the connection without an answer once the request is read.
Rule = Callable[[str, str, dict[str, list[str]]], "int | str | None"]


@contextmanager
def fault_proxy(target: str, rule: Rule) -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy on a free port that forwards to ``target`` verbatim (the Host header included, which is
    what the client signed) except where ``rule`` says to fail; yields its URL and the requests it saw."""
    seen: list[str] = []
    upstream = urllib.parse.urlsplit(target)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle_one(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append(f"{self.command} {url.path}?{url.query}")
            action = rule(self.command, url.path, urllib.parse.parse_qs(url.query, keep_blank_values=True))
            if action == "drop":
                self.close_connection = True
                return
            if isinstance(action, int):
                payload = f"<Error><Code>Injected{action}</Code><Message>injected</Message></Error>".encode()
                if action == 503:
                    payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your rate</Message></Error>"
                self.send_response(action)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(upstream.hostname or "", upstream.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    conn.putheader(name, value)
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def through(proxy: str, rgw: RGW, bucket: str, log: Logger | None = None) -> S3Client:
    return S3Client(
        bucket,
        endpoint=proxy,
        access_key=rgw.access_key,
        secret_key=rgw.secret_key,
        environ={},
        retries=3,
        backoff=0.01,
        log=log,
    )


def test_transient_failures_are_retried_and_logged_without_secrets(rgw: RGW, client: S3Client) -> None:
    failures: Iterator[int | str] = iter([503, "drop", 500])

    def rule(method: str, path: str, query: dict[str, list[str]]) -> int | str | None:
        return next(failures, None) if method == "PUT" else None

    stream = io.StringIO()
    with (
        fault_proxy(rgw.endpoint, rule) as (proxy, seen),
        through(proxy, rgw, client.bucket, Logger(LEVELS["debug"], stream)) as c,
    ):
        assert c.put_object("retried", b"payload")
    assert [line.split("?")[0] for line in seen] == [f"PUT /{client.bucket}/retried"] * 4
    assert client.head_object("retried").size == len(b"payload")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["data"]["attempt"] for line in lines] == [1, 2, 3]
    assert "503 SlowDown" in lines[0]["data"]["reason"]
    assert rgw.secret_key not in stream.getvalue()


def test_retries_are_bounded(rgw: RGW, client: S3Client) -> None:
    def rule(method: str, path: str, query: dict[str, list[str]]) -> int | str | None:
        return 503

    with (
        fault_proxy(rgw.endpoint, rule) as (proxy, seen),
        through(proxy, rgw, client.bucket) as c,
        pytest.raises(Unavailable) as caught,
    ):
        c.put_object("anything", b"data")
    assert len(seen) == 4
    assert str(caught.value) == (
        f"s3 put_object s3://{client.bucket}/anything: 503 SlowDown: Please reduce your rate (4 attempts)"
    )
    # A HEAD's answer has no body: the status names the error.
    with (
        fault_proxy(rgw.endpoint, rule) as (proxy, seen),
        through(proxy, rgw, client.bucket) as c,
        pytest.raises(Unavailable) as caught,
    ):
        c.head_object("anything")
    assert str(caught.value) == f"s3 head_object s3://{client.bucket}/anything: 503 ServiceUnavailable (4 attempts)"


def test_a_failed_multipart_upload_is_aborted(rgw: RGW, client: S3Client, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(17 << 20))  # three parts

    def rule(method: str, path: str, query: dict[str, list[str]]) -> int | str | None:
        return 500 if method == "PUT" and query.get("partNumber") == ["2"] else None

    with (
        fault_proxy(rgw.endpoint, rule) as (proxy, seen),
        through(proxy, rgw, client.bucket) as c,
        pytest.raises(Unavailable, match=r"s3 upload_part s3://.*/big: 500 Injected500"),
    ):
        c.put_file("big", src)
    assert [line.split(" ")[0] for line in seen] == ["HEAD", "POST", "PUT", "PUT", "PUT", "PUT", "PUT", "DELETE"]
    assert not client.exists("big")
    # Nothing left half-uploaded: the upload was aborted.
    uploads = client._request("list_multipart_uploads", "GET", None, query={"uploads": ""})
    assert b"<Upload>" not in uploads.body, uploads.body
