"""The tools graftfs is measured against, set up the same way by every benchmark, and what "create" and
"delete" mean for each of them when the image is already cached.

A graftfs create ends with a container root filesystem ready to use: a private writable layer over the
image's layers, mounted. For each peer, the nearest command (or two) that ends in the same state:

* containerd: ``ctr images mount --rw REF TARGET``, one process that resolves the image by name, checks its
  layers are unpacked, prepares an active overlayfs snapshot on its top layer (a lease keeps it from garbage
  collection) and mounts it at TARGET; delete is ``ctr images unmount --rm TARGET`` (unmount, remove the
  snapshot and the lease). Not ``ctr run``: that also makes a task, a shim and a runtime process.
* podman: ``podman create`` (a container and its storage layer, not mounted) and then ``podman mount``;
  delete is ``podman rm``, which unmounts and removes the layer. Two processes, both timed.
* umoci has no cache and no store: its "create" is a full ``umoci unpack`` of a local OCI layout into a
  bundle (the only way it makes a root filesystem), its delete ``rm -rf`` of the bundle.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import installed, run, unmount_under
from tests.support.registry import stop

# Every peer command a benchmark may run, for the versions it reports.
COMMANDS = ("docker-registry", "containerd", "ctr", "skopeo", "umoci", "podman")


@dataclass(frozen=True)
class Warm:
    """How one tool makes a root filesystem from an image it holds already (``create(id)``), and removes it."""

    name: str  # the tool, as results name it
    creates: str  # the commands, as the table shows them
    deletes: str
    create: Callable[[str], None]
    delete: Callable[[str], None]


@dataclass(frozen=True)
class Containerd:
    sock: str
    daemon: subprocess.Popen[bytes]

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.sock, *args]

    def vm_hwm_kib(self) -> int:
        """Its peak RSS so far, from /proc (a daemon is not ours to wait4 until it stops)."""
        with open(f"/proc/{self.daemon.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@contextmanager
def containerd(work: Path) -> Iterator[Containerd]:
    """A containerd with root, state, socket and opt dir under ``work``, stopped by PID on exit, after
    whatever is still mounted under ``work`` (a snapshot a run left mounted) is unmounted."""
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "state" / "containerd.sock"
    config = work / "containerd.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{work / "root"}"\n'
        f'state = "{work / "state"}"\n'
        # No CRI (nothing here is Kubernetes), and none of the snapshotters that can only log why they cannot start.
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
        ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.zfs"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{work / "opt"}"\n'
    )
    with open(work / "containerd.log", "wb") as log:
        # Its own session, so a Ctrl-C reaches only us and ctr: the finally below stops it, after ctr is gone.
        daemon = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        ping = ["ctr", "--address", str(sock), "version"]
        while subprocess.run(ping, capture_output=True, check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(work / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield Containerd(str(sock), daemon)
    finally:
        unmount_under(work)
        stop(daemon)


def podman(work: Path) -> list[str]:
    """``podman`` with its whole store (images, containers, run state, temporary files) under ``work``."""
    # A tmpdir of its own: podman removes what it finds there, so it must not be the scratch filesystem's root.
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    argv = ["podman", "--root", str(work / "root"), "--runroot", str(work / "runroot"), "--tmpdir", str(work / "tmp")]
    return [*argv, "--storage-driver", "overlay"]


def graftfs_warm(name: str, graftfs: str, store: Path, image: str, *flags: str) -> Warm:
    """graftfs in ``store``, which must hold ``image`` already; ``flags`` go to ``create``."""
    base = [graftfs, "--store", str(store)]
    scheme = image.split(":", 1)[0]
    return Warm(
        name,
        f"graftfs create {scheme}://…",
        f"graftfs delete ({scheme}:// image)",
        lambda i: run([*base, "create", *flags, image, i]),
        lambda i: run([*base, "delete", i]),
    )


@dataclass(frozen=True)
class CtrWarm(Warm):
    daemon: Containerd
    mounts: Path  # create(i) mounts at mounts / i, which is also its snapshot's key


@contextmanager
def ctr_warm(work: Path, ref: str) -> Iterator[CtrWarm]:
    """A containerd of our own holding ``ref`` (pulled over plain HTTP from a local registry, untimed)."""
    mounts = work / "mounts"
    mounts.mkdir(parents=True)
    with containerd(work / "containerd") as daemon:
        run(daemon.ctr("images", "pull", "--plain-http", ref))

        def create(i: str) -> None:
            # A mount point is part of what graftfs makes too; a mkdir costs microseconds.
            (mounts / i).mkdir()
            run(daemon.ctr("images", "mount", "--rw", ref, str(mounts / i)))

        def delete(i: str) -> None:
            run(daemon.ctr("images", "unmount", "--rm", str(mounts / i)))
            (mounts / i).rmdir()

        yield CtrWarm("ctr", "ctr images mount --rw", "ctr images unmount --rm", create, delete, daemon, mounts)


@contextmanager
def podman_warm(work: Path, ref: str) -> Iterator[Warm]:
    """A podman store of our own holding ``ref`` (pulled from a local registry, untimed)."""
    base = podman(work)
    run([*base, "pull", "--quiet", "--tls-verify=false", f"docker://{ref}"])

    def create(i: str) -> None:
        run([*base, "create", "--pull=never", "--name", i, ref])
        run([*base, "mount", i])

    try:
        yield Warm("podman", "podman create + podman mount", "podman rm", create, lambda i: run([*base, "rm", i]))
    finally:
        # podman has no daemon: what it mounted stays mounted until someone unmounts it.
        unmount_under(work)


def umoci_warm(layout: Path, bundles: Path) -> Warm:
    bundles.mkdir(parents=True, exist_ok=True)
    return Warm(
        "umoci",
        "umoci unpack (no cache: a full unpack)",
        "rm -rf (the bundle)",
        lambda i: run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundles / i)]),
        lambda i: run(["rm", "-rf", str(bundles / i)]),
    )


def warm_peers(
    stack: ExitStack, work: Path, ref: str, layout: Path, which: Sequence[str]
) -> tuple[list[Warm], list[str]]:
    """Those of the peers named in ``which`` (``ctr``, ``podman``, ``umoci``) that are installed, holding the
    image ``ref`` (served by a local registry; ``layout`` is the same image for umoci), kept up on ``stack``;
    and a note for each one that is not installed."""
    needs = {"ctr": ("containerd", "ctr"), "podman": ("podman",), "umoci": ("umoci",)}
    peers: list[Warm] = []
    skipped: list[str] = []
    for name in which:
        if not installed(*needs[name]):
            skipped.append(f"{name}: not installed")
        elif name == "ctr":
            peers.append(stack.enter_context(ctr_warm(work / "ctr", ref)))
        elif name == "podman":
            peers.append(stack.enter_context(podman_warm(work / "podman", ref)))
        else:
            peers.append(umoci_warm(layout, work / "bundles"))
    return peers, skipped
