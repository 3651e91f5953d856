"""Hostile layer tars, block by block: headers with any field value, PAX records of any kind, and the crash
and blow-up cases of issue 10 (item 6) as ready-made layers.

tarfile refuses to write most of these (negative or huge numbers, NULs in names, lying sizes), so headers are
assembled here: every field is either raw bytes, taken as they are, or an int, written as octal when it fits
and as GNU base-256 (two's complement) when it does not.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

BLOCK = 512
END = b"\0" * (2 * BLOCK)

Field = bytes | int


def number(value: Field, width: int) -> bytes:
    """A header number field of ``width`` bytes."""
    if isinstance(value, bytes):
        return value[:width].ljust(width, b"\0")
    if 0 <= value < 8 ** (width - 1):
        return f"{value:0{width - 1}o}".encode() + b"\0"
    # GNU base-256: the first byte's top bit marks it, the rest is big-endian two's complement.
    raw = (value % (1 << (8 * width - 1))).to_bytes(width, "big")
    return bytes([raw[0] | 0x80 | (0x40 if value < 0 else 0)]) + raw[1:]


def header(
    name: bytes = b"f",
    *,
    typeflag: bytes = b"0",
    size: Field = 0,
    mode: Field = 0o644,
    uid: Field = 0,
    gid: Field = 0,
    mtime: Field = 1_577_836_800,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    devmajor: Field = 0,
    devminor: Field = 0,
    prefix: bytes = b"",
    gnu_tail: bytes = b"",
    checksum: int | None = None,
) -> bytes:
    """One 512-byte header. ``gnu_tail`` fills bytes 345..500 (old GNU: atime, ctime, sparse map, realsize)."""
    block = bytearray(BLOCK)
    block[0:100] = name[:100].ljust(100, b"\0")
    block[100:108] = number(mode, 8)
    block[108:116] = number(uid, 8)
    block[116:124] = number(gid, 8)
    block[124:136] = number(size, 12)
    block[136:148] = number(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag[:1] or b"\0"
    block[157:257] = linkname[:100].ljust(100, b"\0")
    block[257:265] = magic[:8].ljust(8, b"\0")
    block[329:337] = number(devmajor, 8)
    block[337:345] = number(devminor, 8)
    if gnu_tail:
        block[345 : 345 + len(gnu_tail[:167])] = gnu_tail[:167]
    else:
        block[345:500] = prefix[:155].ljust(155, b"\0")
    total = sum(block) if checksum is None else checksum
    block[148:156] = f"{total % 8**6:06o}".encode() + b"\0 "
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def pax_records(records: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for key, value in records:
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


def pax(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    """A PAX extended header (``x``, or ``g`` for global) with its records."""
    data = pax_records(records)
    return header(b"PaxHeaders/f", typeflag=typeflag, size=len(data)) + padded(data)


def member(name: bytes = b"f", data: bytes = b"", **fields: object) -> bytes:
    """A header and its data (declared size = the data's, unless ``size`` is given)."""
    fields.setdefault("size", len(data))
    return header(name, **fields) + padded(data)  # type: ignore[arg-type]


def gnu_sparse(name: bytes, realsize: Field, regions: list[tuple[Field, Field]], data: bytes) -> bytes:
    """An old-GNU sparse member (type S) with up to 4 map entries in its header."""
    entries = b"".join(number(off, 12) + number(length, 12) for off, length in regions[:4])
    tail = bytearray(155)
    tail[41 : 41 + len(entries)] = entries  # sparse map at 386 = 345 + 41
    tail[138:150] = number(realsize, 12)  # realsize at 483 = 345 + 138
    return header(name, typeflag=b"S", size=len(data), magic=b"ustar  \0", gnu_tail=bytes(tail)) + padded(data)


@dataclass(frozen=True)
class Case:
    """A hostile layer (uncompressed unless ``gzipped``) and a substring of the one-line error it must get."""

    layer: bytes
    error: str
    gzipped: bool = False


def _gzip_stream(parts: list[bytes | tuple[bytes, int]]) -> bytes:
    """gzip of the concatenated parts, where ``(chunk, n)`` stands for ``chunk`` repeated ``n`` times: a
    gigabyte of header compresses to a megabyte without ever being in memory, and in well under a second:
    after a full flush a deflate stream does not refer back, so a chunk's compressed form is made once and
    repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    crc = size = 0
    for part in parts:
        chunk, n = part if isinstance(part, tuple) else (part, 1)
        if not n:
            continue
        packed = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
        out.append(packed)
        out.extend([packed] * (n - 1))
        for _ in range(n):
            crc = zlib.crc32(chunk, crc)
        size += len(chunk) * n
    out.append(co.flush())
    out.append(crc.to_bytes(4, "little") + (size % (1 << 32)).to_bytes(4, "little"))
    return b"".join(out)


def huge_pax_header(size: int = 1 << 30) -> bytes:
    """A gzipped layer whose first member has a PAX header of ``size`` bytes (one long comment record)."""
    prefix = f"{size} comment=".encode()
    filler = size - len(prefix) - 1
    chunk = b"a" * (1 << 20)
    whole, rest = divmod(filler, len(chunk))
    return _gzip_stream(
        [
            header(b"PaxHeaders/f", typeflag=b"x", size=size) + prefix,
            (chunk, whole),
            b"a" * rest + b"\n" + b"\0" * (-size % BLOCK),
            member(b"f", b"x"),
            END,
        ]
    )


def crash_cases() -> dict[str, Case]:
    """The five causes of tracebacks the fuzzing found, one layer each (several shapes of some)."""
    return {
        "pax-mtime-inf": Case(pax([(b"mtime", b"inf")]) + member() + END, "PAX mtime"),
        "pax-mtime-nan": Case(pax([(b"mtime", b"nan")]) + member() + END, "PAX mtime"),
        "pax-mtime-huge": Case(pax([(b"mtime", b"9" * 400)]) + member() + END, "PAX mtime"),
        "pax-mtime-1e300": Case(pax([(b"mtime", b"1e300")]) + member() + END, "PAX mtime"),
        "uid-2^32": Case(member(uid=1 << 32) + END, "out of range"),
        "gid-2^40-pax": Case(pax([(b"gid", str(1 << 40).encode())]) + member() + END, "out of range"),
        "uid-negative": Case(member(uid=-1) + END, "out of range"),
        "device-major-2^32": Case(member(b"dev", typeflag=b"3", devmajor=1 << 32) + END, "device number"),
        "device-minor-negative": Case(member(b"dev", typeflag=b"4", devminor=-5) + END, "device number"),
        "pax-path-nul": Case(pax([(b"path", b"a\0b")]) + member() + END, "NUL"),
        "xattr-name-nul": Case(pax([(b"SCHILY.xattr.user.a\0b", b"v")]) + member() + END, "NUL"),
        "gnu-sparse-bad-map": Case(
            pax([(b"GNU.sparse.map", b"1,x"), (b"GNU.sparse.size", b"10")]) + member() + END, "sparse"
        ),
        "gnu-sparse-odd-map": Case(
            pax([(b"GNU.sparse.map", b"0,1,5"), (b"GNU.sparse.size", b"10")]) + member(data=b"x") + END, "sparse"
        ),
        "gnu-sparse-1.0-garbage-map": Case(
            pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"9")])
            + member(data=b"zz\n" + b"\0" * 600)
            + END,
            "sparse",
        ),
        "gnu-sparse-old-overlapping": Case(gnu_sparse(b"s", 100, [(10, 5), (12, 5)], b"x" * 10) + END, "sparse"),
    }


def blowup_cases() -> dict[str, Case]:
    """The three ways header claims made work grow beyond the bytes read (the sparse hole is a success case:
    see :func:`sparse_hole_layer`)."""
    return {
        "member-2^40": Case(gzip.compress(member(b".wh.x", size=1 << 40), mtime=0), "unexpected end", gzipped=True),
        "member-2^60": Case(gzip.compress(member(b".wh.x", size=1 << 60), mtime=0), "unexpected end", gzipped=True),
        "pax-header-1GiB": Case(huge_pax_header(), "PAX header of 1073741824 bytes", gzipped=True),
    }


def replace_one_name_layer(n: int = 16_000) -> bytes:
    """``n`` entries: ``n/2`` directories, then one name replaced ``n/2`` times (quadratic bookkeeping once)."""
    out = [member(f"d{i}".encode(), typeflag=b"5", mode=0o755) for i in range(n // 2)]
    out += [member(b"f", b"x") for _ in range(n // 2)]
    return b"".join(out) + END


def sparse_hole_layer(hole: int = 100 << 30) -> bytes:
    """A PAX 1.0 sparse file of ``hole`` + 4 bytes whose only data is its last 4 bytes."""
    size = hole + 4
    sparse_map = padded(f"1\n{hole}\n4\n".encode())
    records = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"sparse"),
        (b"GNU.sparse.realsize", str(size).encode()),
    ]
    return pax(records) + member(b"GNUSparseFile.0/sparse", sparse_map + b"tail") + END
