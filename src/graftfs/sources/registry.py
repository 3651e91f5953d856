"""Registry images (``docker://[host[:port]]/repository[:tag|@digest]``) over the OCI distribution API.

One persistent ``http.client`` connection to the registry carries the manifest, config and layer requests;
blobs redirected elsewhere (a CDN, object storage) get a connection of their own. Manifests and configs are
small and read whole: a manifest is checked against its digest whenever one is known (pulling by digest,
or a manifest chosen from an index), the config always. Layers are returned as the live HTTP response and
verified while they stream (see layers.stream).

Plain HTTP is used for the hosts the caller lists as insecure (``--insecure-registry``, exact
``host[:port]``), HTTPS with the system's trust store otherwise. Anonymous access only: a registry that
asks for credentials is reported as such.
"""

from __future__ import annotations

import http.client
import io
import json
import ssl
import urllib.parse

from ..errors import GraftfsError, InvalidImage, NotFound, Unsupported, VerificationError
from ..layers.expect import Expect
from ..reference import ImageRef
from . import platform
from .base import ImageSpec, LayerInfo, chain_ids, check_digest, sha256_digest
from .oci_layout import INDEX_TYPES, LAYER_TYPES, MAX_INDEX_DEPTH, MAX_JSON

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
TIMEOUT = 60.0
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
        self._conn: http.client.HTTPConnection | None = None

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=TIMEOUT)
        return http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=ssl.create_default_context())

    def _get(self, path: str, accept: str = "") -> http.client.HTTPResponse:
        """GET ``path`` on the registry over the shared connection; redirects are followed."""
        headers = {"User-Agent": USER_AGENT}
        if accept:
            headers["Accept"] = accept
        scheme, netloc, target = self.scheme, self.host, path
        for _ in range(MAX_REDIRECTS + 1):
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
                raise GraftfsError(f"fetching {scheme}://{netloc}{target}: {_describe(exc)}") from None
            if resp.status not in (301, 302, 303, 307, 308):
                return resp
            location = resp.getheader("Location") or ""
            resp.read()
            resp.close()
            if not location:
                raise GraftfsError(f"{scheme}://{netloc}{target}: redirect without a Location")
            url = urllib.parse.urlsplit(urllib.parse.urljoin(f"{scheme}://{netloc}{target}", location))
            if url.scheme not in ("http", "https") or not url.netloc:
                raise GraftfsError(f"{scheme}://{netloc}{target}: unsupported redirect to `{location}`")
            scheme, netloc = url.scheme, url.netloc
            target = (url.path or "/") + (f"?{url.query}" if url.query else "")
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

    def _read_limited(self, resp: http.client.HTTPResponse, what: str) -> bytes:
        try:
            data = resp.read(MAX_JSON + 1)
            if len(data) > MAX_JSON:
                raise InvalidImage(f"{what} is larger than {MAX_JSON} bytes")
            return data
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise GraftfsError(f"reading {what}: {_describe(exc)}") from None
        finally:
            resp.close()

    # -- manifests -----------------------------------------------------------------------------------------

    def _manifest(
        self, reference: str, digest: str = "", size: int = -1, top: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """Fetch a manifest or index; returns its media type (from the response) and the document."""
        resp = self._get(f"/v2/{self.repository}/manifests/{reference}", ACCEPT)
        if resp.status == 404 and top:
            resp.read()
            resp.close()
            raise NotFound(f"{self.url} does not exist or you do not have permissions to see it.")
        self._check_status(resp, f"manifest `{reference}`")
        content_type = (resp.getheader("Content-Type") or "").partition(";")[0].strip()
        data = self._read_limited(resp, f"manifest `{reference}`")
        if digest:
            actual = sha256_digest(data)
            if actual != digest:
                raise VerificationError(f"manifest digest mismatch: expected: {digest}, actual: {actual}")
            if size >= 0 and size != len(data):
                raise VerificationError(f"manifest size mismatch: expected: {size}, actual {len(data)}")
        doc = _parse(data, f"manifest `{reference}`")
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
            os_, arch, variant = platform.host()
            want = f"{os_}/{arch}" + (f"/{variant}" if variant else "")
            raise NotFound(f"no image for platform {want} in the image index of {self.url}")
        return chosen

    def _config(self, desc: dict[str, Any]) -> dict[str, Any]:
        digest = check_digest(desc.get("digest"), "config")
        size = desc.get("size", -1)
        resp = self._get(f"/v2/{self.repository}/blobs/{digest}")
        self._check_status(resp, f"config blob `{digest}`")
        data = self._read_limited(resp, f"config `{digest}`")
        actual = sha256_digest(data)
        if actual != digest:
            raise VerificationError(f"config digest mismatch: expected: {digest}, actual: {actual}")
        if isinstance(size, int) and size >= 0 and size != len(data):
            raise VerificationError(f"config size mismatch: expected: {size}, actual {len(data)}")
        return _parse(data, f"config `{digest}`")

    def _from_manifest(self, manifest: dict[str, Any]) -> ImageSpec:
        cfg_desc = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(cfg_desc, dict) or not isinstance(layers, list):
            raise InvalidImage("manifest has no config or no layers")
        config = self._config(cfg_desc)
        rootfs = config.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise InvalidImage(
                f"image config lists {len(diff_ids) if isinstance(diff_ids, list) else 0} diff_ids "
                f"for {len(layers)} layers"
            )
        for d in diff_ids:
            check_digest(d, "diff_id")
        out = []
        for layer, diff_id, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
            if not isinstance(layer, dict):
                raise InvalidImage("manifest layer is not a descriptor")
            media_type = layer.get("mediaType", "")
            if media_type not in LAYER_TYPES:
                raise InvalidImage(f"unsupported layer media type `{media_type}`")
            digest = check_digest(layer.get("digest"), "layer")
            size = layer.get("size", -1)
            out.append(
                LayerInfo(
                    volume_id=chain.partition(":")[2],
                    blob=digest,
                    expect=Expect(digest=digest, size=size if isinstance(size, int) else -1, diff_id=diff_id),
                    media_type=media_type,
                    urls=tuple(u for u in layer.get("urls") or () if isinstance(u, str)),
                )
            )
        return ImageSpec(layers=tuple(out), config=config)

    # -- blobs ---------------------------------------------------------------------------------------------

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        digest = check_digest(layer.blob, "layer")
        resp = self._get(f"/v2/{self.repository}/blobs/{digest}")
        if resp.status == 404 and layer.urls:
            resp.read()
            resp.close()
            raise NotFound(
                f"layer `{digest}` is not in the registry and fetching foreign layers from "
                f"{layer.urls[0]} is not supported by this build yet"
            )
        self._check_status(resp, f"layer blob `{digest}`")
        return io.BufferedReader(_Body(resp, self), buffer_size=1 << 16)


class _Body(io.RawIOBase):
    """A blob's HTTP response. Closed before its end, it also drops the shared connection: the unread rest
    of the body would otherwise be taken for the next response."""

    def __init__(self, resp: http.client.HTTPResponse, source: RegistrySource) -> None:
        super().__init__()
        self._resp = resp
        self._source: RegistrySource | None = source
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            n = self._resp.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise GraftfsError(f"reading blob: {_describe(exc)}") from None
        if n == 0:
            self._done = True
        return n

    def close(self) -> None:
        if not self.closed:
            if not self._done and self._source is not None:
                self._source.close()
            self._source = None
            self._resp.close()
        super().close()


def _describe(exc: BaseException) -> str:
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


def _parse(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidImage(f"invalid {what}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidImage(f"invalid {what}: not a JSON object")
    return doc
