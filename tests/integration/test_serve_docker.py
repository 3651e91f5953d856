"""``graftfs serve docker-graphdriver`` on the wire, without dockerd: the plugin protocol's shapes (absent keys,
chunked ``ApplyDiff``, a streamed ``Diff`` refused before its first byte, errors as ``{"Err"}``), whiteouts
both ways, ``Get``/``Put`` counts that survive a killed plugin, ``UIDMaps``, and the socket's life."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftfs.mount import kernel
from tests.support.graphdriver_wire import Plugin

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts overlays")


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    sock_dir = Path(tempfile.mkdtemp(prefix="gfs-gd-"))
    p = Plugin(tmp_path / "store", sock_dir / "gd.sock", tmp_path / "plugin.log")
    try:
        yield p
    finally:
        p.stop()
        p.start()
        p.call("Cleanup")
        p.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        assert not [m.point for m in kernel.mountinfo() if m.point.startswith(str(tmp_path) + "/")]
        assert "unexpected-error" not in p.log.read_text()


def layer(*entries: tuple[str, bytes | None], owner: int = 0) -> bytes:
    """A tar of files (``None``: a directory)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = owner
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def names(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_activate_capabilities_and_absent_keys(plugin: Plugin) -> None:
    code, data = plugin.raw("Plugin.Activate")
    assert (code, json.loads(data)) == (200, {"Implements": ["GraphDriver"]})
    assert plugin.call("Init", {"Home": "/var/lib/docker/graftfs"}) == {}
    assert plugin.call("Capabilities") == {"Capabilities": {"ReproducesExactDiffs": False}}
    assert plugin.call("Create", {"ID": "a"}) == {}  # no Parent, MountLabel, StorageOpt: empty
    code, data = plugin.raw("GraphDriver.Exists", b"")  # no body at all: an empty request
    assert (code, json.loads(data)) == (200, {"Exists": False})
    assert plugin.call("Exists", {"ID": "a"}) == {"Exists": True}
    code, data = plugin.raw("GraphDriver.Nonsense", b"{}")
    assert code == 404 and "no such plugin method" in json.loads(data)["Err"]
    assert "not a valid graphdriver id" in plugin.call("Create", {"ID": "../x"}, status=500)["Err"]
    assert "already exists" in plugin.call("Create", {"ID": "a"}, status=500)["Err"]
    status = dict(plugin.call("Status")["Status"])
    assert status["Writable layers"] == "1" and status["Store"] == str(plugin.store)
    plugin.call("Remove", {"ID": "a"})
    plugin.call("Remove", {"ID": "a"})  # removing what is gone is done
    assert plugin.call("Exists", {"ID": "a"}) == {"Exists": False}


def test_layers_whiteouts_diff_and_changes(plugin: Plugin) -> None:
    plugin.call("Init")
    plugin.call("Create", {"ID": "base"})
    base = layer(("etc", None), ("etc/a", b"a"), ("etc/b", b"b"), ("opt", None), ("opt/old", b"old"))
    assert plugin.apply("base", "", base) == {"Size": 5}
    assert "takes one ApplyDiff" in plugin.apply("base", "", base, status=500)["Err"]
    plugin.call("Create", {"ID": "top", "Parent": "base"})
    top = layer(("etc", None), ("etc/.wh.a", b""), ("opt", None), ("opt/.wh..wh..opq", b""), ("opt/new", b"n"))
    plugin.apply("top", "base", top)
    # the whiteouts are overlay's on disk ...
    merged = plugin.call("Get", {"ID": "top"})["Dir"]
    assert sorted(os.listdir(merged + "/etc")) == ["b"] and os.listdir(merged + "/opt") == ["new"]
    plugin.call("Put", {"ID": "top"})
    # ... and the layer's again in its Diff
    code, data = plugin.raw("GraphDriver.Diff", json.dumps({"ID": "top", "Parent": "base"}).encode())
    assert code == 200
    entries = names(data)
    assert {"etc/.wh.a", "opt/.wh..wh..opq", "opt/new"} <= entries.keys(), entries.keys()
    # a container on it
    plugin.call("CreateReadWrite", {"ID": "c-init", "Parent": "top"})
    plugin.call("CreateReadWrite", {"ID": "c", "Parent": "c-init"})
    root = plugin.call("Get", {"ID": "c"})["Dir"]
    Path(root, "etc/b").unlink()
    Path(root, "added").write_text("12345")
    Path(root, "opt/new").write_text("changed")
    changes = plugin.call("Changes", {"ID": "c", "Parent": "c-init"})["Changes"]
    assert changes == [
        {"Path": "/added", "Kind": 1},
        {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/b", "Kind": 2},
        {"Path": "/opt/new", "Kind": 0},  # its directory is only the parent of a modified file, as in Docker
    ]
    assert plugin.call("DiffSize", {"ID": "c", "Parent": "c-init"}) == {"Size": 12}
    meta = plugin.call("GetMetadata", {"ID": "c"})["Metadata"]
    assert meta["MergedDir"] == root and len(meta["LowerDir"].split(":")) == 3
    # a Diff against another parent is refused before a byte of tar
    code, data = plugin.raw("GraphDriver.Diff", json.dumps({"ID": "c", "Parent": "base"}).encode())
    assert code == 500 and "with its own parent only" in json.loads(data)["Err"]
    plugin.call("Put", {"ID": "c"})
    err = plugin.call("Remove", {"ID": "top"}, status=500)["Err"]
    assert "parent" in err
    for layer_id in ("c", "c-init", "top", "base"):
        plugin.call("Remove", {"ID": layer_id})
    assert plugin.call("Status")["Status"][2] == ["Layers", "0"]


def test_get_put_counts_survive_a_killed_plugin(plugin: Plugin) -> None:
    plugin.call("Init")
    plugin.call("CreateReadWrite", {"ID": "rw"})
    first = plugin.call("Get", {"ID": "rw"})["Dir"]
    assert plugin.call("Get", {"ID": "rw"})["Dir"] == first
    assert plugin.stop(signal.SIGKILL) == -signal.SIGKILL
    plugin.start()
    assert kernel.is_mountpoint(first) or any(m.point == first for m in kernel.mountinfo())
    plugin.call("Put", {"ID": "rw"})
    assert any(m.point == first for m in kernel.mountinfo()), "unmounted with a Get outstanding"
    plugin.call("Put", {"ID": "rw"})
    assert not any(m.point == first for m in kernel.mountinfo())
    plugin.call("Remove", {"ID": "rw"})


def test_uid_maps_apply_both_ways(plugin: Plugin) -> None:
    maps = [{"container_id": 0, "host_id": 100000, "size": 65536}]
    plugin.call("Init", {"Home": "/x", "UIDMaps": maps, "GIDMaps": maps})
    plugin.call("Create", {"ID": "m"})
    plugin.apply("m", "", layer(("f", b"x"), owner=7))
    plugin.call("Create", {"ID": "m2", "Parent": "m"})
    root = plugin.call("Get", {"ID": "m2"})["Dir"]
    st = os.lstat(root + "/f")
    assert (st.st_uid, st.st_gid) == (100007, 100007)
    assert os.lstat(root).st_uid == 100000  # the new layer's root belongs to the mapped root
    plugin.call("Put", {"ID": "m2"})
    code, data = plugin.raw("GraphDriver.Diff", json.dumps({"ID": "m"}).encode())
    assert code == 200 and names(data)["f"].uid == 7
    assert "is not a mapping" in plugin.call("Init", {"UIDMaps": [{"host_id": 1}]}, status=500)["Err"]


def test_storage_opt_size_without_a_quota_backend_is_refused(plugin: Plugin) -> None:
    plugin.call("Init")
    err = plugin.call("CreateReadWrite", {"ID": "q", "StorageOpt": {"size": "1G"}}, status=500)["Err"]
    assert "no quota backend that limits a layer" in err
    err = plugin.call("CreateReadWrite", {"ID": "q", "StorageOpt": {"size": "lots"}}, status=500)["Err"]
    assert "not a size" in err
    err = plugin.call("CreateReadWrite", {"ID": "q", "StorageOpt": {"inodes": "5"}}, status=500)["Err"]
    assert "knows only size" in err
    assert plugin.call("Exists", {"ID": "q"}) == {"Exists": False}


def test_the_socket_is_0600_and_removed_at_sigterm(plugin: Plugin) -> None:
    st = os.lstat(plugin.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert plugin.stop() == 0
    assert not plugin.sock.exists()
    plugin.start()


def test_a_thin_layer_stacks_the_repository_and_without_s3_a_diff_on_it_is_ordinary(tmp_path: Path) -> None:
    """A layer whose tree is ``/thin.json`` (a thin image's, as ``docker load`` applies it): the layers on it
    stack the repository's layers it names, its own Get shows the descriptor, ``Changes`` compares with the
    repository's layers, and, with no S3 bucket configured, ``Diff`` of a container on it is an ordinary layer."""
    import subprocess
    import sys

    from tests.support import ducc
    from tests.support.images import TarBuilder, busybox_layer, sha256_digest

    base = busybox_layer(TarBuilder().file("etc/motd", b"from the repository\n"))
    digest = sha256_digest(b"pretend this is the compressed blob")
    src = ducc.write_repository(tmp_path / "repo-src", [(digest, base)])
    store = tmp_path / "store"
    sock_dir = Path(tempfile.mkdtemp(prefix="gfs-gd-"))
    with ducc.erofs(src, tmp_path / "repo.erofs", tmp_path / "repo") as repo:
        subprocess.run(
            [sys.executable, "-m", "graftfs", "--store", str(store), "init-store", "--layer-repository", str(repo)],
            check=True,
        )
        plugin = Plugin(store, sock_dir / "gd.sock", tmp_path / "plugin.log")
        _thin_on_the_wire(plugin, digest, sock_dir)
    assert not [m.point for m in kernel.mountinfo() if m.point.startswith(str(tmp_path) + "/")]
    assert "unexpected-error" not in plugin.log.read_text()


def _thin_on_the_wire(plugin: Plugin, digest: str, sock_dir: Path) -> None:
    from graftfs.repository.thin import ThinImage, ThinLayer

    try:
        plugin.call("Init")
        plugin.call("Create", {"ID": "thin"})
        descriptor = ThinImage([ThinLayer(digest[7:], "cvmfs://repo/x")]).to_json()
        plugin.apply("thin", "", layer(("thin.json", descriptor)))
        own = plugin.call("Get", {"ID": "thin"})["Dir"]
        assert os.listdir(own) == ["thin.json"]  # the layer itself: what docker save reads back
        plugin.call("Put", {"ID": "thin"})
        plugin.call("CreateReadWrite", {"ID": "c-init", "Parent": "thin"})
        plugin.call("CreateReadWrite", {"ID": "c", "Parent": "c-init"})
        root = plugin.call("Get", {"ID": "c"})["Dir"]
        assert Path(root, "etc/motd").read_text() == "from the repository\n"
        assert not Path(root, "thin.json").exists() and not Path(root, ".cvmfscatalog").exists()
        Path(root, "etc/motd").write_text("changed\n")
        changes = plugin.call("Changes", {"ID": "c", "Parent": "c-init"})["Changes"]
        assert {"Path": "/etc/motd", "Kind": 0} in changes, changes  # modified: it is in the repository's layer
        plugin.call("Put", {"ID": "c"})
        code, data = plugin.raw("GraphDriver.Diff", json.dumps({"ID": "c", "Parent": "c-init"}).encode())
        assert code == 200
        assert "etc/motd" in names(data) and "thin.json" not in names(data)  # an ordinary layer
        # With a bucket whose S3 cannot be reached: the Diff (docker commit) fails in one line, before any byte
        # of tar, and leaves nothing behind.
        plugin.stop()
        plugin.args = ["--publish-commits", "--s3-endpoint", "http://127.0.0.1:9", "--s3-bucket", "layers"]
        plugin.env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "not-shown-anywhere"}
        plugin.start()
        code, data = plugin.raw("GraphDriver.Diff", json.dumps({"ID": "c", "Parent": "c-init"}).encode())
        err = json.loads(data)["Err"]
        assert code == 500 and "s3://layers/layers/" in err and "\n" not in err, err
        assert "not-shown-anywhere" not in err + plugin.log.read_text()
        assert not [n for n in os.listdir(plugin.store / "tmp") if "publish" in n]
        for layer_id in ("c", "c-init", "thin"):
            plugin.call("Remove", {"ID": layer_id})
    finally:
        plugin.stop()
        plugin.start()
        plugin.call("Cleanup")
        plugin.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
