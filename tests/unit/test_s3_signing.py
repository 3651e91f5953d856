"""SigV4 for S3 against the examples AWS publishes ("Signature Calculations for the Authorization Header:
Transferring Payload in a Single Chunk", Amazon S3 API Reference): same inputs, same signatures. Plus the
client's configuration and its promise that secrets stay out of every text. No network."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from graftfs.errors import GraftfsError, InvalidArgument, NotFound, PermissionDenied, Unavailable
from graftfs.repository import s3

# The example credentials and moment of AWS's documentation.
CREDS = s3.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
NOW = datetime(2013, 5, 24, 0, 0, 0, tzinfo=UTC)
HOST = "examplebucket.s3.amazonaws.com"


def signature(headers: dict[str, str]) -> str:
    return headers["authorization"].rsplit("Signature=", 1)[1]


def test_get_object_example() -> None:
    """GET /test.txt with Range: bytes=0-9 and an empty payload."""
    out = s3.sign("GET", HOST, "/test.txt", "", {"Range": "bytes=0-9"}, s3.EMPTY_SHA256, CREDS, "us-east-1", NOW)
    assert out["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert out["x-amz-date"] == "20130524T000000Z"
    assert out["x-amz-content-sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_put_object_example() -> None:
    """PUT /test$file.text: a key with a character to encode, a signed payload hash, extra headers signed."""
    payload = b"Welcome to Amazon S3."
    digest = hashlib.sha256(payload).hexdigest()
    assert digest == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    path = "/" + s3.uri_encode("test$file.text", keep_slash=True)
    assert path == "/test%24file.text"
    headers = {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"}
    out = s3.sign("PUT", HOST, path, "", headers, digest, CREDS, "us-east-1", NOW)
    assert out["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )
    # The documented canonical request's digest, as it appears in the documented string to sign.
    request, _ = s3.canonical_request("PUT", path, "", {k: v for k, v in out.items() if k != "authorization"}, digest)
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"
    )


def test_get_bucket_lifecycle_example() -> None:
    """A sub-resource with no value signs as ``lifecycle=``."""
    query = s3.canonical_query({"lifecycle": ""})
    assert query == "lifecycle="
    out = s3.sign("GET", HOST, "/", query, {}, s3.EMPTY_SHA256, CREDS, "us-east-1", NOW)
    assert signature(out) == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    request, _ = s3.canonical_request(
        "GET", "/", query, {k: v for k, v in out.items() if k != "authorization"}, s3.EMPTY_SHA256
    )
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"
    )


def test_list_objects_example() -> None:
    """Query parameters are sorted whatever order they are given in."""
    query = s3.canonical_query([("prefix", "J"), ("max-keys", "2")])
    assert query == "max-keys=2&prefix=J"
    out = s3.sign("GET", HOST, "/", query, {}, s3.EMPTY_SHA256, CREDS, "us-east-1", NOW)
    assert signature(out) == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"


def test_session_token_and_conditional_header_are_signed() -> None:
    creds = s3.Credentials("AKID", "SECRET", "TOKEN")
    out = s3.sign("PUT", "h", "/b/k", "", {"If-None-Match": "*"}, s3.EMPTY_SHA256, creds, "us-east-1", NOW)
    assert out["x-amz-security-token"] == "TOKEN"
    signed = "SignedHeaders=host;if-none-match;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
    assert signed in out["authorization"]
    plain = s3.sign("PUT", "h", "/b/k", "", {}, s3.EMPTY_SHA256, creds, "us-east-1", NOW)
    assert signature(plain) != signature(out)


def test_uri_encoding() -> None:
    assert s3.uri_encode("a b+c/d~e_f.g-h", keep_slash=True) == "a%20b%2Bc/d~e_f.g-h"
    assert s3.uri_encode("a/b=c&d", keep_slash=False) == "a%2Fb%3Dc%26d"
    assert s3.uri_encode("ключ", keep_slash=True) == "%D0%BA%D0%BB%D1%8E%D1%87"
    assert s3.canonical_query({"continuation-token": "1/2+3=", "list-type": "2"}) == (
        "continuation-token=1%2F2%2B3%3D&list-type=2"
    )


SECRET = "very-secret-key-0123456789"
TOKEN = "very-secret-session-token-abcdef"


def test_configuration_from_the_environment() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    client = s3.S3Client("layers", environ=env)
    assert client.region == "eu-west-1"
    assert client.endpoint == "http://127.0.0.1:9000"
    # AWS_REGION and AWS_ENDPOINT_URL_S3 take precedence, as in the AWS tools; arguments over everything.
    env |= {"AWS_REGION": "eu-north-1", "AWS_ENDPOINT_URL_S3": "https://s3.example.test"}
    client = s3.S3Client("layers", environ=env)
    assert (client.region, client.endpoint) == ("eu-north-1", "https://s3.example.test")
    client = s3.S3Client("layers", environ=env, region="r", endpoint="http://h:1/")
    assert (client.region, client.endpoint) == ("r", "http://h:1")
    client = s3.S3Client("layers", environ={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"})
    assert (client.region, client.endpoint) == ("us-east-1", "https://s3.us-east-1.amazonaws.com")


def test_missing_credentials_and_bad_endpoints() -> None:
    with pytest.raises(PermissionDenied, match="AWS_ACCESS_KEY_ID"):
        s3.S3Client("layers", environ={})
    for endpoint in ("ftp://h", "http://h/prefix", "http://h:notaport", "h:9000"):
        with pytest.raises(InvalidArgument):
            s3.S3Client("layers", endpoint=endpoint, access_key="a", secret_key="s", environ={})
    with pytest.raises(InvalidArgument):
        s3.S3Client("a/b", access_key="a", secret_key="s", environ={})


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    client = s3.S3Client(
        "layers", endpoint="http://127.0.0.1:1", access_key="AKID", secret_key=SECRET, session_token=TOKEN
    )
    texts = [repr(client), str(client.__dict__), repr(client._credentials)]
    # A server that echoes what it got: the client's message must not repeat it.
    echo = f"<Error><Code>SignatureDoesNotMatch</Code><Message>got {SECRET} and {TOKEN}</Message></Error>"
    for status in (400, 403, 404, 409, 500):
        err = client._error("put_object", "k", s3._Response(status, {}, echo.encode()))
        final = err.final if isinstance(err, s3._Retry) else err
        assert isinstance(final, GraftfsError)
        texts.append(str(final))
    for text in texts:
        assert SECRET not in text and TOKEN not in text, text
    assert "AKID" in repr(client)


def test_error_classes() -> None:
    client = s3.S3Client("b", endpoint="http://127.0.0.1:1", access_key="a", secret_key="s", environ={})

    def error(status: int, code: str = "", message: str = "") -> GraftfsError:
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode() if code else b""
        err = client._error("get_object", "some/key", s3._Response(status, {}, body))
        return err.final if isinstance(err, s3._Retry) else err

    missing = error(404, "NoSuchKey", "The specified key does not exist.")
    assert isinstance(missing, NotFound)
    assert str(missing) == "s3 get_object s3://b/some/key: 404 NoSuchKey: The specified key does not exist."
    assert isinstance(error(404), NotFound)  # a HEAD's answer has no body
    assert str(error(404)) == "s3 get_object s3://b/some/key: 404 NotFound"
    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
        assert isinstance(error(403, code), PermissionDenied)
    assert isinstance(error(400, "ExpiredToken"), PermissionDenied)
    assert isinstance(error(503, "SlowDown"), Unavailable)
    assert isinstance(error(500, "InternalError"), Unavailable)
    assert isinstance(error(400, "InvalidArgument", "multi\nline"), InvalidArgument)
    assert "\n" not in str(error(400, "InvalidArgument", "multi\nline"))
    assert isinstance(error(416, "InvalidRange"), InvalidArgument)


def test_credentials_with_line_breaks_and_endpoints_with_userinfo_are_refused_without_quoting_them() -> None:
    from graftfs.errors import InvalidArgument
    from graftfs.repository.s3 import S3Client

    with pytest.raises(InvalidArgument) as info:
        S3Client("b", endpoint="http://127.0.0.1:9", access_key="AK", secret_key="SK", session_token="TOKEN123\n")
    assert "TOKEN123" not in str(info.value) and "session token" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        S3Client("b", endpoint="http://AK:SECRETSECRET@127.0.0.1:9", access_key="AK", secret_key="SK")
    assert "SECRETSECRET" not in str(info.value)
