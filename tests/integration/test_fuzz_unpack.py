"""Hostile layers through the real ``graftfs create`` (issue 10, item 6): one line, exit 0 or 1, in bounded time.

A property-based fuzz test generates layer tars header by header (any typeflag, lying sizes, huge, negative
and garbage numbers, PAX records of every kind the reader knows and some it does not, GNU long names, the
three GNU sparse formats, truncation and flipped bytes) and creates an image from each, as Garden runs the
command: a subprocess, from a rootfs tarball or an OCI layout, into a real store (``--without-mount``: the
mount is not what is under test). After each create: exit 0 with one JSON document, or exit 1 with one line
on stdout; never a traceback; within :data:`LIMIT`; a failed create leaves the store as it was (lock files
aside, which are kept on purpose); and nothing outside the stores changed.

``GRAFTFS_FUZZ_EXAMPLES`` sets how many layers (default 1,000, about two minutes on two cores); creates run
:data:`PARALLEL` at a time, each slot with its own store, so every layer is unpacked by a cold create of its
own. Every generated layer starts with a global PAX header holding a serial number, which readers ignore but
which makes its digest new, so no create finds an earlier layer's volume.

The crash causes and blow-ups the first fuzzing found are regression tests below, through the same command.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import GRAFTFS, Graftfs, mounts_under
from tests.support.hostile import (
    END,
    blowup_cases,
    crash_cases,
    gnu_sparse,
    header,
    member,
    padded,
    pax,
    pax_records,
    replace_one_name_layer,
    sparse_hole_layer,
)
from tests.support.images import TarBuilder, write_oci_layout, write_rootfs_tar

EXAMPLES = int(os.environ.get("GRAFTFS_FUZZ_EXAMPLES", "1000"))
PARALLEL = 8
#: Seconds any one create may take. Generated layers are at most a few KiB, whatever their headers claim.
LIMIT = 30.0

_serial = itertools.count()
_serial_lock = threading.Lock()


# -- generated layers ------------------------------------------------------------------------------------------

NAMES = [
    b"f", b"d", b"d/f", b"./d/", b"d/e/f", b".", b"./", b"", b"..", b"../x", b"../../../../../outside/secret",
    b"../../../../outside/new", b"/abs", b"/etc/passwd", b"l", b"l/x", b"d/l/x", b".wh.f", b"d/.wh.f",
    b".wh..wh..opq", b"d/.wh..wh..opq", b".wh.", b".wh...", b"a\xffb", "é/ü".encode(), b"x" * 99, b"dev/null",
    b"d/../f", b"GNUSparseFile.0/s",
]  # fmt: skip
TYPEFLAGS = [
    b"0",
    b"0",
    b"\0",
    b"1",
    b"2",
    b"3",
    b"4",
    b"5",
    b"5",
    b"6",
    b"7",
    b"S",
    b"x",
    b"g",
    b"L",
    b"K",
    b"V",
    b"Z",
]
EDGE_NUMBERS = [
    0, 1, 0o7777, 1000, 65534, 2**12 - 1, 2**12, 2**20 - 1, 2**20, 2**21, 2**32 - 2, 2**32 - 1, 2**32, 2**33, 2**40,
    2**60, 2**63 - 1, -1, -(2**63),
]  # fmt: skip
NUMERIC_TEXT = [
    b"inf", b"-inf", b"nan", b"1e300", b"1.5", b"-1.5", b"0.000000001", b"9" * 400, b"", b"abc", b"1.", b".5",
    b"0x10", b" 1", b"1_0", b"\xd9\xa1", b"-", b"00000000000000000000001", b"18446744073709551616",
]  # fmt: skip


def names() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(NAMES),
        st.binary(max_size=8),
        st.integers(1, 2100).map(lambda n: b"a/" * n + b"f"),
        st.integers(250, 300).map(lambda n: b"x" * n),
    )


def numbers() -> st.SearchStrategy[bytes | int]:
    return st.one_of(
        st.integers(0, 0o7777),
        st.sampled_from(EDGE_NUMBERS),
        st.integers(-(2**70), 2**70),
        st.binary(min_size=1, max_size=8),  # raw field bytes: garbage, spaces, NULs, base-256 marks
    )


def number_text() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
        st.sampled_from(EDGE_NUMBERS).map(lambda i: str(i).encode()),
        st.sampled_from(NUMERIC_TEXT),
    )


def sparse_text() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(st.integers(-3, 2**40), max_size=6).map(lambda xs: b",".join(str(x).encode() for x in xs)),
        st.lists(st.integers(0, 4096), max_size=6).map(lambda xs: b",".join(str(x).encode() for x in xs)),
        number_text(),
    )


XATTR_KEYS = [
    b"SCHILY.xattr.user.a", b"SCHILY.xattr.security.capability", b"SCHILY.xattr.trusted.overlay.opaque",
    b"SCHILY.xattr.", b"SCHILY.xattr.user.\0", b"SCHILY.xattr.bogus", b"SCHILY.xattr.user." + b"k" * 300,
]  # fmt: skip
SPARSE_KEYS = [
    b"GNU.sparse.map", b"GNU.sparse.size", b"GNU.sparse.realsize", b"GNU.sparse.name", b"GNU.sparse.major",
    b"GNU.sparse.minor", b"GNU.sparse.offset", b"GNU.sparse.numbytes", b"GNU.sparse.numblocks",
]  # fmt: skip


def records() -> st.SearchStrategy[tuple[bytes, bytes]]:
    return st.one_of(
        st.tuples(st.sampled_from([b"path", b"linkpath"]), names()),
        st.tuples(st.sampled_from([b"size", b"uid", b"gid", b"mtime"]), number_text()),
        st.tuples(st.sampled_from(XATTR_KEYS), st.binary(max_size=40)),
        st.tuples(st.sampled_from(SPARSE_KEYS), sparse_text()),
        st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=10)),
    )


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(TYPEFLAGS))
    name = draw(names())
    link = draw(names())
    data = draw(st.binary(max_size=700))
    size = draw(st.one_of(st.just(len(data)), st.just(len(data)), numbers()))
    fields: dict[str, object] = {
        "mode": draw(numbers()),
        "uid": draw(st.one_of(st.just(0), numbers())),
        "gid": draw(st.one_of(st.just(0), numbers())),
        "mtime": draw(st.one_of(st.just(1_577_836_800), numbers())),
        "devmajor": draw(numbers()),
        "devminor": draw(numbers()),
        "magic": draw(st.sampled_from([b"ustar\x0000", b"ustar  \x00", b"", b"junkjunk"])),
        "prefix": draw(st.sampled_from([b"", b"p", b"p/q", b"\xff"])),
        "checksum": None if draw(st.integers(0, 19)) else draw(st.integers(0, 8**6 - 1)),
    }
    pax_list = draw(st.lists(records(), max_size=5))
    out = b""
    spell = draw(st.sampled_from(["short", "pax", "gnu"]))
    if spell == "pax" or (spell == "short" and (len(name) > 100 or len(link) > 100)):
        pax_list[:0] = [(b"path", name), (b"linkpath", link)]
    elif spell == "gnu":
        out += member(b"././@LongLink", name + b"\0", typeflag=b"L")
        out += member(b"././@LongLink", link + b"\0", typeflag=b"K")
    if draw(st.integers(0, 5)) == 0:
        # A PAX 1.0 sparse member: the map is at the start of the data.
        pairs = draw(st.lists(st.integers(-2, 2**34), max_size=6))
        data = padded(f"{len(pairs) // 2}\n".encode() + b"".join(f"{p}\n".encode() for p in pairs)) + data
        size = len(data)
        pax_list += [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")]
        pax_list += [(b"GNU.sparse.realsize", draw(number_text()))]
    if pax_list:
        if draw(st.integers(0, 9)):
            out += pax(pax_list, typeflag=draw(st.sampled_from([b"x", b"x", b"x", b"g"])))
        else:  # a lying or raw PAX header
            raw = draw(st.one_of(st.just(pax_records(pax_list)), st.binary(max_size=64)))
            claimed = draw(st.one_of(st.just(len(raw)), numbers()))
            out += header(b"PaxHeaders/f", typeflag=b"x", size=claimed) + padded(raw)
    if kind == b"S":
        regions = draw(st.lists(st.tuples(numbers(), numbers()), max_size=4))
        out += gnu_sparse(name[:100], draw(numbers()), regions, data)
    else:
        out += header(name[:100], typeflag=kind, size=size, linkname=link[:100], **fields) + padded(data)  # type: ignore[arg-type]
    return out


@st.composite
def layers(draw: st.DrawFn) -> bytes:
    body = b"".join(draw(st.lists(entries(), max_size=6)))
    layer = body + draw(st.sampled_from([END, END, END[:512], b"", END + b"trailing bytes"]))
    mutation = draw(st.sampled_from(["none", "none", "none", "none", "truncate", "flip"]))
    if mutation == "truncate":
        layer = layer[: draw(st.integers(0, len(layer)))]
    elif mutation == "flip" and layer:
        i = draw(st.integers(0, len(layer) - 1))
        layer = layer[:i] + bytes([layer[i] ^ draw(st.integers(1, 255))]) + layer[i + 1 :]
    return layer


class Generated:
    """One generated layer and how it is handed over (not a dataclass: Hypothesis would print its bytes)."""

    def __init__(self, layer: bytes, compression: str, source: str) -> None:
        self.layer = layer
        self.compression = compression
        self.source = source  # "tarball" or "oci"

    def __repr__(self) -> str:
        # Short: the failing layer itself is saved next to the stores (see create()).
        return f"Generated(<{len(self.layer)} bytes>, {self.compression!r}, {self.source!r})"


@st.composite
def generated(draw: st.DrawFn) -> Generated:
    # Not st.builds: Hypothesis would print the call with the layer's bytes, not Generated's short repr.
    return Generated(
        draw(layers()), draw(st.sampled_from(["none", "gzip", "zstd"])), draw(st.sampled_from(["tarball", "oci"]))
    )


# -- checks ----------------------------------------------------------------------------------------------------


def store_state(store: Path) -> dict[str, tuple[int, int]]:
    """Every path in the store with its type and size; lock files (kept by design) left out."""
    out: dict[str, tuple[int, int]] = {}
    for root, dirs, files in os.walk(store):
        rel = os.path.relpath(root, store)
        if rel == "locks":
            dirs[:] = []
            continue
        for name in dirs + files:
            st_ = os.lstat(os.path.join(root, name))
            # A directory's size is what its entries once took (ext4 never shrinks it): not a change.
            out[os.path.join(rel, name)] = (st_.st_mode >> 12, 0 if stat.S_ISDIR(st_.st_mode) else st_.st_size)
    return out


def world_state(workdir: Path) -> dict[str, object]:
    """What a layer must never reach: the sentinel next to the stores, and a few host files."""
    outside = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((workdir / "outside").iterdir())}
    # Link counts only: other tests on the machine add and remove users, changing these files' contents.
    host = {p: os.lstat(p).st_nlink for p in ("/etc/passwd", "/etc/shadow")}
    top = sorted(p for p in os.listdir(workdir) if p != "layers")
    return {"outside": outside, "top": top, "host": host}


def serial() -> int:
    with _serial_lock:
        return next(_serial)


def create(store: Path, inputs: Path, layer: bytes, compression: str, source: str, image_id: str) -> tuple[int, str]:
    """Create an image from ``layer`` and check the command's contract. Returns (exit status, stdout)."""
    where = inputs / image_id
    if source == "oci":
        url = write_oci_layout(where, [layer], compression=compression).url()
    else:
        url = str(write_rootfs_tar(where / "rootfs.tar", layer, compression))
    saved = inputs.parent / "layers" / f"{image_id}.tar"
    saved.parent.mkdir(exist_ok=True)
    saved.write_bytes(layer)  # to reproduce a failure; removed once the create passed every check
    before = store_state(store)
    argv = [*GRAFTFS, "--store", str(store), "--log-level", "fatal", "create", "--without-mount", url, image_id]
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=LIMIT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"create took more than {LIMIT} s (layer: {saved}, {compression}, {source})") from None
    seconds = time.monotonic() - start
    shutil.rmtree(where)
    stdout = result.stdout.decode("utf-8", "backslashreplace")
    context = (
        f"exit {result.returncode} after {seconds:.1f} s (layer: {saved}, {compression}, {source})\n"
        f"stdout: {stdout!r}\nstderr: {result.stderr[-3000:]!r}"
    )
    assert b"Traceback" not in result.stderr, context
    assert result.returncode in (0, 1), context
    if result.returncode == 0:
        assert isinstance(json.loads(stdout), dict), context
    else:
        lines = stdout.splitlines()
        assert len(lines) == 1 and lines[0].strip(), context
        after = store_state(store)
        assert after == before, f"{context}\nthe failed create changed the store: {set(after) ^ set(before)}"
    saved.unlink()
    return result.returncode, stdout


