"""A real S3 server for tests: Debian's Ceph RADOS Gateway on 127.0.0.1.

:func:`start_rgw` brings up the smallest Ceph cluster that can serve S3: one ``ceph-mon``, one ``ceph-osd``
on the memstore objectstore (objects live in the OSD's memory, capped by ``memstore device bytes``, so nothing
touches a disk but a few small files) and ``radosgw`` with its beast frontend, all with cephx off
(``auth ... required = none``) and their own ``ceph.conf``, fsid, ports, sockets and logs in one private temp
dir, so nothing in ``/etc/ceph`` or ``/var/lib/ceph`` is read or written and several can run side by side.
It creates an S3 user with ``radosgw-admin`` and yields an :class:`RGW` (which unpacks as
``endpoint, access_key, secret_key``). On exit every daemon is killed by PID and reaped (PID 1 on the test
machines does not reap orphans), the temp dir is removed, and no process still naming its ``ceph.conf`` may be
left.

If the cluster does not come up, :class:`RGWError` says why, with the tail of the daemons' logs: the packages
are installable on every machine the suite runs on (``scripts/test`` installs them), so tests fail rather
than skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: The Debian packages that provide the daemons and tools below (``ceph`` and ``radosgw-admin`` come with
#: ceph-common, a dependency of all three). scripts/test installs them.
PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")

#: How long the whole cluster may take to answer S3 requests (it takes ~5-10 s here).
START_TIMEOUT = 90.0


class RGWError(RuntimeError):
    """The gateway could not be started (or stopped cleanly); the message says why."""


@dataclass
class RGW:
    endpoint: str  # http://127.0.0.1:<port>
    access_key: str
    secret_key: str = field(repr=False)
    workdir: Path
    pids: dict[str, int]  # daemon name -> PID
    started_in: float  # seconds from nothing to an S3 user that can sign requests

    def __iter__(self) -> Iterator[str]:
        """``endpoint, access_key, secret_key = rgw``."""
        return iter((self.endpoint, self.access_key, self.secret_key))

    def rss_bytes(self) -> int:
        """The daemons' resident memory now, summed (from /proc)."""
        total = 0
        for pid in self.pids.values():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except FileNotFoundError:
                pass
        return total


def free_port() -> int:
    """A port nothing listens on now. Another process could take it before the daemon binds; the daemon then
    fails to start and the error says so, which is rare enough on one machine to accept."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _conf(work: Path, fsid: str, mon_port: int, rgw_port: int, memstore_bytes: int) -> str:
    return f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
# No cephx anywhere: the cluster lives for one test session on loopback, and keyrings would only cost time.
auth cluster required = none
auth service required = none
auth client required = none
# With auth none the msgr2 "secure" mode has no session key to encrypt with: every peer must agree on crc.
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
# Everything a daemon writes stays in the private dir: nothing under /var/run/ceph or /var/lib/ceph.
run dir = {work}/run
admin socket = {work}/run/$name.asok
pid file = {work}/run/$name.pid
log file = {work}/log/$name.log
crash dir = {work}/crash
keyring = {work}/keyring
log to stderr = false
err to stderr = true
# One OSD: pools of size 1, few PGs (no manager runs, so no autoscaler), no warnings about either.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# The monitor batches map changes for a second by default; radosgw creates its pools one command at a time
# on first start, so that second per command is most of the start-up time.
paxos propose interval = 0.01
paxos min wait = 0.01
[mon.a]
mon data = {work}/mon.a
[osd.0]
osd data = {work}/osd.0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
[client.rgw]
rgw data = {work}/rgw
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw enable usage log = false
rgw enable ops log = false
"""


