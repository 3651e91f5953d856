"""A second kernel for what this machine's kernel lacks (XFS quotas): user-mode Linux, or else a QEMU guest.

Hosts of this kind run kernels without XFS quota support, so the XFS project-quota tests run under a kernel
that has it, with this machine's own root filesystem, so the venv, graftfs and the test's files are all at
the same paths inside:

* ``uml``: Debian's ``user-mode-linux`` (``linux.uml``), an ordinary process, with the host's ``/`` as its
  root (``hostfs``, read-write). Boots in about a second, but not everywhere (on AMX hosts it panics at
  init with ``ptrace set fp regs failed``);
* ``qemu``: ``qemu-system-x86_64`` (TCG: on nested hosts /dev/kvm may exist and still hang) booting
  Debian's own ``linux-image-6.1.0-*-amd64``, fetched once with ``apt-get download`` into
  :data:`CACHE` and extracted there. A small initramfs (busybox plus the virtio, 9p, loop, overlay and
  xfs modules) mounts the host's ``/`` read-only over virtio-9p and switches root into it; the run's own
  directory is shared read-write on top, at the same path, for the output.

Either way the script runs as root under ``sh`` with ``$SCRATCH`` a fresh tmpfs (for stores and their loop
devices: the 9p root is read-only) and ``TMPDIR`` inside it. :func:`run_in_vm` returns what it printed,
ending with ``exit=<status>``. :func:`vm_kind` probes once per test run: UML first (booted with a trivial
script), QEMU when UML cannot boot or when ``GRAFTFS_TEST_NO_UML=1`` (to exercise the QEMU path on a host
where UML works); when neither starts, :func:`unavailable_reason` says why, for the skip message.

Run ``python -m tests.support.vm`` to probe and print the result (and prepare the kernel cache).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UML = "linux.uml"
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"  # busybox-static: the initramfs has no libc
# Kept outside the repository and across runs: the kernel package is ~70 MB, extracted ~400 MB.
CACHE = Path(os.environ.get("GRAFTFS_TEST_VM_CACHE", "/var/cache/graftfs-test-vm"))
KERNEL_PACKAGE = re.compile(r"^linux-image-(6\.1\.0-\d+-amd64)$")
# What the guest needs beyond the kernel image: the 9p root, loop devices for the stores, overlay, XFS.
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "loop", "overlay", "xfs")
QEMU_ARGS = ("-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2G", "-no-reboot")
STARTED = "graftfs-vm-started"

# The init (second stage) both kinds run: mounts, then the caller's script with its output in {out}.
_STAGE2 = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{mounts}
mount -t tmpfs -o mode=0755 scratch {scratch}
mkdir {scratch}/tmp
export SCRATCH={scratch} TMPDIR={scratch}/tmp
echo {started} > {out}
(
{script}
) >> {out} 2>&1
echo "exit=$?" >> {out}
{finish}
"""
_UML_MOUNTS = """mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(find /usr/lib/uml/modules/$(uname -r)/kernel -name loop.ko -o -name overlay.ko); do insmod $m; done"""
# The host's /dev, /run and /sys would be the host's, not the guest's: its own go on top (the read-only
# root still has the directories to mount on). The run directory comes back read-write as "run".
_QEMU_MOUNTS = """mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o mode=0755 run /run
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none run {work}"""
# The share is uncached (cache=none): what the guest wrote is on the host once written, so no unmount
# (which the scratch tmpfs inside it would refuse anyway) before powering off.
_QEMU_FINISH = f"""sync
exec {BUSYBOX} poweroff -f"""

# The initramfs's /init: load the modules, mount the host's root over 9p, switch into it and run the
# second stage named on the kernel command line (graftfs_init=..., which the kernel puts in the environment).
_INITRAMFS_INIT = """#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
for m in $(cat /modules/order); do insmod /modules/$m || echo "graftfs-vm: insmod $m failed"; done
if mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=262144,ro root /newroot; then
  umount /proc
  exec switch_root /newroot /bin/sh "$graftfs_init"
fi
echo "graftfs-vm: mounting the host's root over 9p failed"
poweroff -f
"""


class Unavailable(RuntimeError):
    """No VM can start here; the message says why (for the skip)."""


