"""Private registries: TLS with a CA and client certificates from ``certs.d``, HTTP basic auth (htpasswd),
and bearer tokens from a token service, all against the real ``docker-registry``.

The CA, the certificates and the token service (a small HTTP server signing RS256 JWTs, as Docker's token
protocol wants) are made by the tests; graftfs finds the CA and client pair through ``GRAFTFS_CERTS_DIRS``,
laid out as ``/etc/docker/certs.d`` is.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.integration.conftest import Graftfs
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.pki import PKI, make_pki
from tests.support.registry import REGISTRY, Registry, basic, serve, start_registry
from tests.support.runc import run_in_rootfs

pytestmark = pytest.mark.skipif(
    not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry and skopeo"
)

USER, PASSWORD = "alice", "s3cret with spaces"
INSECURE = "This registry is insecure. To pull images from this registry, please use the --insecure-registry option."
BAD_CREDENTIALS = "authorization failed: username and password are invalid"


def _layout(tmp: Path, tag: str) -> Path:
    layout = tmp / f"layout-{tag}"
    top = TarBuilder().dir("etc").file("etc/motd", f"private {tag}\n".encode())
    write_oci_layout(layout, [busybox_layer(), top.build()], tag=tag)
    return layout


def _certs_d(root: Path, host: str, pki: PKI, client: bool = True, ca: bool = True) -> Path:
    """A certs.d tree for ``host`` (Docker's layout: ca.crt, client.cert, client.key)."""
    d = root / host
    d.mkdir(parents=True)
    if ca:
        shutil.copy(pki.ca, d / "ca.crt")
    if client:
        shutil.copy(pki.client.cert, d / "client.cert")
        shutil.copy(pki.client.key, d / "client.key")
    return root


# -- TLS + htpasswd --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Registry]:
    """HTTPS with a server certificate from the test CA, client certificates required, htpasswd auth;
    holds private/app:1."""
    work = tmp_path_factory.mktemp("tls-registry")
    htpasswd = work / "htpasswd"
    htpasswd.write_bytes(USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)) + b"\n")
    config = (
        "http.  tls:\n"
        f"http.    certificate: {pki.server.cert}\n"
        f"http.    key: {pki.server.key}\n"
        "http.    clientcas:\n"
        f"http.      - {pki.ca}\n"
        f"auth:\n  htpasswd:\n    realm: graftfs-test\n    path: {htpasswd}\n"
    )
    with start_registry(work / "srv", config) as reg:
        certs = _certs_d(work / "push-certs", "x", pki) / "x"
        reg.push_flags = ["--dest-cert-dir", str(certs), "--dest-creds", f"{USER}:{PASSWORD}"]
        reg.push(_layout(work, "1"), "1", "private/app")
        yield reg


def test_basic_auth_over_tls_with_a_private_ca(gfs: Graftfs, tls_registry: Registry, pki: PKI, tmp_path: Path) -> None:
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(_certs_d(tmp_path / "certs.d", tls_registry.host, pki))}
    url = tls_registry.url("private/app", "1")
    gfs.create(url, "tls", "--username", USER, "--password", PASSWORD)
    assert (gfs.rootfs("tls") / "etc/motd").read_text() == "private 1\n"
    assert run_in_rootfs(gfs.rootfs("tls"), ["/bin/cat", "/etc/motd"]).stdout == "private 1\n"
    gfs.run("delete", "tls")


def test_tls_and_credential_errors(gfs: Graftfs, tls_registry: Registry, pki: PKI, tmp_path: Path) -> None:
    url = tls_registry.url("private/app", "1")
    creds = ("--username", USER, "--password", PASSWORD)
    before = sorted(p.name for p in gfs.store.iterdir())

    # No CA for this host: GrootFS's text, which points at --insecure-registry.
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(tmp_path / "empty")}
    assert gfs.fails("create", *creds, url, "x") == INSECURE
    # The CA but no client certificate: the handshake fails and says so.
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(_certs_d(tmp_path / "ca-only", tls_registry.host, pki, client=False))}
    out = gfs.fails("create", *creds, url, "x")
    assert out == (
        f"fetching image reference: fetching https://{tls_registry.host}/v2/: TLS handshake failed: sslv3 alert "
        "bad certificate (the server wants a client certificate: client.cert and client.key in certs.d/<host>/)"
    )
    # Right certificates, wrong or missing credentials.
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(_certs_d(tmp_path / "certs.d", tls_registry.host, pki))}
    assert gfs.fails("create", "--username", USER, "--password", "wrong", url, "x") == BAD_CREDENTIALS
    assert gfs.fails("create", url, "x") == f"{url} does not exist or you do not have permissions to see it."
    # A client key without its certificate is named.
    broken = _certs_d(tmp_path / "broken", tls_registry.host, pki)
    (broken / tls_registry.host / "client.cert").unlink()
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(broken)}
    assert "missing client certificate" in gfs.fails("create", *creds, url, "x")

    assert sorted(p.name for p in gfs.store.iterdir()) == before
    assert not list((gfs.store / "images").iterdir())
    assert not gfs.volumes()
    # The password never reaches the logs, even at debug level.
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(_certs_d(tmp_path / "certs.d2", tls_registry.host, pki))}
    result = gfs.run("--log-level", "debug", "create", *creds, url, "logged")
    assert PASSWORD not in result.stderr and PASSWORD not in result.stdout
    gfs.run("delete", "logged")


