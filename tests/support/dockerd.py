"""A real dockerd (Debian's ``docker.io``, 20.10) for tests, with ``graftfs serve docker-graphdriver`` as its
storage driver, found through a spec file.

:func:`start_dockerd` makes a private mount namespace first, held by a process of its own (``unshare --mount
--propagation private``): in it, a tmpfs over ``/etc/docker`` (so the spec file
``/etc/docker/plugins/graftfs.spec`` and the ``key.json`` dockerd writes never reach the machine's) and a
directory of the test's own over ``/run`` (dockerd's ``/run/docker``, containerd's shim sockets in
``/run/containerd``). The plugin is started in that namespace (its mounts must be where dockerd and runc see
them), listening before dockerd starts (else dockerd retries for ~15 s, then says "driver not supported"),
then dockerd, with private ``--data-root``, ``--exec-root``, ``-H``, ``--pidfile`` and no networking of its
own. dockerd starts its own containerd (a child, in the same namespace, under ``--exec-root``).

Stopping (:func:`teardown`): dockerd SIGTERMed (it stops its containers and its containerd), SIGKILLed after
a while; then every process still running that names the work directory (containerd, shims) or lives in the
namespace is killed by PID and reaped, the plugin stopped, the holder killed; what is mounted under the work
directory on the machine's side is unmounted. The ``docker`` client talks to the socket from outside, with a
``DOCKER_CONFIG`` of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.leftovers import kill_until_gone, reap, subreaper, unmount_under

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # the 20.10 client of the same package (/usr/local/bin/docker may be newer)
GRAFTFS = [str(Path(sys.executable).with_name("graftfs"))]

HOLD = r"""
set -e
mount -t tmpfs -o mode=0755 graftfs-test-etc-docker /etc/docker
mkdir /etc/docker/plugins
printf 'unix://%s\n' "$2" > /etc/docker/plugins/graftfs.spec
mount --bind "$1" /run
if [ -n "$3" ]; then mount --bind "$3" /etc/subuid && mount --bind "$3" /etc/subgid; fi
echo ready
exec sleep infinity
"""


@dataclass
class Dockerd:
    work: Path
    holder: subprocess.Popen[bytes]
    plugin: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    driver: str = "graftfs"  # or one of dockerd's own (overlay2), for comparisons: then no plugin
    plugin_args: list[str] = field(default_factory=list)  # more flags for serve docker-graphdriver
    plugin_env: dict[str, str] = field(default_factory=dict)  # and its environment (S3 credentials)
    plugin_log_level: str = ""  # --log-level (a server logs errors whatever it says)

    @property
    def host(self) -> str:
        return "unix://" + str(self.work / "docker.sock")

    @property
    def plugin_socket(self) -> str:
        return str(self.work / "gd.sock")

    @property
    def store(self) -> Path:
        return self.work / "store"

    @property
    def log(self) -> Path:
        return self.work / "dockerd.log"

    @property
    def plugin_log(self) -> Path:
        return self.work / "plugin.log"

    def enter(self) -> list[str]:
        """The argv prefix that runs a command in the private mount namespace."""
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--"]

    def logs(self) -> str:
        out = []
        for path in (self.log, self.plugin_log):
            if path.exists():
                out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(out)

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "DOCKER_CONFIG": str(self.work / "client"), **extra}
        env.pop("DOCKER_HOST", None)
        return env

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [DOCKER, "-H", self.host, *args]
        result = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=self.env(**(env or {})),
            cwd=str(self.work),
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}"
                f"\nstderr: {result.stderr.decode(errors='replace')}\n{self.logs()}"
            )
        return result

    def out(self, *args: str, **kwargs: object) -> str:
        return self.docker(*args, **kwargs).stdout.decode()  # type: ignore[arg-type]

    # -- processes -----------------------------------------------------------------------------------------

    def start_plugin(self, timeout: float = 60) -> None:
        argv = [
            *self.enter(),
            *GRAFTFS,
            "--store",
            str(self.store),
            *(["--log-level", self.plugin_log_level] if self.plugin_log_level else []),
            "serve",
            "docker-graphdriver",
            "--socket",
            self.plugin_socket,
            *self.plugin_args,
        ]
        env = {**os.environ, **self.plugin_env}
        with open(self.plugin_log, "ab") as log:
            self.plugin = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env)
        _wait(lambda: _connects(self.plugin_socket), self.plugin, timeout, "the plugin", self.logs)

    def stop_plugin(self, sig: int = signal.SIGTERM) -> int:
        assert self.plugin is not None
        if self.plugin.poll() is None:
            self.plugin.send_signal(sig)
            try:
                self.plugin.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.plugin.kill()
                self.plugin.wait()
        return self.plugin.returncode

    def start_dockerd(self, timeout: float = 90) -> None:
        w = self.work
        argv = [
            *self.enter(),
            DOCKERD,
            "--data-root",
            str(w / "data"),
            "--exec-root",
            str(w / "exec"),
            "-H",
            self.host,
            "--pidfile",
            str(w / "dockerd.pid"),
            "--experimental",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--storage-driver",
            self.driver,
            "--config-file",
            str(w / "daemon.json"),
            *self.extra_args,
        ]
        if not (w / "daemon.json").exists():
            (w / "daemon.json").write_text("{}\n")
        env = {**os.environ, "TMPDIR": str(w / "tmp"), "DOCKER_CONFIG": str(w / "client")}
        env.pop("XDG_RUNTIME_DIR", None)
        env.pop("DOCKER_HOST", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(w))
        _wait(self._answers, self.proc, timeout, "dockerd", self.logs)

    def _answers(self) -> bool:
        if not os.path.exists(self.work / "docker.sock"):
            return False
        return self.docker("version", check=False, timeout=30).returncode == 0

    def stop_dockerd(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill_dockerd(self) -> None:
        """SIGKILL dockerd, as a crash or the OOM killer would. Its containerd dies with it (dockerd starts it
        with a parent-death signal) and, orphaned, would become a zombie of PID 1, which reaps nothing here: its
        PID, still in ``containerd.pid``, answers ``kill(pid, 0)``, so the next dockerd would take it for a live
        containerd and give up after waiting for its socket ("timeout waiting for containerd to start"). So
        this process is the subreaper for the kill, and reaps containerd by its PID."""
        assert self.proc is not None
        pidfile = self.work / "exec" / "containerd" / "containerd.pid"
        containerd = int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0
        with subreaper():
            self.proc.kill()
            self.proc.wait()
            if containerd:
                reap(containerd)

    def strays(self) -> list[int]:
        """Processes other than ours that name the work directory (dockerd's containerd, its shims) or live in
        the namespace, and their descendants (containers, a managed plugin: in mount namespaces of their own)."""
        ours = {os.getpid(), self.holder.pid}
        ours |= {p.pid for p in (self.plugin, self.proc) if p is not None and p.poll() is None}
        try:
            ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        except OSError:
            ns = ""
        needle = str(self.work).encode()
        found: set[int] = set()
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parents[pid] = int(f.read().rsplit(b")", 1)[1].split()[1])
                in_ns = bool(ns) and os.readlink(f"/proc/{entry}/ns/mnt") == ns
            except (OSError, IndexError, ValueError):
                continue
            if pid not in ours and (needle in cmdline or in_ns):
                found.add(pid)
        roots = found | (ours - {os.getpid()})
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in roots and pid not in roots:
                    roots.add(pid)
                    grew = True
        return sorted((roots | found) - ours)


def _connects(path: str) -> bool:
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _wait(ready: object, proc: subprocess.Popen[bytes], timeout: float, what: str, logs: object) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}\n{logs()}")  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not answer in {timeout}s\n{logs()}")  # type: ignore[operator]
        time.sleep(0.1)


def d_sock(work: Path) -> str:
    return str(work / "gd.sock")


def launch(
    work: Path,
    extra_args: Sequence[str] = (),
    subids: str = "",
    driver: str = "graftfs",
    plugin_args: Sequence[str] = (),
    plugin_env: dict[str, str] | None = None,
    plugin_log_level: str = "",
) -> Dockerd:
    """The namespace, the plugin, then dockerd (see the module's text). ``subids``: the lines of the
    ``/etc/subuid`` and ``/etc/subgid`` the namespace sees (for ``--userns-remap``), the machine's untouched.
    ``plugin_args``, ``plugin_env`` and ``plugin_log_level``: more flags, environment and logs for the plugin."""
    for sub in ("run", "tmp", "client", "data", "exec"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    subid_file = ""
    if subids:
        (work / "subids").write_text(subids)
        subid_file = str(work / "subids")
    holder_args = [str(work / "run"), d_sock(work), subid_file]
    with open(work / "holder.log", "wb") as err:
        holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", HOLD, "sh", *holder_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert holder.stdout is not None
    with holder.stdout:
        line = holder.stdout.readline()
    if line.strip() != b"ready":
        holder.kill()
        holder.wait()
        raise AssertionError(f"the namespace holder failed: {(work / 'holder.log').read_text(errors='replace')}")
    d = Dockerd(
        work,
        holder,
        extra_args=list(extra_args),
        driver=driver,
        plugin_args=list(plugin_args),
        plugin_env=plugin_env or {},
        plugin_log_level=plugin_log_level,
    )
    try:
        if driver == "graftfs":
            d.start_plugin()
        d.start_dockerd()
    except BaseException:
        teardown(d)
        raise
    return d


def teardown(d: Dockerd) -> list[str]:
    """Stop everything :func:`launch` started and what it started in turn; returns what was left mounted
    under the work directory on the machine's side (then unmounted)."""
    d.stop_dockerd()
    for _ in range(2):
        kill_until_gone(d.strays)
    if d.plugin is not None:
        d.stop_plugin()
    d.holder.kill()
    d.holder.wait()
    return unmount_under(d.work)


@contextmanager
def start_dockerd(
    work: Path,
    extra_args: Sequence[str] = (),
    subids: str = "",
    driver: str = "graftfs",
    plugin_args: Sequence[str] = (),
    plugin_env: dict[str, str] | None = None,
    plugin_log_level: str = "",
) -> Iterator[Dockerd]:
    d = launch(work, extra_args, subids, driver, plugin_args, plugin_env, plugin_log_level)
    try:
        yield d
    finally:
        left = teardown(d)
        assert not left, f"left mounted: {left}"


# -- images --------------------------------------------------------------------------------------------------


def docker_archive(layers: Sequence[bytes], tag: str, config: dict[str, object] | None = None) -> bytes:
    """A ``docker save`` archive (``manifest.json``, the config, ``<hex>/layer.tar``) of one image whose
    layers are the uncompressed tars ``layers``, bottom first: what ``docker load`` of dockerd 20.10 takes."""
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    if config:
        image_config["config"].update(config)  # type: ignore[attr-defined]
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    names = [f"{d[len('sha256:') :]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": names}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [(config_name, config_bytes), *zip(names, layers, strict=True), ("manifest.json", manifest)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def archive_layers(archive: bytes) -> dict[str, bytes]:
    """The layer tars in a ``docker save`` archive, by diffID."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        for name in manifest[0]["Layers"]:
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            found["sha256:" + hashlib.sha256(data).hexdigest()] = data
    return found
