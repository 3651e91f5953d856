"""A one-pass reader of layer tars (ustar, GNU and PAX, with GNU sparse members), for hostile input.

Why not :mod:`tarfile`: a layer is untrusted, and tarfile's work follows what headers claim rather than the
bytes it reads. Its stream mode skips a member's declared size 64 KiB at a time even after the data has run
out (a 780-byte layer declaring a 2**60-byte member takes months), reads a PAX header of any declared size
whole into memory, expands sparse holes into zero bytes, keeps every member it has read, and lets bad values
through as ``ValueError``/``OverflowError`` from deep inside. Here:

* every declared size is consumed by actually reading it, so skipping stops at the end of the stream;
* special headers (PAX ``x``/``g``, GNU long names ``L``/``K``) and sparse maps are capped at 1 MiB, the
  limit Go's ``archive/tar`` (which GrootFS used) puts on them;
* a malformed header, number or record raises :class:`InvalidImage` (``invalid layer tar: ...``), and values
  the kernel cannot take (IDs of 2**32 and more, device numbers beyond Linux's 12:20 bits, NUL bytes in
  names) are refused here rather than failing in ``os`` later;
* sparse members are handed over as a map of data regions, so holes cost nothing.

Semantics follow Go's reader where tarfile and Go differ (GNU headers have no ustar prefix, a bad header after
the first ends the unpack with an error rather than quietly ending the archive, global PAX headers are
ignored as containerd ignores them). Text is decoded as UTF-8 with ``surrogateescape``, as tarfile does, so
``os`` functions get the archive's bytes back.
"""

from __future__ import annotations

import struct

from ..errors import InvalidImage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

BLOCK = 512
#: Go's archive/tar maxSpecialFileSize: PAX and GNU long-name headers, and sparse maps, are at most this.
MAX_SPECIAL = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
_INT64 = 1 << 63
_MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "leave unchanged" to chown: not an ID
_MAX_MAJOR = (1 << 12) - 1  # what mknod's 32-bit dev_t carries (Linux's new_encode_dev)
_MAX_MINOR = (1 << 20) - 1
_SKIP_CHUNK = 1 << 20

