"""A real containerd (Debian's 1.6) for tests, with graftfs's snapshotter as its proxy plugin ``graftfs``.

:func:`start_containerd` writes a private config (``version = 2``: its own root, state, gRPC, ttrpc and debug
sockets, opt path, the cri/aufs/btrfs/zfs/devmapper plugins disabled, and ``[proxy_plugins.graftfs]`` at the
snapshotter's socket) and runs ``containerd --config`` in a private mount namespace whose ``/run`` is a
directory of the test's own: containerd 1.6 puts its shims' sockets in ``/run/containerd/s``, runc's state in
``/run/containerd/runc`` and ``ctr``'s FIFOs in ``/run/containerd/fifo`` whatever its config says, and none
of that may reach the machine's ``/run/containerd``. For the same reason :meth:`Containerd.ctr` runs ``ctr``
inside that namespace (``nsenter``). The mounts containerd and its shims make stay in the namespace too.

Stopping: SIGTERM, then SIGKILL after a while, reaped; then the shims this containerd started (found by their
``-address``, killed by PID), and whatever is still mounted under the work directory is unmounted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.leftovers import kill_until_gone, unmount_under

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
#: stargz-snapshotter's ctr (Debian package stargz-snapshotter): ``images rpull`` labels each layer's prepare
#: for remote snapshotters.
CTR_REMOTE = "/usr/bin/ctr-remote"
DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
]


#: The CRI plugin's section when it is enabled (``launch(..., cri=True)``): graftfs as its snapshotter, with
#: the snapshot annotations that make it label each layer's prepare (``containerd.io/snapshot/cri.*``; 1.6
#: defaults to not sending them), and its CNI directories, which it makes and watches, in ``work``. A registry
#: on a loopback address is plain HTTP to it without configuration (its ``registryEndpoints``).
CRI_SECTION = """
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "graftfs"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{work}/cni/bin"
    conf_dir = "{work}/cni/conf"
"""


def config(work: Path, snapshotter_socket: str, cri: bool = False) -> str:
    """The private config.toml: everything under ``work``; the CRI plugin disabled unless ``cri``."""
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS if not (cri and p == "io.containerd.grpc.v1.cri"))
    return f"""version = 2
root = "{work / "root"}"
state = "{work / "state"}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{work / "c.sock"}"

[ttrpc]
  address = "{work / "c.sock.ttrpc"}"

[debug]
  address = "{work / "debug.sock"}"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{work / "opt"}"

[proxy_plugins.graftfs]
  type = "snapshot"
  address = "{snapshotter_socket}"
""" + (CRI_SECTION.format(work=work) if cri else "")


@dataclass
class Containerd:
    work: Path
    proc: subprocess.Popen[bytes]
    namespace: str  # the containerd namespace the tests use

    @property
    def address(self) -> str:
        return str(self.work / "c.sock")

    @property
    def log(self) -> Path:
        return self.work / "containerd.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def enter(self) -> list[str]:
        """The argv prefix that runs a command in containerd's mount namespace."""
        return ["nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--"]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300, binary: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``ctr`` (or ``binary``, a client with ctr's global flags: ``ctr-remote``) on this containerd."""
        argv = [*self.enter(), binary or CTR, "-a", self.address, "-n", self.namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def ctr_bytes(self, *args: str, timeout: float = 300) -> bytes:
        """``ctr``'s stdout as bytes (a diff's tar)."""
        argv = [*self.enter(), CTR, "-a", self.address, "-n", self.namespace, *args]
        result = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}: {result.stderr.decode(errors='replace')}"
            )
        return result.stdout

    def shims(self) -> list[int]:
        """The PIDs of the shims this containerd started (their command line names its address)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.address.encode() in argv:
                found.append(int(entry))
        return found

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, SIGKILL after ``timeout`` seconds; reaped."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_listening(ctrd: Containerd, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ctrd.proc.poll() is not None:
            raise AssertionError(f"containerd exited {ctrd.proc.returncode}: {ctrd.log_text()}")
        if os.path.exists(ctrd.address):
            result = subprocess.run(
                [CTR, "-a", ctrd.address, "version"], capture_output=True, text=True, timeout=30, check=False
            )
            if result.returncode == 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"containerd did not answer in {timeout}s: {ctrd.log_text()}")
        time.sleep(0.1)


def launch(work: Path, snapshotter_socket: str, namespace: str, timeout: float = 60, cri: bool = False) -> Containerd:
    """Start containerd on ``work`` (made if need be) and wait until it answers; with its CRI plugin if
    ``cri`` (see :data:`CRI_SECTION`)."""
    for sub in ("root", "state", "opt", "run", "tmp"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    conf = work / "config.toml"
    conf.write_text(config(work, snapshotter_socket, cri))
    script = 'mount --bind "$1" /run && shift && exec "$@"'
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(work / "run"),
        CONTAINERD,
        "--config",
        str(conf),
    ]
    env = {**os.environ, "TMPDIR": str(work / "tmp")}
    env.pop("XDG_RUNTIME_DIR", None)
    with open(work / "containerd.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(work))
    ctrd = Containerd(work, proc, namespace)
    try:
        _wait_listening(ctrd, timeout)
    except BaseException:
        teardown(ctrd)
        raise
    return ctrd


def teardown(ctrd: Containerd) -> list[str]:
    """Stop containerd and the shims it started, and unmount what is left under its work directory (on the
    machine's side: the namespace's own mounts die with its last process). Returns what was left mounted."""
    ctrd.stop()
    kill_until_gone(ctrd.shims)
    return unmount_under(ctrd.work)


@contextmanager
def start_containerd(work: Path, snapshotter_socket: str, namespace: str) -> Iterator[Containerd]:
    ctrd = launch(work, snapshotter_socket, namespace)
    try:
        yield ctrd
    finally:
        left = teardown(ctrd)
        assert not left, f"left mounted: {left}"
