"""A client of ``graftfs serve docker-graphdriver`` for tests: the plugin as a process (:class:`Plugin`: its
calls as dockerd makes them), and :class:`GraphdriverSnapshotter`, the snapshot conformance suite's verbs
played through the graphdriver protocol the way dockerd plays them."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from graftfs.errors import AlreadyExists, FailedPrecondition, GraftfsError, InvalidArgument, NotFound
from graftfs.mount.spec import Mount


class Conn(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("plugin", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class Plugin:
    """``args`` and ``env``: more flags and environment for ``serve docker-graphdriver``."""

    def __init__(
        self, store: Path, sock: Path, log: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.store, self.sock, self.log = store, sock, log
        self.args, self.env = list(args), dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        argv = [sys.executable, "-m", "graftfs", "--store", str(self.store), "serve", "docker-graphdriver"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--socket", str(self.sock), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(self.sock))
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=40)
        return self.proc.returncode

    def raw(self, method: str, body: bytes = b"", chunked: bool = False) -> tuple[int, bytes]:
        conn = Conn(str(self.sock))
        try:
            if chunked:
                conn.request("POST", "/" + method, body=iter([body[i : i + 7000] for i in range(0, len(body), 7000)]))
            else:
                conn.request("POST", "/" + method, body=body)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def call(self, verb: str, request: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
        code, data = self.raw("GraphDriver." + verb, json.dumps(request or {}).encode())
        answer: dict[str, Any] = json.loads(data)
        assert code == status, (verb, code, answer)
        return answer

    def apply(self, layer_id: str, parent: str, tar: bytes, status: int = 200) -> dict[str, Any]:
        code, data = self.raw(f"GraphDriver.ApplyDiff?id={layer_id}&parent={parent}", tar, chunked=True)
        answer: dict[str, Any] = json.loads(data)
        assert code == status, (code, answer)
        return answer


def _error(message: str) -> GraftfsError:
    """The protocol carries no error kinds, only text (dockerd shows it as it is): the kind back from the words."""
    for words, kind in (
        ("does not exist", NotFound),
        ("already exists", AlreadyExists),
        ("parent of", FailedPrecondition),
        ("not a valid", InvalidArgument),
    ):
        if words in message:
            return kind(message)
    return GraftfsError(message)


class GraphdriverSnapshotter:
    """The conformance suite's ``prepare``, ``view``, ``mounts``, ``commit`` and ``remove`` through the
    graphdriver protocol, as dockerd would do them: a key is the layer ``sha256(key)``; ``prepare`` is
    ``CreateReadWrite`` and ``Get`` (the mount: a bind of ``Get``'s directory), ``view`` is ``Create`` and a
    read-only bind of ``Get``'s; ``commit`` is ``docker commit``'s ``Diff`` of the layer against its parent
    and ``ApplyDiff`` of that tar to a new layer, then the old one's ``Put`` and ``Remove``. Labels are not
    part of the protocol (ignored); ``stat``, ``update``, ``usage`` and ``walk`` have no counterpart."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.parents: dict[str, str] = {}
        self.got: set[str] = set()
        plugin.call("Init")

    @staticmethod
    def id(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _call(self, verb: str, request: dict[str, Any]) -> dict[str, Any]:
        code, data = self.plugin.raw("GraphDriver." + verb, json.dumps(request).encode())
        answer: dict[str, Any] = json.loads(data) if data else {}
        if code != 200:
            raise _error(answer.get("Err", data.decode(errors="replace")))
        return answer

    def _get(self, key: str) -> str:
        directory = str(self._call("Get", {"ID": self.id(key)})["Dir"])
        if key in self.got:
            self._call("Put", {"ID": self.id(key)})  # one Get outstanding per key, whatever the case calls
        self.got.add(key)
        return directory

    def _put(self, key: str) -> None:
        if key in self.got:
            self.got.discard(key)
            self._call("Put", {"ID": self.id(key)})

    def _create(self, verb: str, key: str, parent: str) -> None:
        self._call(verb, {"ID": self.id(key), "Parent": self.id(parent) if parent else ""})
        self.parents[key] = parent

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        self._create("CreateReadWrite", key, parent)
        return [Mount("bind", self._get(key), ("rw", "rbind"))]

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        self._create("Create", key, parent)
        return [Mount("bind", self._get(key), ("ro", "rbind"))]

    def mounts(self, key: str) -> list[Mount]:
        return [Mount("bind", self._get(key), ("rw", "rbind"))]

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        parent = self.parents.get(key, "")
        pid = self.id(parent) if parent else ""
        self._put(key)
        code, tar = self.plugin.raw("GraphDriver.Diff", json.dumps({"ID": self.id(key), "Parent": pid}).encode())
        if code != 200:
            raise _error(json.loads(tar)["Err"])
        self._create("Create", name, parent)
        code, data = self.plugin.raw(f"GraphDriver.ApplyDiff?id={self.id(name)}&parent={pid}", tar, chunked=True)
        if code != 200:
            raise _error(json.loads(data)["Err"])
        self.remove(key)

    def remove(self, key: str) -> None:
        child = next((k for k, p in self.parents.items() if p == key), None)
        self._put(key)
        self._call("Remove", {"ID": self.id(key)})  # the plugin refuses a parent's removal itself
        assert child is None, f"the plugin removed `{key}`, the parent of `{child}`"
        self.parents.pop(key, None)

    def close(self) -> None:
        for key in list(self.got):
            self._put(key)
