"""The registry client's parsing helpers (auth challenges, proxies from the environment) and its errors' kinds."""

from __future__ import annotations

import pytest

from graftfs.errors import FailedPrecondition, InvalidArgument, Unavailable
from graftfs.sources.registry import _parse_challenge
from graftfs.sources.transport import Retry, Transport, _proxy_for


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        ),
        ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
        (
            'Bearer realm="https://r/t", scope="repository:a:pull,push", error="insufficient_scope"',
            "bearer",
            {"realm": "https://r/t", "scope": "repository:a:pull,push", "error": "insufficient_scope"},
        ),
        ('Bearer realm="a\\"b",service=plain', "bearer", {"realm": 'a"b', "service": "plain"}),
        ("", "", {}),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    assert _parse_challenge(header) == (scheme, params)


PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_proxy_without_the_environment(env: pytest.MonkeyPatch) -> None:
    assert _proxy_for("https", "registry.example.com") is None


def test_proxy_per_scheme_with_credentials(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTPS_PROXY", "http://u%3Ax:p%40ss@proxy.corp:3128")
    env.setenv("http_proxy", "proxy.corp")
    assert _proxy_for("https", "registry.example.com:5000") == (
        "proxy.corp:3128",
        {"Proxy-Authorization": "Basic dTp4OnBAc3M="},  # "u:x:p@ss"
    )
    assert _proxy_for("http", "registry.example.com") == ("proxy.corp:80", {})


@pytest.mark.parametrize(
    ("no_proxy", "netloc", "direct"),
    [
        ("", "localhost:5000", True),  # loopback is never proxied (Go's rule)
        ("", "127.0.0.1:5000", True),
        ("", "[::1]:5000", True),
        ("example.com", "registry.example.com", True),
        (".example.com", "registry.example.com", True),
        ("*.example.com", "registry.example.com", True),
        ("example.com", "example.com", True),
        ("example.com", "notexample.com", False),
        ("registry.example.com:5000", "registry.example.com:5000", True),
        ("10.0.0.0/8", "10.1.2.3:5000", True),
        ("10.0.0.0/8", "192.168.1.1", False),
        ("*", "anything.example", True),
    ],
)
def test_no_proxy_rules(env: pytest.MonkeyPatch, no_proxy: str, netloc: str, direct: bool) -> None:
    env.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    env.setenv("NO_PROXY", no_proxy)
    assert (_proxy_for("https", netloc) is None) == direct


def test_only_http_proxies(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTPS_PROXY", "socks5://proxy.corp:1080")
    # The machine's configuration is at fault: fixing the request would not help.
    with pytest.raises(FailedPrecondition, match="only http:// proxies"):
        _proxy_for("https", "registry.example.com")


def test_a_request_that_ran_out_of_retries_is_unavailable() -> None:
    # Worth retrying later: the registry may come back.
    with pytest.raises(Unavailable) as err:
        Retry(budget=0).failed("https://registry.example.com/v2/", "HTTP 503 Service Unavailable")
    assert str(err.value) == (
        "fetching https://registry.example.com/v2/: gave up after 1 attempt in 0.0s: HTTP 503 Service Unavailable"
    )


def test_a_url_that_is_not_http_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="only http and https are supported"):
        Transport().get("ftp://files.example.com/layer.tgz", Retry(budget=0))
