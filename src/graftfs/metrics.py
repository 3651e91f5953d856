"""Metrics, with GrootFS's names and units, to Cloud Foundry's Loggregator and to Prometheus.

* **dropsonde** (``--metron-endpoint HOST:PORT``, config ``metron_endpoint``): each value is one UDP
  datagram holding a protobuf ``events.Envelope`` (origin ``grootfs``, event type ValueMetric, timestamp,
  ``{name, value, unit}``), as GrootFS's sonde-go emitter sends them to the local Loggregator agent.
* **Prometheus text file** (``--metrics-textfile PATH``, config ``metrics_textfile``), for node_exporter's
  textfile collector: one gauge per metric, ``graftfs_<name>`` in base units (seconds, bytes), holding the
  latest value any graftfs command reported. Each command merges its values into the file under a lock
  and replaces it atomically, so concurrent commands never lose each other's values.

A :class:`Metrics` is handed to the :class:`~graftfs.Store` (the CLI makes one only when a destination is
configured, so nobody else even imports this module); without one, nothing is measured and the values that
need a scan of the store are not computed. Lock waits are reported through ``FileLock.observer``, which a
Metrics sets for the process.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

NANOS = "nanos"
BYTES = "bytes"
ORIGIN = "grootfs"  # GrootFS's origin: dashboards and firehose nozzles select on it
_VALUE_METRIC = 6  # events.Envelope.EventType.ValueMetric


class Metrics:
    def __init__(self, metron_endpoint: str = "", textfile: str = "") -> None:
        self.metron_endpoint = metron_endpoint
        self.textfile = textfile
        self.values: dict[str, tuple[float, str]] = {}
        self._socket: socket.socket | None = None
        if self.enabled:
            from .store.locks import FileLock

            FileLock.observer = self._lock_waited

    def _lock_waited(self, shared: bool, seconds: float) -> None:
        # GrootFS's SharedLockingTime/ExclusiveLockingTime: the time spent acquiring, per lock.
        self.value("SharedLockingTime" if shared else "ExclusiveLockingTime", seconds * 1e9, NANOS)

    @property
    def enabled(self) -> bool:
        return bool(self.metron_endpoint or self.textfile)

    def value(self, name: str, value: float, unit: str) -> None:
        if not self.enabled:
            return
        self.values[name] = (float(value), unit)
        if self.metron_endpoint:
            self._send(envelope(name, float(value), unit, time.time_ns()))

    def size(self, name: str, size: int) -> None:
        self.value(name, size, BYTES)

    def duration(self, name: str, nanoseconds: int) -> None:
        self.value(name, nanoseconds, NANOS)

    def since(self, name: str, start_ns: int) -> None:
        """A duration metric: nanoseconds from ``start_ns`` (``time.monotonic_ns()``) to now."""
        if self.enabled:
            self.value(name, time.monotonic_ns() - start_ns, NANOS)

    def _send(self, packet: bytes) -> None:
        import socket

        host, _, port = self.metron_endpoint.rpartition(":")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.sendto(packet, (host.strip("[]") or "127.0.0.1", int(port)))
        except (OSError, ValueError):
            pass  # metrics are best effort, as dropsonde's: a missing agent never fails a create

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self.textfile and self.values:
            write_textfile(self.textfile, self.values)


# -- dropsonde ---------------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """A protobuf base-128 varint (also what the tests' CRI client encodes its requests with)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def _length_delimited(number: int, data: bytes) -> bytes:
    return _field(number, 2) + varint(len(data)) + data


def envelope(name: str, value: float, unit: str, timestamp_ns: int, origin: str = ORIGIN) -> bytes:
    """``events.Envelope`` (sonde-go's envelope.proto): origin=1, eventType=2, timestamp=6, valueMetric=9;
    ``ValueMetric``: name=1, value=2 (double), unit=3."""
    import struct  # not at the top: every command imports this module, few send metrics

    metric = (
        _length_delimited(1, name.encode())
        + _field(2, 1)
        + struct.pack("<d", value)
        + _length_delimited(3, unit.encode())
    )
    return (
        _length_delimited(1, origin.encode())
        + _field(2, 0)
        + varint(_VALUE_METRIC)
        + _field(6, 0)
        + varint(timestamp_ns)
        + _length_delimited(9, metric)
    )


# -- Prometheus --------------------------------------------------------------------------------------------------


def prometheus_name(name: str, unit: str) -> tuple[str, float]:
    """``ImageCreationTime``/nanos -> (``graftfs_image_creation_time_seconds``, 1e-9)."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    if unit == NANOS:
        return f"graftfs_{snake}_seconds", 1e-9
    if unit == BYTES and not snake.endswith("_in_bytes"):
        return f"graftfs_{snake}_bytes", 1.0
    return f"graftfs_{snake.replace('_in_bytes', '_bytes')}", 1.0


def write_textfile(path: str, values: dict[str, tuple[float, str]]) -> None:
    from .store.fsutil import atomic_write
    from .store.locks import FileLock

    gauges: dict[str, float] = {}
    directory = os.path.dirname(os.path.abspath(path))
    lock = FileLock(directory, "." + os.path.basename(path))
    with lock.held(timeout=5.0):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("graftfs_"):
                        key, _, number = line.strip().rpartition(" ")
                        try:
                            gauges[key] = float(number)
                        except ValueError:
                            pass
        except FileNotFoundError:
            pass
        for name, (value, unit) in values.items():
            metric, scale = prometheus_name(name, unit)
            gauges[metric] = value * scale
        lines = []
        for metric in sorted(gauges):
            lines.append(f"# HELP {metric} Latest value reported by a graftfs command.")
            lines.append(f"# TYPE {metric} gauge")
            lines.append(f"{metric} {gauges[metric]!r}")
        # Rewritten on every command and read by a scraper: atomic matters, durable does not.
        atomic_write(path, ("\n".join(lines) + "\n").encode(), 0o644, sync=False)
