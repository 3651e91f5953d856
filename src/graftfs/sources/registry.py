"""Registry images (``docker://[host[:port]]/repository[:tag|@digest]``) over the OCI distribution API.

The distribution protocol on top of :mod:`.transport` (connections, TLS, proxies, retries, resumable
bodies). A pull starts with the version check (``GET /v2/``), which also decides the scheme and reads the
auth challenge:

* **scheme**: HTTPS, verified against the system's CAs and ``certs.d``. For a host listed as insecure
  (``--insecure-registry``, exact ``host[:port]``), HTTPS without verification, and plain HTTP when TLS
  fails there, as GrootFS (containers/image) does.
* **auth**: anonymous, HTTP basic, or bearer tokens (Docker's token protocol: the challenge names the
  realm, service and scope; the token is asked for with the credentials, if any, as basic auth, then sent
  with every request to the registry and renewed once when a request is refused with 401). Credentials
  and tokens are never sent to another host (a blob redirected to a CDN) and never logged.

Manifests and configs are small and read whole: a manifest is checked against its digest whenever one is
known (pulling by digest, or a manifest chosen from an index), the config always. What a reference names is
asked of the registry on every pull (that request is also where the registry says whether the caller may
have the image); what that names by digest below it (an index's manifest, the config) is kept in the store
once an image is made from it (:attr:`RegistrySource.documents`) and read from there next time, checked
against its digest as a fetched one is. A warm create of an image by tag is then one request. Layers are
returned as live resumable streams and verified while they stream (see layers.stream). A layer whose descriptor has
``urls`` (a foreign layer) is fetched from the first of them that answers, then from the registry.
Requests may come from several threads at once (layers are pulled in parallel): connections are per
thread and the token is shared under a lock.
"""

from __future__ import annotations

import _thread
import os

from .. import jsonc
from ..errors import GraftfsError, InvalidImage, NotFound, PermissionDenied, Unavailable
from ..reference import ImageRef
from . import wire
from .base import ImageSpec, LayerInfo, check_digest, image_spec, parse_object, verify_blob
from .oci_layout import INDEX_TYPES, MAX_INDEX_DEPTH, MAX_JSON
from .transport import ConnectFailed, Retry, Transport, basic_authorization, describe, registry_error, transient
from .wire import split_url

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
#: GrootFS's text when a token service refuses the credentials (or a registry refuses basic auth).
BAD_CREDENTIALS = "authorization failed: username and password are invalid"


