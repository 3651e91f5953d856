"""Ingesting a layer into a repository directory in DUCC's layout (graftfs.repository.ingest)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from graftfs.errors import VerificationError
from graftfs.layers import Expect
from graftfs.repository import ingest, layers
from tests.support.images import TarBuilder, compress, sha256_digest

TAR = (
    TarBuilder()
    .dir("etc")
    .file("etc/motd", b"hello\n")
    .whiteout("etc/old.conf")
    .dir("opt")
    .opaque("opt")
    .file("opt/a", b"a\n")
    .build()
)
BLOB = compress(TAR, "gzip")
EXPECT = Expect(sha256_digest(BLOB), len(BLOB), sha256_digest(TAR))


def _opener(data: bytes, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    def open_blob() -> io.BytesIO:
        if calls is not None:
            calls.append(1)
        return io.BytesIO(data)

    return open_blob


def test_a_layer_is_unpacked_as_ducc_does_with_its_metadata_as_the_marker(tmp_path: Path) -> None:
    calls: list[int] = []
    assert ingest.ingest(str(tmp_path), EXPECT, _opener(BLOB, calls)) is True
    layerfs = Path(layers.layer_dir(str(tmp_path), EXPECT.digest))
    assert (layerfs / "etc/motd").read_bytes() == b"hello\n"
    # Whiteouts and opaque markers stay plain files, as cvmfs_server ingest leaves them.
    assert (layerfs / "etc/.wh.old.conf").is_file()
    assert (layerfs / "opt/.wh..wh..opq").is_file()
    assert layers.scan(str(layerfs)) == layers.SHIM
    (info,) = json.loads((layerfs.parent / ".metadata/layers.json").read_text())
    assert info["compressed-diff-digest"] == EXPECT.digest
    assert info["diff-digest"] == EXPECT.diff_id
    assert info["id"] == EXPECT.diff_id[7:]
    assert info["diff-size"] >= len(b"hello\na\n")
    assert ingest.present(str(tmp_path), EXPECT.digest)
    # Again: nothing to do, and no blob opened.
    assert ingest.ingest(str(tmp_path), EXPECT, _opener(BLOB, calls)) is False
    assert calls == [1]
    assert sorted(os.listdir(layerfs.parent.parent)) == [EXPECT.digest[7:]]


@pytest.mark.parametrize("what", ["digest", "diff_id"])
def test_a_blob_that_is_not_what_it_claims_leaves_nothing(tmp_path: Path, what: str) -> None:
    expect = (
        Expect(EXPECT.digest, -1, sha256_digest(b"other"))
        if what == "diff_id"
        else Expect(sha256_digest(b"other"), -1, EXPECT.diff_id)
    )
    with pytest.raises(VerificationError, match="mismatch") as err:
        ingest.ingest(str(tmp_path), expect, _opener(BLOB))
    assert "\n" not in str(err.value)
    assert not ingest.present(str(tmp_path), expect.digest)
    hh = tmp_path / ".layers" / expect.digest[7:9]
    assert os.listdir(hh) == []


def test_leftovers_of_a_killed_ingest_are_removed_by_the_next(tmp_path: Path) -> None:
    hexd = EXPECT.digest[7:]
    hh = tmp_path / ".layers" / hexd[:2]
    (hh / f".{hexd}-tmp-1-aaaa" / "layerfs" / "etc").mkdir(parents=True)
    (hh / hexd / "layerfs").mkdir(parents=True)  # renamed without metadata: not a layer
    (hh / f".{hexd}.lock").write_bytes(b"")  # its holder died: the kernel dropped the flock
    assert ingest.ingest(str(tmp_path), EXPECT, _opener(BLOB)) is True
    assert sorted(os.listdir(hh)) == [hexd]
    assert ingest.present(str(tmp_path), EXPECT.digest)


def _ingest_in_child(root: str, queue: multiprocessing.Queue[bool]) -> None:
    queue.put(ingest.ingest(root, EXPECT, _opener(BLOB)))


def test_concurrent_ingests_of_one_layer_build_it_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bool] = ctx.Queue()
    procs = [ctx.Process(target=_ingest_in_child, args=(str(tmp_path), queue)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    built = sorted(queue.get(timeout=5) for _ in procs)
    assert built == [False, False, False, False, True]
    hh = tmp_path / ".layers" / EXPECT.digest[7:9]
    assert sorted(os.listdir(hh)) == [EXPECT.digest[7:]]


def test_only_sha256_digests_name_layers(tmp_path: Path) -> None:
    from graftfs.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        ingest.ingest(str(tmp_path), Expect("sha512:00"), _opener(BLOB))


class _Stalling(io.RawIOBase):
    """A blob that gives its first half, says so on ``ready``, then blocks forever (until killed)."""

    def __init__(self, data: bytes, ready: int) -> None:
        self.data = data[: len(data) // 2]
        self.ready = ready

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self.data:
            os.write(self.ready, b"x")
            import time

            time.sleep(3600)
        n = min(len(buffer), len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def test_an_ingest_killed_mid_build_leaves_what_the_next_removes(tmp_path: Path) -> None:
    big = TarBuilder().file("big", os.urandom(4 << 20)).build()
    blob = compress(big, "gzip")
    expect = Expect(sha256_digest(blob), len(blob), sha256_digest(big))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        os.close(read)
        try:
            ingest.ingest(str(tmp_path), expect, lambda: io.BufferedReader(_Stalling(blob, write)))
        finally:
            os._exit(1)
    os.close(write)
    try:
        assert os.read(read, 1) == b"x"  # the child is half-way through the blob
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
    hexd = expect.digest[7:]
    hh = tmp_path / ".layers" / hexd[:2]
    left = sorted(os.listdir(hh))
    assert [n for n in left if n.startswith(f".{hexd}-tmp-")], left  # its build, recognisable by name
    assert not ingest.present(str(tmp_path), expect.digest)
    assert ingest.ingest(str(tmp_path), expect, _opener(blob)) is True
    assert sorted(os.listdir(hh)) == [hexd]