def run_in_vm(script: str, timeout: float = 600) -> str:
    """Run ``script`` (sh) as root in the probed VM; returns its output, ending with ``exit=<status>``.
    Raises :class:`Unavailable` when there is no VM, or when the QEMU guest never got to run the script
    (then :func:`vm_kind` says ``None`` from here on)."""
    global _failed
    kind = vm_kind()
    if kind is None:
        raise Unavailable(unavailable_reason())
    out, console = _boot(kind, script, timeout)
    if not out.startswith(STARTED + "\n"):
        tried = [*_probe()[1], f"{kind}: the guest never ran its script (console: {_tail(console)})"]
        _failed = _NEITHER + "; ".join(tried)
        raise Unavailable(unavailable_reason())
    return out.removeprefix(STARTED + "\n")


def vm_kind() -> str | None:
    """``"uml"`` or ``"qemu"``: what :func:`run_in_vm` uses; ``None`` when neither can start."""
    return None if _failed else _probe()[0]


def unavailable_reason() -> str:
    """Why neither UML nor QEMU can start (empty when one can): the skip message."""
    kind, tried = _probe()
    return _failed or ("" if kind else _NEITHER + "; ".join(tried))


_NEITHER = "neither user-mode Linux nor QEMU can start here: "
_failed = ""  # set when a QEMU guest that the probe let through did not start after all