REG = "0"
LNK = "1"
SYM = "2"
CHR = "3"
BLK = "4"
DIR = "5"
FIFO = "6"
_REGULAR = frozenset("0\x007S")
# Types whose size field says nothing about data following the header (tarfile and Go agree).
_HEADER_ONLY = frozenset("123456")
_SIGNED_SUM = struct.Struct("148b8x356b")
_REVERTIBLE = frozenset((b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime"))


def _error(what: str) -> InvalidImage:
    return InvalidImage(f"invalid layer tar: {what}")


def show(name: str, limit: int = 200) -> str:
    """A name as it goes into a one-line message: hostile names can be a megabyte long."""
    return name if len(name) <= limit else name[:limit] + "..."


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str) -> int:
    """A header number: octal text, or GNU base-256 (first byte's top bit set; two's complement)."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big") & ~(1 << (8 * len(field) - 1))
        if field[0] & 0x40:
            value -= 1 << (8 * len(field) - 1)
    else:
        digits = _cstr(field).strip(b" ")
        if not digits:
            return 0
        if not digits.isdigit():
            raise _error(f"{what} field {field!r} is not a number")
        try:
            value = int(digits, 8)
        except ValueError:
            raise _error(f"{what} field {field!r} is not an octal number") from None
    if not -_INT64 <= value < _INT64:
        raise _error(f"{what} {value} does not fit in 64 bits")
    return value


def _decimal(value: bytes, what: str) -> int:
    digits = value[1:] if value[:1] == b"-" else value
    if not digits.isdigit() or len(digits) > 19:
        raise _error(f"PAX {what} {show(_text(value))!r} is not a 64-bit integer")
    number = int(value)
    if not -_INT64 <= number < _INT64:
        raise _error(f"PAX {what} {number} does not fit in 64 bits")
    return number


def _pax_time_ns(value: bytes) -> int:
    """``[-]seconds[.fraction]`` as Go's parsePAXTime reads it: the seconds must fit in 64 bits."""
    whole, dot, frac = value.partition(b".")
    seconds = _decimal(whole, "mtime")
    if dot and not frac.isdigit():
        raise _error(f"PAX mtime {show(_text(value))!r} is not a time")
    nanos = int((frac + b"000000000")[:9]) if frac else 0
    ns = seconds * 1_000_000_000 + (-nanos if whole.startswith(b"-") else nanos)
    if ns < -_INT64 * 1_000_000_000:  # the fraction took it below the 64-bit seconds os.utime converts to
        raise _error(f"PAX mtime {show(_text(value))!r} is out of range")
    return ns


def _parse_pax(data: bytes) -> list[tuple[bytes, bytes]]:
    """``"%d %s=%s\\n"`` records, in order (GNU sparse 0.0 repeats its keys)."""
    records = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            break  # NUL padding after the last record, as tarfile tolerates
        space = data.find(b" ", pos, pos + 21)
        length_text = data[pos:space]
        if space < 0 or not length_text.isdigit():
            raise _error("malformed PAX record length")
        stop = pos + int(length_text)
        if stop <= space + 1 or stop > end or data[stop - 1] != 0x0A:
            raise _error("malformed PAX record")
        key, eq, value = data[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            raise _error("malformed PAX record: no key")
        # As Go's validPAXRecord: names are C strings to the kernel, and a NUL would cut them short.
        if b"\0" in key or (key in (b"path", b"linkpath", b"uname", b"gname") and b"\0" in value):
            raise _error(f"PAX record {show(_text(key))!r} holds a NUL byte")
        records.append((key, value))
        pos = stop
    return records


class Member:
    """One entry of the archive, with everything the unpacker uses."""

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "size",
        "sparse",
        "type",
        "uid",
        "xattrs",
    )

    def __init__(self) -> None:
        self.name = ""
        self.type = REG  # one of REG LNK SYM CHR BLK DIR FIFO, or another typeflag (ignored by the unpacker)
        self.mode = 0
        self.uid = 0
        self.gid = 0
        #: The file's size (for a sparse member: its apparent size, holes included).
        self.size = 0
        self.mtime_ns = 0
        self.linkname = ""
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: list[tuple[str, bytes]] = []
        #: For sparse members, the data regions (offset, length) in order; their bytes follow back to back.
        self.sparse: list[tuple[int, int]] | None = None


class TarReader:
    """Iterate members with :meth:`next`; read the current member's data with :meth:`readinto`.

    Data the caller leaves unread is skipped (by reading it) when the next member is asked for.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._f = stream
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0  # padding after them, to the next block
        self._done = False
        self._scratch = bytearray(_SKIP_CHUNK)

    # -- raw reading ---------------------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self._f.read(n)
        while len(data) < n:
            more = self._f.read(n - len(data))
            if not more:
                raise _error("unexpected end of data")
            data += more
        return data

    def _skip(self, n: int) -> None:
        # By reading, never by arithmetic on a claimed size: a lie about the size ends at the end of the bytes.
        view = memoryview(self._scratch)
        while n:
            got = self._f.readinto(view[: min(n, _SKIP_CHUNK)])  # type: ignore[attr-defined]
            if not got:
                raise _error("unexpected end of data")
            n -= got

    def readinto(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes of the current member's data; 0 at its end."""
        if not self._left:
            return 0
        want = min(len(view), self._left)
        got: int = self._f.readinto(view[:want])  # type: ignore[attr-defined]
        if not got:
            raise _error("unexpected end of data")
        self._left -= got
        return got

    # -- headers -------------------------------------------------------------------------------------------

    def __iter__(self) -> TarReader:
        return self

    def __next__(self) -> Member:
        member = self.next()
        if member is None:
            raise StopIteration
        return member

    def next(self) -> Member | None:
        if self._done:
            return None
        if self._left or self._pad:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0
        pax: list[tuple[bytes, bytes]] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._f.read(BLOCK)
            if len(block) < BLOCK:
                if block:
                    block += self._read(BLOCK - len(block))
                else:
                    # The end of the bytes at a header boundary ends the archive, as in Go and tarfile; but not
                    # in the middle of a member's extended headers.
                    if pax is not None or long_name is not None or long_link is not None:
                        raise _error("unexpected end of data")
                    self._done = True
                    return None
            if block == _ZERO_BLOCK:
                self._done = True
                return None
            self._check_sum(block)
            kind = chr(block[156]) if block[156] else "\0"
            size = _number(block[124:136], "size")
            if size < 0:
                raise _error(f"negative size {size}")
            if kind in "xgLK":
                if size > MAX_SPECIAL:
                    raise _error(
                        f"a {'PAX' if kind in 'xg' else 'GNU long name'} header of {size} bytes "
                        f"(at most {MAX_SPECIAL} are allowed)"
                    )
                data = self._read(size + (-size % BLOCK))[:size]
                if kind == "x":
                    pax = _parse_pax(data)  # a later one replaces an earlier one, as in Go
                elif kind == "g":
                    _parse_pax(data)  # checked, then ignored: containerd ignores global headers too
                elif kind == "L":
                    long_name = _cstr(data)
                else:
                    long_link = _cstr(data)
                continue
            return self._member(block, kind, size, pax, long_name, long_link)

    @staticmethod
    def _check_sum(block: bytes) -> None:
        stored = _cstr(block[148:156]).strip(b" ")
        if not stored.isdigit():
            raise _error("invalid header (bad checksum)")
        try:
            expected = int(stored, 8)
        except ValueError:
            raise _error("invalid header (bad checksum)") from None
        unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
        if expected != unsigned and expected != sum(_SIGNED_SUM.unpack(block)) + 8 * 0x20:
            raise _error("invalid header (bad checksum)")

    def _member(
        self,
        block: bytes,
        kind: str,
        size: int,
        pax: list[tuple[bytes, bytes]] | None,
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> Member:
        m = Member()
        name = _cstr(block[0:100])
        if long_name is not None:
            name = long_name
        elif block[257:263] == b"ustar\0":  # POSIX ustar (and PAX): the prefix field; GNU uses it otherwise
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        m.name = _text(name)
        m.linkname = _text(long_link if long_link is not None else _cstr(block[157:257]))
        m.mode = _number(block[100:108], "mode")
        m.uid = _number(block[108:116], "uid")
        m.gid = _number(block[116:124], "gid")
        m.mtime_ns = _number(block[136:148], "mtime") * 1_000_000_000
        if kind in "34":
            m.devmajor = _number(block[329:337], "devmajor")
            m.devminor = _number(block[337:345], "devminor")
        m.size = size
        real = -1  # a sparse member's apparent size
        if kind == "S":
            m.sparse = self._gnu_sparse_map(block)
            real = _number(block[483:495], "realsize")
        map_in_data = False
        if pax:
            sparse_real, map_in_data = self._apply_pax(m, pax)
            if sparse_real >= 0:
                real = sparse_real
        data_size = m.size  # the header's, or the PAX record's
        if kind == "\0":
            kind = DIR if m.name.endswith("/") else REG
        elif kind in "7S":
            kind = REG  # contiguous files are ordinary files to everyone but their inventor
        m.type = kind
        if kind in _HEADER_ONLY:
            data_size = 0
            m.sparse = None  # sparse records on a non-file describe nothing
        elif kind == REG and (m.sparse is not None or map_in_data):
            data_size = self._sparse_data(m, data_size, real, map_in_data)
        self._validate(m)
        self._left, self._pad = data_size, -data_size % BLOCK
        return m

    @staticmethod
    def _apply_pax(m: Member, records: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
        """Apply PAX records to ``m``. Returns a GNU sparse member's real size (-1 if not sparse) and whether
        its map is at the start of the data (format 1.0) rather than in the records (0.0, 0.1)."""
        sparse: dict[bytes, bytes] = {}
        offsets: list[bytes] = []
        sizes: list[bytes] = []
        for key, value in records:
            if not value and key in _REVERTIBLE:
                continue  # POSIX: an empty value means the header's own field stands
            if key == b"path":
                m.name = _text(value)
            elif key == b"linkpath":
                m.linkname = _text(value)
            elif key == b"size":
                m.size = _decimal(value, "size")
                if m.size < 0:
                    raise _error(f"negative PAX size {m.size}")
            elif key == b"uid":
                m.uid = _decimal(value, "uid")
            elif key == b"gid":
                m.gid = _decimal(value, "gid")
            elif key == b"mtime":
                m.mtime_ns = _pax_time_ns(value)
            elif key.startswith(b"SCHILY.xattr."):
                m.xattrs.append((_text(key[13:]), value))
            elif key == b"GNU.sparse.offset":
                offsets.append(value)
            elif key == b"GNU.sparse.numbytes":
                sizes.append(value)
            elif key.startswith(b"GNU.sparse."):
                sparse[key[11:]] = value
        map_in_data = sparse.get(b"major") == b"1" and sparse.get(b"minor") == b"0"
        if map_in_data:
            pass
        elif b"map" in sparse:
            text = sparse[b"map"]
            m.sparse = _pairs([_decimal(v, "sparse map") for v in text.split(b",")] if text else [])
        elif offsets or sizes or b"numblocks" in sparse:
            if len(offsets) != len(sizes):
                raise _error("GNU sparse 0.0 records do not pair up")
            pairs = zip(offsets, sizes, strict=True)
            m.sparse = [(_decimal(o, "sparse offset"), _decimal(n, "sparse size")) for o, n in pairs]
        else:
            return -1, False
        if b"name" in sparse:
            m.name = _text(sparse[b"name"])
        real = sparse.get(b"realsize", sparse.get(b"size"))
        if real is None:
            raise _error(f"sparse member `{show(m.name)}` has no real size")
        return _decimal(real, "sparse real size"), map_in_data

    def _gnu_sparse_map(self, block: bytes) -> list[tuple[int, int]]:
        """The old GNU format: 4 entries in the header, then extension blocks of 21 while marked."""
        entries = self._sparse_entries(block[386:482], 4)
        extended = block[482]
        read = 0
        while extended:
            read += BLOCK
            if read > MAX_SPECIAL:
                raise _error(f"GNU sparse map longer than {MAX_SPECIAL} bytes")
            ext = self._read(BLOCK)
            entries += self._sparse_entries(ext[:504], 21)
            extended = ext[504]
        return entries

    @staticmethod
    def _sparse_entries(area: bytes, count: int) -> list[tuple[int, int]]:
        out = []
        for i in range(count):
            entry = area[i * 24 : i * 24 + 24]
            if not entry[0]:
                break  # an unused entry ends the list
            out.append((_number(entry[:12], "sparse offset"), _number(entry[12:], "sparse size")))
        return out

    def _sparse_map_in_data(self, data_size: int) -> tuple[list[tuple[int, int]], int]:
        """Format 1.0: decimal lines (a count, then offset and size pairs) at the start of the data, padded to
        a block. Returns the map and the number of map bytes read."""
        blocks: list[bytes] = []
        newlines, need, taken = 0, -1, 0
        while need < 0 or newlines < need:
            if taken >= MAX_SPECIAL:
                raise _error(f"GNU sparse map longer than {MAX_SPECIAL} bytes")
            if data_size - taken < BLOCK:
                raise _error("GNU sparse map runs past the member's data")
            blocks.append(self._read(BLOCK))
            taken += BLOCK
            newlines += blocks[-1].count(b"\n")
            if need < 0 and newlines:
                count = _decimal(b"".join(blocks).split(b"\n", 1)[0], "sparse map count")
                if count < 0:
                    raise _error("malformed GNU sparse map")
                need = 1 + 2 * count
        lines = b"".join(blocks).split(b"\n")
        return _pairs([_decimal(v, "sparse map") for v in lines[1:need]]), taken

    def _sparse_data(self, m: Member, data_size: int, real: int, map_in_data: bool) -> int:
        """Settle a sparse member: its map and real size, and how many data bytes follow (returned)."""
        if map_in_data:
            m.sparse, taken = self._sparse_map_in_data(data_size)
            data_size -= taken
        assert m.sparse is not None
        if real < 0:
            raise _error(f"sparse member `{show(m.name)}` has a negative size")
        # As Go's validateSparseEntries: sorted, disjoint, inside the file; and the data must be all there is.
        end = 0
        regions = []
        for offset, length in m.sparse:
            if offset < 0 or length < 0 or offset < end or offset + length > real:
                raise _error(f"sparse member `{show(m.name)}` has an invalid map")
            end = offset + length
            if length:
                regions.append((offset, length))
        if sum(length for _, length in regions) != data_size:
            raise _error(f"sparse member `{show(m.name)}`: its map does not match its data")
        m.sparse = regions
        m.size = real
        return data_size

    @staticmethod
    def _validate(m: Member) -> None:
        if not 0 <= m.uid <= _MAX_ID or not 0 <= m.gid <= _MAX_ID:
            raise _error(f"`{show(m.name)}`: owner {m.uid}:{m.gid} is out of range")
        if m.type in (CHR, BLK) and not (0 <= m.devmajor <= _MAX_MAJOR and 0 <= m.devminor <= _MAX_MINOR):
            raise _error(f"`{show(m.name)}`: device number {m.devmajor}:{m.devminor} is out of range")
        if "\0" in m.name or "\0" in m.linkname:
            raise _error(f"`{show(m.name)}`: name holds a NUL byte")
        for key, _ in m.xattrs:
            if not key or "\0" in key:
                raise _error(f"`{show(m.name)}`: invalid xattr name {show(key)!r}")


def _pairs(numbers: list[int]) -> list[tuple[int, int]]:
    if len(numbers) % 2:
        raise _error("GNU sparse map has an odd number of values")
    return list(zip(numbers[::2], numbers[1::2], strict=True))