def test_insecure_registry_skips_verification(gfs: Graftfs, tls_registry: Registry, pki: PKI, tmp_path: Path) -> None:
    """--insecure-registry on an HTTPS registry: TLS without verifying the server (the client pair is still
    offered: this registry requires one)."""
    gfs.env = {"GRAFTFS_CERTS_DIRS": str(_certs_d(tmp_path / "certs.d", tls_registry.host, pki, ca=False))}
    url = tls_registry.url("private/app", "1")
    # A host remembered as speaking plain HTTP that speaks TLS now is probed again, and forgotten.
    marker = gfs.store / "meta" / "plain-http" / tls_registry.host
    marker.parent.mkdir()
    marker.touch()
    gfs.create(url, "insecure", "--insecure-registry", tls_registry.host, "--username", USER, "--password", PASSWORD)
    assert (gfs.rootfs("insecure") / "etc/motd").read_text() == "private 1\n"
    assert not marker.exists()
    gfs.run("delete", "insecure")


# -- bearer tokens ------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Docker's token protocol: ``GET /token?service=..&scope=repository:<name>:<actions>`` with optional
    basic auth returns a JWT the registry verifies against ``cert``. ``alice`` may pull and push anything,
    anonymous users may pull ``public/*``; :attr:`useless` tokens grant nothing (the registry refuses them,
    as it refuses an expired token)."""

    SERVICE, ISSUER = "graftfs-test-registry", "graftfs-test-tokens"

    def __init__(self, directory: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        now = time.time()
        import datetime

        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
            .sign(self.key, hashes.SHA256())
        )
        self.cert = directory / "token.crt"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[tuple[str, str]] = []  # (user or "", scope)
        self.useless = 0
        self.lock = threading.Lock()

    def token(self, user: str, scope: str) -> str:
        now = int(time.time())
        access = []
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        with self.lock:
            useless = self.useless > 0
            self.useless -= useless
        if kind == "repository" and not useless:
            allowed = actions.split(",") if user == USER else ["pull"] if name.startswith("public/") else []
            access.append({"type": "repository", "name": name, "actions": allowed})
        claims = {
            "iss": self.ISSUER,
            "sub": user,
            "aud": self.SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                query = parse_qs(urlsplit(self.path).query)
                scope = " ".join(query.get("scope", []))
                auth = self.headers.get("Authorization", "")
                user = ""
                if auth:
                    if auth != basic(USER, PASSWORD):
                        self._reply(401, b'{"details":"wrong credentials"}')
                        return
                    user = USER
                with service.lock:
                    service.requests.append((user, scope))
                token = service.token(user, scope)
                self._reply(200, json.dumps({"token": token, "expires_in": 300}).encode())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> TokenService:
    return TokenService(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory, tokens: TokenService) -> Iterator[Registry]:
    """Plain HTTP registry with token auth; holds private/app:1 and public/app:1."""
    work = tmp_path_factory.mktemp("token-registry")
    with serve(tokens.handler()) as token_host:
        config = (
            "auth:\n  token:\n"
            f"    realm: http://{token_host}/token\n"
            f"    service: {TokenService.SERVICE}\n"
            f"    issuer: {TokenService.ISSUER}\n"
            f"    rootcertbundle: {tokens.cert}\n"
        )
        with start_registry(work / "srv", config) as reg:
            reg.push_flags = ["--dest-tls-verify=false", "--dest-creds", f"{USER}:{PASSWORD}"]
            layout = _layout(work, "1")
            reg.push(layout, "1", "private/app")
            reg.push(layout, "1", "public/app")
            tokens.requests.clear()
            yield reg


def test_bearer_token_with_credentials(gfs: Graftfs, token_registry: Registry, tokens: TokenService) -> None:
    url = token_registry.url("private/app", "1")
    gfs.create(url, "token", "--insecure-registry", token_registry.host, "--username", USER, "--password", PASSWORD)
    assert (gfs.rootfs("token") / "etc/motd").read_text() == "private 1\n"
    # One token for the whole pull (manifest, config, both layers), with the right scope.
    assert tokens.requests == [(USER, "repository:private/app:pull")]
    gfs.run("delete", "token")


def test_bearer_token_anonymous_and_refused(gfs: Graftfs, token_registry: Registry, tokens: TokenService) -> None:
    insecure = ("--insecure-registry", token_registry.host)
    gfs.create(token_registry.url("public/app", "1"), "public", *insecure)
    assert (gfs.rootfs("public") / "etc/motd").read_text() == "private 1\n"
    gfs.run("delete", "public")
    volumes = gfs.volumes()

    private = token_registry.url("private/app", "1")
    assert gfs.fails("create", *insecure, private, "x") == (
        f"{private} does not exist or you do not have permissions to see it."
    )
    assert gfs.fails("create", *insecure, "--username", USER, "--password", "nope", private, "x") == BAD_CREDENTIALS
    assert gfs.volumes() == volumes
    assert not list((gfs.store / "images").iterdir())


def test_a_refused_token_is_renewed_once(gfs: Graftfs, token_registry: Registry, tokens: TokenService) -> None:
    tokens.requests.clear()
    tokens.useless = 1  # the first token is refused by the registry, as an expired one would be
    url = token_registry.url("private/app", "1")
    gfs.create(url, "renewed", "--insecure-registry", token_registry.host, "--username", USER, "--password", PASSWORD)
    assert len(tokens.requests) == 2
    gfs.run("delete", "renewed")

    tokens.useless = 10  # refused again after renewal: give up with the permission error, no loop
    assert gfs.fails(
        "create", "--insecure-registry", token_registry.host, "--username", USER, "--password", PASSWORD, url, "x"
    ) == (f"{url} does not exist or you do not have permissions to see it.")
    tokens.useless = 0