class RegistrySource:
    def __init__(
        self,
        ref: ImageRef,
        insecure: Iterable[str] = (),
        credentials: tuple[str, str] | None = None,
        plain_http_hosts: str = "",
        documents: str = "",
    ) -> None:
        self.url = ref.original
        self.host = ref.host
        self.repository = ref.repository
        self.reference = ref.digest or ref.tag
        self.by_digest = bool(ref.digest)
        self.transport = Transport(insecure)
        self.credentials = credentials
        self.base = f"https://{self.host}"  # until the version check says otherwise
        self._authorization = ""  # the Authorization header for the registry, once known
        self._basic = False  # it is basic auth (so a 401 means the credentials are wrong)
        self._auth_lock = _thread.allocate_lock()
        #: A directory where insecure hosts found to speak plain HTTP are remembered ("" to probe every time).
        self.plain_http_hosts = plain_http_hosts
        #: A directory of manifests and configs by digest, from earlier pulls ("" to fetch every time).
        self.documents = documents
        self._fetched: dict[str, bytes] = {}  # what was fetched by digest, for remember()

    def close(self) -> None:
        self.transport.close()

    def remember(self) -> None:
        """Keep the manifests and configs this pull fetched by digest, for the next (called once an image is
        made from them: a failed create leaves the store as it was). Not synced: a copy lost in a crash is
        fetched again, and a torn one fails its digest check and is too."""
        if not self.documents or not self._fetched:
            return
        from ..store.fsutil import atomic_write

        try:
            os.makedirs(self.documents, mode=0o755, exist_ok=True)
            for digest, data in self._fetched.items():
                atomic_write(os.path.join(self.documents, digest.replace(":", "-")), data, sync=False)
            _prune(self.documents)
        except OSError:
            pass  # a copy, not a record: without it the next create fetches again

    # -- version check and auth ---------------------------------------------------------------------------

    def _ping(self) -> None:
        """The version check, which also picks the scheme: HTTPS, or for an insecure host that does not speak
        it, plain HTTP (GrootFS's order). A host found to speak plain HTTP is remembered (in the store, see
        :attr:`plain_http_hosts`) and asked over HTTP first next time, so that a warm create does not pay a
        failed TLS handshake, and the TLS stack's import, every time; if that fails it is probed again."""
        resp = self._ping_remembered()
        if resp is None:
            try:
                resp, _ = self.transport.get(f"https://{self.host}/v2/", self.transport.retry())
                self._remember(False)
            except ConnectFailed:
                if self.host not in self.transport.insecure:
                    raise
                self.base = f"http://{self.host}"
                resp, _ = self.transport.get(f"{self.base}/v2/", self.transport.retry())
                self._remember(resp.status in (200, 401))
        resp.read(64 << 10)
        resp.close()
        if resp.status == 401:
            self._authorize(resp.getheader("WWW-Authenticate") or "", "")
        elif resp.status != 200:
            raise Unavailable(
                f"pinging container registry {self.host}: invalid status code from registry {resp.status} "
                f"({resp.reason})"
            )

    def _marker(self) -> str:
        return os.path.join(self.plain_http_hosts, self.host.replace("/", "_")) if self.plain_http_hosts else ""

    def _plain_http_remembered(self) -> bool:
        marker = self._marker()
        return bool(marker) and self.host in self.transport.insecure and os.path.exists(marker)

    def _ping_remembered(self) -> wire.Response | None:
        if not self._plain_http_remembered():
            return None
        try:
            resp, _ = self.transport.get(f"http://{self.host}/v2/", self.transport.retry())
        except ConnectFailed:
            return None  # refused at once: probe as if new (a host that times out fails the same either way)
        if resp.status not in (200, 401):  # it speaks something else now (TLS on that port, say)
            resp.close()
            self.transport.drop(f"http://{self.host}/")
            return None
        self.base = f"http://{self.host}"
        return resp

    def _remember(self, plain_http: bool) -> None:
        marker = self._marker()
        if not marker:
            return
        try:
            if plain_http:
                os.makedirs(self.plain_http_hosts, mode=0o755, exist_ok=True)
                with open(marker, "w", encoding="ascii"):
                    pass
            else:
                os.unlink(marker)
        except OSError:
            pass  # a hint, not a record: without it the next create simply probes again

    def _authorize(self, challenge: str, sent: str) -> bool:
        """Answer an auth challenge to a request that carried ``sent``. Returns whether there is something
        new to retry with."""
        scheme, params = _parse_challenge(challenge)
        with self._auth_lock:
            if self._authorization != sent:
                return True  # another thread renewed it meanwhile
            if scheme == "basic":
                if self.credentials is None or sent:
                    return False
                self._basic = True
                user, password = self.credentials
                self._authorization = basic_authorization(user, password)
                return True
            if scheme == "bearer":
                self._authorization = "Bearer " + self._token(params)
                return True
            return False

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise Unavailable(f"{self.host} asks for a bearer token without a usable realm `{realm}`")
        query = [("scope", params.get("scope") or f"repository:{self.repository}:pull")]
        if params.get("service"):
            query.append(("service", params["service"]))
        from urllib.parse import urlencode  # tokens are asked for by registries with auth only

        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {}
        if self.credentials is not None:
            user, password = self.credentials
            headers["Authorization"] = basic_authorization(user, password)
        resp, _ = self.transport.get(url, self.transport.retry(), headers)
        try:
            data = resp.read(MAX_JSON)
        except (OSError, wire.HTTPException) as exc:
            raise Unavailable(f"fetching a token from {realm}: {describe(exc)}") from None
        finally:
            resp.close()
        if resp.status in (401, 403):
            raise PermissionDenied(BAD_CREDENTIALS, final=True)
        if resp.status != 200:
            raise Unavailable(f"fetching a token from {realm}: HTTP {resp.status} {resp.reason}")
        try:
            doc = jsonc.loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"fetching a token from {realm}: the answer has no token")
        return token

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _get(
        self, path: str, retry: Retry, accept: str = "", extra: dict[str, str] | None = None
    ) -> tuple[wire.Response, str]:
        """GET ``path`` on the registry with its credentials, answering one auth challenge (a first one, or
        an expired token) per call."""
        headers = dict(extra or {})
        if accept:
            headers["Accept"] = accept
        for attempt in (1, 2):
            sent = self._authorization
            if sent:
                headers["Authorization"] = sent
            resp, url = self.transport.get(self.base + path, retry, headers)
            if resp.status != 401 or attempt == 2 or split_url(url)[1] != self.host:
                return resp, url
            if not self._authorize(resp.getheader("WWW-Authenticate") or "", sent):
                return resp, url
            resp.read(64 << 10)
            resp.close()
        raise AssertionError("unreachable")

    def _check_status(self, resp: wire.Response, what: str) -> None:
        if resp.status == 200:
            return
        body = resp.read(64 << 10)
        resp.close()
        if resp.status == 401 and self._basic:
            raise PermissionDenied(BAD_CREDENTIALS, final=True)
        if resp.status in (401, 403):
            raise PermissionDenied(f"{self.url} does not exist or you do not have permissions to see it.", final=True)
        if resp.status == 404:
            raise NotFound(f"{what} not found in {self.host}/{self.repository}")
        detail = registry_error(body)
        raise Unavailable(
            f"fetching {what} from {self.host}/{self.repository}: HTTP {resp.status} {resp.reason}"
            + (f": {detail}" if detail else "")
        )

    def _fetch(
        self, path: str, what: str, accept: str = "", not_found: str = "", retry: Retry | None = None
    ) -> tuple[str, bytes]:
        """A small document (manifest, config), read whole; returns its Content-Type and bytes."""
        retry = retry or self.transport.retry()
        while True:
            resp, url = self._get(path, retry, accept)
            if resp.status == 404 and not_found:
                resp.read()
                resp.close()
                raise NotFound(not_found, final=True)
            self._check_status(resp, what)
            content_type = (resp.getheader("Content-Type") or "").partition(";")[0].strip()
            try:
                data = resp.read(MAX_JSON + 1)
                if len(data) <= MAX_JSON and resp.length:  # closed before its Content-Length
                    raise wire.IncompleteRead(data, resp.length)
            except (OSError, wire.HTTPException) as exc:
                self.transport.drop(url)
                if not transient(exc, True):
                    raise Unavailable(f"reading {what}: {describe(exc)}") from None
                retry.failed(url, describe(exc))
                continue
            finally:
                resp.close()
            if len(data) > MAX_JSON:
                self.transport.drop(url)
                raise InvalidImage(f"{what} is larger than {MAX_JSON} bytes")
            return content_type, data

    # -- manifests -----------------------------------------------------------------------------------------

    def _top(self) -> tuple[str, dict[str, Any]]:
        """The manifest or index the reference names, after the version check (which picks the scheme and
        reads the auth challenge). A host remembered to speak plain HTTP is asked for the manifest straight
        away, once: the version check is made only if that fails, so that every error reads as it did."""
        if self._plain_http_remembered():
            self.base = f"http://{self.host}"
            try:
                return self._manifest(self.reference, self._top_digest(), top=True, retry=Retry(0))
            except GraftfsError:
                self.base = f"https://{self.host}"
        self._ping()
        return self._manifest(self.reference, self._top_digest(), top=True)

    def _top_digest(self) -> str:
        return self.reference if self.by_digest else ""

    def _manifest(
        self, reference: str, digest: str = "", size: int = -1, top: bool = False, retry: Retry | None = None
    ) -> tuple[str, dict[str, Any]]:
        """A manifest or index; returns its media type (from the response, for a copy kept from an earlier
        pull from the document alone) and the document, checked against ``digest`` if there is one."""
        data = None if top else self._kept(digest, size)
        content_type = ""
        if data is None:
            content_type, data = self._fetch(
                f"/v2/{self.repository}/manifests/{reference}",
                f"manifest `{reference}`",
                ACCEPT,
                f"{self.url} does not exist or you do not have permissions to see it." if top else "",
                retry,
            )
            if digest:
                verify_blob(data, digest, size, "manifest")
                if not top:
                    self._fetched[digest] = data
        doc = parse_object(data, f"manifest `{reference}`")
        media_type = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else content_type
        if content_type in SCHEMA1_TYPES or media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise InvalidImage(
                "the image has a Docker schema 1 manifest, which graftfs does not support (deprecated since 2017, "
                "it has no diffIDs to verify layers against): push the image again with a current client"
            )
        return str(media_type or content_type), doc

    def resolve(self) -> ImageSpec:
        try:
            media_type, doc = self._top()
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
        from . import platform  # an index only: a warm create of a one-platform image never loads it

        chosen = platform.choose(manifests)
        if chosen is None:
            raise NotFound(f"no image for platform {platform.host_string()} in the image index of {self.url}")
        return chosen

    def _config(self, desc: dict[str, Any]) -> dict[str, Any]:
        digest = check_digest(desc.get("digest"), "config")
        size = desc.get("size", -1)
        data = self._kept(digest, size)
        if data is None:
            _, data = self._fetch(f"/v2/{self.repository}/blobs/{digest}", f"config blob `{digest}`")
            verify_blob(data, digest, size, "config")
            self._fetched[digest] = data
        return parse_object(data, f"config `{digest}`")

    def _kept(self, digest: str, size: object) -> bytes | None:
        """The copy of a document kept from an earlier pull, if there is one and it matches ``digest`` and
        ``size``."""
        if not self.documents or not digest:
            return None
        try:
            with open(os.path.join(self.documents, digest.replace(":", "-")), "rb") as f:
                data = f.read(MAX_JSON + 1)
        except OSError:
            return None
        try:
            verify_blob(data, digest, size, "document")
        except GraftfsError:
            return None  # torn or damaged: fetched again, and replaced once the image is made
        return data

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
        foreign, errors = self.transport.open_first(layer.urls)
        if foreign is not None:
            return foreign
        path = f"/v2/{self.repository}/blobs/{digest}"
        retry = self.transport.retry()
        resp, url = self._get(path, retry)
        if resp.status == 404 and errors:
            resp.read()
            resp.close()
            raise NotFound(f"foreign layer `{digest}` is not in the registry and its urls failed: {'; '.join(errors)}")
        self._check_status(resp, f"layer blob `{digest}`")

        def fetch(extra: dict[str, str]) -> tuple[wire.Response, str]:
            resp, url = self._get(path, retry, extra=extra)
            if resp.status not in (200, 206):
                self._check_status(resp, f"layer blob `{digest}`")
            return resp, url

        return self.transport.body(resp, url, fetch, retry)


#: How many kept manifests and configs a store holds: each create that fetched one adds it, and beyond this
#: the oldest go (a few kilobytes each; one that goes is fetched again when it is next needed).
MAX_DOCUMENTS = 1024


def _prune(directory: str) -> None:
    names = [name for name in os.listdir(directory) if name.startswith("sha256-")]  # ours, temp names too
    if len(names) <= MAX_DOCUMENTS:
        return
    aged = []
    for name in names:
        try:
            aged.append((os.stat(os.path.join(directory, name)).st_mtime, name))
        except OSError:
            pass
    aged.sort()
    for _, name in aged[: len(aged) - MAX_DOCUMENTS * 3 // 4]:  # a quarter of room, so not every create prunes
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"`` →
    ``("bearer", {"realm": ..., ...})``. Quoted values may contain commas and escaped quotes."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params