class _Cluster:
    """The processes of one cluster, so that whatever was started is stopped, whatever goes wrong."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.conf = work / "ceph.conf"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # A clean environment for the tools: a CEPH_ARGS or CEPH_CONF from the caller must not point them at
        # another cluster.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}

    def run(self, *argv: str, timeout: float = 60, hide: str = "") -> str:
        """Run a tool to completion (subprocess.run waits for it, so it is reaped, even on timeout). ``hide`` is
        left out of error messages."""
        command = " ".join(argv).replace(hide, "<redacted>") if hide else " ".join(argv)
        try:
            done = subprocess.run(
                [*argv[:1], "-c", str(self.conf), *argv[1:]],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise RGWError(f"{command} did not finish in {timeout} s{self.logs()}") from e
        if done.returncode != 0:
            raise RGWError(f"{command} exited {done.returncode}: {done.stderr.strip()[-2000:]}{self.logs()}")
        return done.stdout

    def spawn(self, name: str, *argv: str) -> None:
        """Start a daemon in the foreground (``-f``: no fork, so its PID is ours to kill and reap)."""
        with open(self.work / "log" / f"{name}.stderr", "wb") as out:
            self.procs[name] = subprocess.Popen(
                [*argv[:1], "-c", str(self.conf), "-f", *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Its own process group: a ^C at the terminal reaches pytest, which then stops it in order.
                start_new_session=True,
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RGWError(f"{name} exited {proc.returncode} during start-up{self.logs()}")

    def logs(self) -> str:
        """The last lines of every daemon's log, for an error message."""
        parts = []
        for path in sorted((self.work / "log").glob("*")):
            try:
                lines = path.read_text(errors="replace").splitlines()[-15:]
            except OSError:
                continue
            if lines:
                parts.append(f"\n--- {path.name} ---\n" + "\n".join(lines))
        return "".join(parts)

    def stop(self) -> None:
        """Kill every daemon and reap it. SIGKILL, not SIGTERM: the data is thrown away anyway, and an OSD
        told to stop politely waits for the monitor to acknowledge, which may already be gone."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        stuck = []
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stuck.append(f"{name} (pid {proc.pid})")
        if stuck:
            raise RGWError(f"could not reap {', '.join(stuck)}")
        left = processes_using(self.conf)
        if left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise RGWError(f"processes still running with {self.conf} after stop: {left}")


def processes_using(conf: Path) -> list[int]:
    """PIDs of live (not zombie) processes whose command line names ``conf``."""
    needle = os.fsencode(conf)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline.split(b"\0") and state != b"Z":
            found.append(int(entry))
    return found


def _wait_http(cluster: _Cluster, url: str, deadline: float) -> None:
    """Until radosgw answers HTTP at all (an anonymous GET / lists no buckets with 200)."""
    while True:
        cluster.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
                return
        except urllib.error.HTTPError:
            return  # any S3 answer means the frontend and its pools are up
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RGWError(f"radosgw did not answer on {url} within {START_TIMEOUT:.0f} s{cluster.logs()}")
        time.sleep(0.1)


def _boot(cluster: _Cluster, memstore_bytes: int, access_key: str, secret_key: str, t0: float) -> RGW:
    work = cluster.work
    for sub in ("run", "log", "crash", "mon.a", "osd.0", "rgw"):
        (work / sub).mkdir()
    (work / "keyring").touch()  # auth none needs no keys, but the tools look for the file
    fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    mon_port, rgw_port = free_port(), free_port()
    while rgw_port == mon_port:
        rgw_port = free_port()
    cluster.conf.write_text(_conf(work, fsid, mon_port, rgw_port, memstore_bytes))

    monmap = str(work / "monmap")
    subprocess.run(
        ["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", monmap],
        check=True,
        capture_output=True,
        timeout=30,
    )
    cluster.run("ceph-mon", "-i", "a", "--mkfs", "--monmap", monmap)
    cluster.spawn("mon.a", "ceph-mon", "-i", "a")
    _wait_port(cluster, mon_port, t0 + START_TIMEOUT)
    # The OSD must be in the map before it can make its store.
    cluster.run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid, "0")
    cluster.run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
    cluster.spawn("osd.0", "ceph-osd", "-i", "0")
    # radosgw creates its pools and then waits on its first writes until the OSD is up and its PGs are
    # active: its HTTP answer is the one readiness check needed.
    cluster.spawn("client.rgw", "radosgw", "-n", "client.rgw")
    endpoint = f"http://127.0.0.1:{rgw_port}"
    _wait_http(cluster, endpoint + "/", t0 + START_TIMEOUT)
    # radosgw-admin talks to RADOS directly, not to the gateway: the user is there for the next request.
    cluster.run(
        "radosgw-admin",
        "user",
        "create",
        "--uid",
        "test",
        "--display-name",
        "test",
        "--access-key",
        access_key,
        "--secret-key",
        secret_key,
        hide=secret_key,
    )
    return RGW(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        workdir=work,
        pids={name: proc.pid for name, proc in cluster.procs.items()},
        started_in=time.monotonic() - t0,
    )


def _wait_port(cluster: _Cluster, port: int, deadline: float) -> None:
    """Until something listens on ``port`` (the daemon just started, unless it already died)."""
    while True:
        cluster.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RGWError(f"nothing listens on 127.0.0.1:{port} after {START_TIMEOUT:.0f} s{cluster.logs()}")
        time.sleep(0.05)


def _discard(cluster: _Cluster) -> None:
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.work, ignore_errors=True)


#: Times the whole start is tried when a daemon finds its port taken: free_port() cannot reserve a port, and
#: another test on the machine may take it before the daemon binds.
PORT_TRIES = 3


@contextmanager
def start_rgw(memstore_bytes: int = 1 << 30, access_key: str = "", secret_key: str = "") -> Iterator[RGW]:
    """Start a private Ceph cluster with radosgw on 127.0.0.1; yield it; stop and remove everything."""
    missing = missing_tools()
    if missing:
        raise RGWError(
            f"{', '.join(missing)} not installed: apt-get install {' '.join(PACKAGES)} (scripts/test does this)"
        )
    access_key = access_key or "GRAFTFS" + secrets.token_hex(6).upper()
    secret_key = secret_key or secrets.token_urlsafe(30)
    for attempt in range(1, PORT_TRIES + 1):
        t0 = time.monotonic()
        # Short paths under /tmp: the daemons' admin sockets are AF_UNIX, whose paths must fit in 107 bytes.
        cluster = _Cluster(Path(tempfile.mkdtemp(prefix="graftfs-rgw-")))
        try:
            rgw = _boot(cluster, memstore_bytes, access_key, secret_key, t0)
        except BaseException as e:
            _discard(cluster)
            if isinstance(e, RGWError) and "Address already in use" in str(e) and attempt < PORT_TRIES:
                continue
            raise
        break
    try:
        yield rgw
    finally:
        _discard(cluster)