@dataclass
class FuzzRig:
    workdir: Path
    stores: list[Path]
    inputs: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRig]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    workdir = tmp_path_factory.mktemp("fuzz")
    (workdir / "outside").mkdir()
    (workdir / "outside" / "secret").write_bytes(b"must never change\n")
    stores = [workdir / "stores" / str(i) for i in range(PARALLEL)]
    for store in stores:
        Graftfs(store).run("init-store")
    (workdir / "in").mkdir()
    yield FuzzRig(workdir, stores, workdir / "in")
    left = mounts_under(workdir)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    assert not left, f"fuzzing left mounts behind: {left}"
    # Layers that failed a check are still in layers/ (create() removes the others): keep them to reproduce.
    kept = workdir / "layers"
    for path in workdir.iterdir():
        if path != kept or not any(kept.iterdir()):
            shutil.rmtree(path)


# -- the fuzz test ---------------------------------------------------------------------------------------------


@settings(
    max_examples=max(1, EXAMPLES // PARALLEL),
    deadline=None,
    database=None,
    # No shrinking: it reruns batches of creates for many minutes, and the failing layer is saved anyway.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(batch=st.lists(generated(), min_size=PARALLEL, max_size=PARALLEL))
def test_any_layer_gets_one_line_in_bounded_time(rig: FuzzRig, batch: list[Generated]) -> None:
    world = world_state(rig.workdir)

    def one(slot: int) -> None:
        n = serial()
        unique = pax([(b"comment", f"graftfs fuzz layer {n}".encode())], typeflag=b"g")
        g = batch[slot]
        create(rig.stores[slot], rig.inputs, unique + g.layer, g.compression, g.source, f"fuzz-{n}")

    with ThreadPoolExecutor(PARALLEL) as pool:
        for future in [pool.submit(one, slot) for slot in range(PARALLEL)]:
            future.result()
    assert world_state(rig.workdir) == world


# -- the crash causes and blow-ups it found, as regression tests ------------------------------------------------


REGRESSIONS = {**crash_cases(), **blowup_cases()}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
@pytest.mark.parametrize("source", ["tarball", "oci"])
def test_hostile_layer_fails_with_one_line(rig: FuzzRig, name: str, source: str) -> None:
    case = REGRESSIONS[name]
    world = world_state(rig.workdir)
    start = time.monotonic()
    n = serial()
    # A gzipped case goes in as it is: "none" compression leaves its bytes alone, and the reader sniffs gzip.
    status, out = create(rig.stores[0], rig.inputs, case.layer, "none", source, f"regression-{n}")
    assert time.monotonic() - start < 10
    assert status == 1
    assert case.error in out
    assert world_state(rig.workdir) == world


def test_replacing_one_name_16000_times_is_quick(rig: FuzzRig) -> None:
    # Before: 35 s of bookkeeping (each replacement scanned the 8,000 directories next to it).
    start = time.monotonic()
    status, _ = create(rig.stores[1], rig.inputs, replace_one_name_layer(16_000), "gzip", "oci", "replace-16000")
    assert status == 0
    assert time.monotonic() - start < 25  # 16,000 entries of syscalls; about 3 s on an idle machine


def test_a_100_gib_sparse_hole_is_quick(rig: FuzzRig) -> None:
    # Before: 71 s writing nothing (the hole came through as 100 GiB of zero bytes, seeked over 1 MiB at a time).
    start = time.monotonic()
    status, _ = create(rig.stores[2], rig.inputs, sparse_hole_layer(100 << 30), "gzip", "tarball", "sparse-hole")
    assert status == 0
    assert time.monotonic() - start < 5
    volume = next(p for p in (rig.stores[2] / "volumes").iterdir() if (p / "sparse").exists())
    assert (volume / "sparse").stat().st_size == (100 << 30) + 4


# -- what a failed unpack says (issue 10, item 9) ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_a_file_capability_without_cap_setfcap_names_the_entry_and_the_capability(rig: FuzzRig) -> None:
    cap = bytes.fromhex("0100000200040000000000000000000000000000")  # cap_net_bind_service+ep
    layer = TarBuilder().dir("usr").dir("usr/bin").file("usr/bin/ping", b"x", xattrs={"security.capability": cap})
    info = write_oci_layout(rig.inputs / "capability", [layer.build()])
    store = rig.stores[3]
    before = store_state(store)
    argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-setfcap", *GRAFTFS, "--store", str(store)]
    argv += ["create", "--without-mount", info.url(), "capability"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result
    assert result.stdout == (
        f"pulling the image: unpacking layer `{info.layer_digests[0]}`: `usr/bin/ping`: setting xattr "
        "security.capability: operation not permitted (needs CAP_SETFCAP, which this process does not have)\n"
    )
    assert store_state(store) == before