@functools.cache
def _probe() -> tuple[str | None, list[str]]:
    """Once per test run (per process). UML: boot it with a trivial script and see it print (a second).
    QEMU: what it needs is there (the kernel fetched and an initramfs made, on first use); its boot takes
    half a minute under TCG, so the first real run is what shows that it starts (see :func:`run_in_vm`)."""
    reasons: list[str] = []  # why each kind tried before cannot
    for kind in ("uml", "qemu"):
        started = time.monotonic()
        reason = _cannot_start(kind)
        if not reason:
            print(f"graftfs VM probe: {kind} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
            return kind, reasons
        reasons.append(f"{kind}: {reason}")
    return None, reasons


def _cannot_start(kind: str) -> str:
    if kind == "qemu":
        if not shutil.which(QEMU):
            return f"needs {QEMU} (qemu-system-x86)"
        try:
            _qemu_boot_files()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            return f"preparing the guest kernel in {CACHE}: {exc}"
        return ""
    if os.environ.get("GRAFTFS_TEST_NO_UML", "") not in ("", "0"):
        return "not tried (GRAFTFS_TEST_NO_UML is set)"
    if not (shutil.which(UML) and shutil.which("insmod")):
        return f"needs {UML} (user-mode-linux) and insmod (kmod)"
    try:
        out, console = _boot(kind, "echo hello", timeout=60)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return str(exc)
    if out == f"{STARTED}\nhello\nexit=0\n":
        return ""
    return f"a trivial script did not run (console: {_tail(console)})"


def _boot(kind: str, script: str, timeout: float) -> tuple[str, str]:
    """Boot, run ``script``, power off: (what the script printed, the console's output)."""
    # Under /tmp, not TMPDIR: the QEMU guest sees the host's / and must find this directory there.
    work = Path(tempfile.mkdtemp(prefix=f"graftfs-{kind}-", dir="/tmp"))
    try:
        out, init, scratch = work / "out", work / "init", work / "scratch"
        scratch.mkdir()
        if kind == "uml":
            mounts, finish = _UML_MOUNTS, f"exec {BUSYBOX} halt -f"
        else:
            mounts, finish = _QEMU_MOUNTS.format(work=work), _QEMU_FINISH.format(work=work)
        init.write_text(
            _STAGE2.format(mounts=mounts, scratch=scratch, started=STARTED, out=out, script=script, finish=finish)
        )
        init.chmod(0o755)
        if kind == "uml":
            boot = ["mem=1G", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}"]
            argv = [UML, *boot, "con=null", "con0=fd:0,fd:1"]
        else:
            kernel, initrd = _qemu_boot_files()
            argv = [
                QEMU,
                *QEMU_ARGS,
                *("-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"),
                *("-kernel", str(kernel), "-initrd", str(initrd)),
                "-append",
                f"console=ttyS0 panic=-1 quiet graftfs_init={init}",
                "-virtfs",
                "local,path=/,mount_tag=root,security_model=passthrough,readonly=on,multidevs=remap",
                "-virtfs",
                f"local,path={work},mount_tag=run,security_model=passthrough,multidevs=remap",
            ]
        # UML keeps its memory in a file under TMPDIR: in our directory, removed with the rest.
        console = _run(argv, timeout, env={**os.environ, "TMPDIR": str(work)})
        return (out.read_text(errors="replace") if out.exists() else ""), console
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], timeout: float, env: dict[str, str]) -> str:
    """Run to the end; on timeout, kill its whole process group (UML forks a process per guest process)."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        console, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        console, _ = proc.communicate()
        raise RuntimeError(
            f"{argv[0]} did not finish within {timeout:.0f}s: {_tail(console.decode(errors='replace'))}"
        ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return console.decode(errors="replace")


def _tail(console: str) -> str:
    """The console's last lines, on one line: what a kernel says last is usually why it stopped."""
    lines = [line.strip() for line in console.splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no console output"


# -- the QEMU guest's kernel and initramfs ---------------------------------------------------------------


def _qemu_boot_files() -> tuple[Path, Path]:
    """The kernel image and an initramfs for it, prepared in :data:`CACHE` on first use (under a lock:
    parallel test runs share the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = _kernel_tree()
        version = next(root.joinpath("lib/modules").iterdir()).name
        modules = _module_files(root, version)
        digest = hashlib.sha256(_INITRAMFS_INIT.encode())
        for module in modules:
            digest.update(module.name.encode())
        initrd = CACHE / f"initrd-{version}-{digest.hexdigest()[:12]}.cpio"
        if not initrd.exists():
            tmp = initrd.with_suffix(".tmp")
            tmp.write_bytes(_initramfs(modules))
            tmp.rename(initrd)
        return root / f"boot/vmlinuz-{version}", initrd


def _kernel_tree() -> Path:
    """The extracted kernel package: the newest already in the cache, else the newest apt-cache lists."""
    cached = sorted(
        (p for p in CACHE.glob("linux-image-*") if p.is_dir() and (p / ".complete").exists()),
        key=lambda p: _abi(p.name),
    )
    if cached:
        return cached[-1]
    listed = subprocess.run(
        ["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)": the name's ABI number is its age.
    versions = {m.group(1): m.string for line in listed.splitlines() if (m := KERNEL_PACKAGE.match(line.split(" ")[0]))}
    if not versions:
        raise RuntimeError("apt-cache lists no linux-image-6.1.0-*-amd64 (apt-get update?)")
    version = max(versions, key=_abi)
    package = versions[version]
    download = Path(tempfile.mkdtemp(prefix=".download-", dir=CACHE))
    try:
        got = subprocess.run(["apt-get", "download", "-q", package], cwd=download, capture_output=True, text=True)
        debs = list(download.glob("*.deb"))
        if got.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {package} failed: {' '.join(got.stderr.split())}")
        tree = download / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], check=True)
        # The package ships no modules.dep (its postinst makes it): needed for the load order.
        subprocess.run(["depmod", "-b", str(tree), version], check=True)
        (tree / ".complete").touch()
        final = CACHE / package
        tree.rename(final)
        return final
    finally:
        shutil.rmtree(download, ignore_errors=True)


def _abi(name: str) -> int:
    found = re.search(r"6\.1\.0-(\d+)-amd64", name)
    return int(found.group(1)) if found else -1


def _module_files(root: Path, version: str) -> list[Path]:
    """:data:`MODULES` and what they need, in load order (``modprobe --show-depends``), each once."""
    order: list[Path] = []
    for module in MODULES:
        shown = subprocess.run(
            ["modprobe", "-d", str(root), "-S", version, "--show-depends", module],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in shown.splitlines():
            fields = line.split()
            if fields[:1] == ["insmod"] and Path(fields[1]) not in order:
                order.append(Path(fields[1]))
    return order


def _initramfs(modules: list[Path]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as its first root): busybox, its applet links, the
    modules with their load order, and /init."""
    archive = _Cpio()
    for name in ("bin", "dev", "proc", "newroot", "modules"):
        archive.add(name, stat.S_IFDIR | 0o755)
    # The kernel opens /dev/console for init's output before anything could mount devtmpfs.
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes())
    for applet in ("sh", "mount", "umount", "insmod", "cat", "switch_root", "poweroff"):
        archive.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
    for module in modules:
        archive.add(f"modules/{module.name}", stat.S_IFREG | 0o644, module.read_bytes())
    archive.add("modules/order", stat.S_IFREG | 0o644, "".join(f"{m.name}\n" for m in modules).encode())
    archive.add("init", stat.S_IFREG | 0o755, _INITRAMFS_INIT.encode())
    return archive.finish()


class _Cpio:
    """The "newc" format: a 110-byte ASCII header, the name, the data, each padded to 4 bytes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.inode = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.inode += 1
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        self.parts += [header, b"\0" * (-len(header) % 4), data, b"\0" * (-len(data) % 4)]

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.parts)


if __name__ == "__main__":
    kind = vm_kind()
    print(kind or unavailable_reason())
    if kind is not None:
        print("uname -r in it:", run_in_vm("uname -r").strip())
    sys.exit(0 if kind else 1)
