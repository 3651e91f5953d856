"""The layer repository's checks, layer verdicts and lower names (graftfs.repository.layers), without mounts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graftfs.cli.settings import TABLE, read_file
from graftfs.errors import FailedPrecondition, InvalidArgument
from graftfs.repository import layers
from graftfs.store.gc import REPOSITORY_TEMP_AGE, sweep_repository_temps
from graftfs.store.images import Images
from graftfs.store.layout import Layout

DIGEST = "sha256:" + "ab" * 32
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="files must be root's")


def _repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    layerfs = repo / ".layers" / "ab" / DIGEST[7:] / "layerfs"
    (layerfs / "etc").mkdir(parents=True)
    (layerfs / "etc" / "motd").write_text("hi\n")
    for path in [repo, *repo.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    tmp_path.chmod(0o755)
    return repo


def test_the_layout_is_ducc_s_keyed_by_the_manifest_digest() -> None:
    assert layers.layer_dir("/cvmfs/unpacked.cern.ch", DIGEST) == (
        f"/cvmfs/unpacked.cern.ch/.layers/ab/{DIGEST[7:]}/layerfs"
    )


def test_the_setting_is_one_row_with_a_flag_and_a_config_key(tmp_path: Path) -> None:
    (row,) = [s for s in TABLE if s.name == "layer_repository"]
    assert (row.flag, row.key, row.default) == ("layer-repository", "init.layer_repository", "")
    config = tmp_path / "config.yml"
    config.write_text("init:\n  layer_repository: /cvmfs/unpacked.cern.ch\n")
    assert read_file(str(config))["layer_repository"] == "/cvmfs/unpacked.cern.ch"


def test_check_refuses_relative_missing_and_unlaid_out_repositories(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="must be an absolute path"):
        layers.check("repo")
    with pytest.raises(FailedPrecondition, match="no such file or directory"):
        layers.check(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FailedPrecondition, match=r"has no \.layers directory: not mounted"):
        layers.check(str(tmp_path / "empty"))


@root_only
def test_check_accepts_a_root_only_tree_and_refuses_one_others_can_write(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    assert layers.check(str(repo)) == str(repo)
    (repo / ".layers").chmod(0o775)
    expected = r"writable by users other than root \(.*/\.layers: owner 0, mode 0775"
    with pytest.raises(FailedPrecondition, match=expected):
        layers.check(str(repo))
    (repo / ".layers").chmod(0o755)
    os.chown(tmp_path, 1000, 1000)  # a directory above, a user's: they could swap the repository
    with pytest.raises(FailedPrecondition, match="writable by users other than root"):
        layers.check(str(repo))
    os.chown(tmp_path, 0, 0)
    tmp_path.chmod(0o1777)  # sticky, like /tmp, holding root's directory: fine
    assert layers.check(str(repo)) == str(repo)


@root_only
def test_a_layer_s_verdict(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    layerfs = Path(layers.layer_dir(str(repo), DIGEST))
    assert layers.scan(str(layerfs)) == layers.USABLE
    (layerfs / ".cvmfscatalog").write_bytes(b"")
    assert layers.scan(str(layerfs)) == "hide"
    (layerfs / "etc" / ".wh.motd").write_bytes(b"")
    assert layers.scan(str(layerfs)) == "shim,hide"
    (layerfs / ".cvmfscatalog").unlink()
    (layerfs / "etc" / ".wh.motd").unlink()
    (layerfs / "etc" / ".wh..wh..opq").write_bytes(b"")
    assert layers.scan(str(layerfs)) == "shim"
    (layerfs / "etc" / ".wh..wh..opq").unlink()
    (layerfs / "etc").chmod(0o777)  # on a writable filesystem, a directory anyone can write
    assert layers.scan(str(layerfs)) == "writable:etc"


@root_only
def test_a_shim_deletes_below_and_hides_the_markers_above(tmp_path: Path) -> None:
    layerfs = tmp_path / "layerfs"
    (layerfs / "etc" / "deep").mkdir(parents=True)
    (layerfs / "opt" / "dir").mkdir(parents=True)
    (layerfs / "etc" / ".wh.old.conf").write_bytes(b"")
    (layerfs / "etc" / "deep" / ".wh.gone").write_bytes(b"")
    (layerfs / "opt" / "dir" / ".wh..wh..opq").write_bytes(b"")
    (layerfs / "opt" / "dir" / "c").write_bytes(b"c")
    (layerfs / ".wh.top").write_bytes(b"")
    os.chown(layerfs / "etc", 33, 34)
    (layerfs / "etc").chmod(0o750)
    os.utime(layerfs / "etc", ns=(1, 1_000_000_000))
    assert layers.markers(str(layerfs)) == [
        ".wh.top",
        "etc/.wh.old.conf",
        "etc/deep/.wh.gone",
        "opt/dir/.wh..wh..opq",
    ]
    shim = tmp_path / "shim"
    shim.mkdir()
    layers.build_shim(str(layerfs), str(shim), lambda u: u + 1000, lambda g: g + 2000, "trusted")

    def whiteout(path: Path) -> bool:
        st = os.lstat(path)
        return (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0

    for marker in layers.markers(str(layerfs)):
        assert whiteout(shim / "above" / marker)
    assert whiteout(shim / "below" / "etc/old.conf") and whiteout(shim / "below" / "etc/deep/gone")
    assert whiteout(shim / "below" / "top")
    assert os.getxattr(shim / "below" / "opt/dir", "trusted.overlay.opaque") == b"y"
    assert not (shim / "below" / "opt/dir/c").exists()
    st = os.lstat(shim / "above" / "etc")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_mtime_ns) == (1033, 2034, 0o750, 1_000_000_000)


@root_only
def test_verdicts_are_kept_per_digest_and_links_made_once(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    layout = Layout(str(tmp_path / "store"))
    os.makedirs(layout.repository_links)
    repository = layers.Repository(layout, str(repo))
    path = repository.find(DIGEST)
    assert path == layers.layer_dir(str(repo), DIGEST)
    assert repository.find("sha256:" + "cd" * 32) is None
    assert repository.find("/srv/rootfs.tar") is None  # a tarball's layer has no digest
    assert repository.verdict(DIGEST, path) == layers.USABLE
    (Path(path) / "etc" / ".wh.motd").write_bytes(b"")
    assert repository.verdict(DIGEST, path) == layers.USABLE  # kept: the repository's layers never change
    (Path(path) / "etc" / ".wh.motd").unlink()
    assert repository.link(DIGEST, path) == "r/" + DIGEST[7:19]
    assert os.readlink(os.path.join(layout.repository_links, DIGEST[7:19])) == path
    assert repository.link(DIGEST, path) == "r/" + DIGEST[7:19]
    # A layer others can write fails the create, and is looked at again next time (once fixed, it is used).
    other = "sha256:" + "ab" + "cd" * 31
    layerfs = Path(layers.layer_dir(str(repo), other))
    layerfs.mkdir(parents=True, mode=0o755)
    layerfs.parent.chmod(0o755)
    (layerfs / "tmp").mkdir(mode=0o1777)
    (layerfs / "tmp").chmod(0o1777)
    with pytest.raises(FailedPrecondition, match="layerfs/tmp is writable by users other than root"):
        repository.verdict(other, str(layerfs))
    (layerfs / "tmp").chmod(0o755)
    assert repository.verdict(other, str(layerfs)) == layers.USABLE


def test_lowers_of_an_image_with_layers_in_place() -> None:
    images = Images(Layout("/s"))
    ids = ["1" * 64, "2" * 64, "3" * 64]
    in_place = {1: ("r/222222222222", "/repo/.layers/22/2/layerfs", "")}
    spec = images.overlay("img", ids, in_place=in_place, hide="r/.hide")
    assert spec.cwd == "/s"
    assert spec.lowers == ("r/.hide", "l/333333333333", "r/222222222222", "l/111111111111")
    # With mappings: the repository's layer bound idmapped, the store's (shifted) named from the binds' dir.
    spec = images.overlay("img", ids, idmap=("0 1 1\n", "0 1 1\n"), in_place=in_place, unshifted_volumes=False)
    assert spec.cwd == "/s/images/img/lowers"
    assert spec.lowers == ("../../../l/333333333333", "1", "../../../l/111111111111")
    assert spec.sources == ("", "/repo/.layers/22/2/layerfs", "")
    # Shared (unshifted) layers: every layer bound.
    spec = images.overlay("img", ids, idmap=("0 1 1\n", "0 1 1\n"), in_place=in_place)
    assert spec.lowers == ("2", "1", "0")
    assert spec.sources == ("/s/volumes/" + "1" * 64, "/repo/.layers/22/2/layerfs", "/s/volumes/" + "3" * 64)
    # A layer with whiteouts, between its shim's lowers.
    shimmed = {1: ("r/222222222222", "/repo/.layers/22/2/layerfs", "r/222222222222.shim")}
    spec = images.overlay("img", ids, in_place=shimmed)
    assert spec.lowers[1:4] == ("r/222222222222.shim/above", "r/222222222222", "r/222222222222.shim/below")
    spec = images.overlay("img", ids, idmap=("0 1 1\n", "0 1 1\n"), in_place=shimmed, unshifted_volumes=False)
    assert spec.lowers[1:4] == ("../../../r/222222222222.shim/above", "1", "../../../r/222222222222.shim/below")


def test_clean_sweeps_old_temporary_names_of_the_store_s_caches_only(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    os.makedirs(layout.repository_links)
    os.makedirs(layout.repository_verdicts)
    old = os.path.join(layout.repository_links, "abc-tmp-1-2")
    os.symlink("/repo/x", old)
    new = os.path.join(layout.repository_verdicts, "abc-tmp-3-4")
    Path(new).write_text("")
    kept = os.path.join(layout.repository_links, "abcdef012345")
    os.symlink("/repo/y", kept)
    stamp = os.path.getmtime(tmp_path) - REPOSITORY_TEMP_AGE - 10
    os.utime(old, (stamp, stamp), follow_symlinks=False)
    os.utime(kept, (stamp, stamp), follow_symlinks=False)
    failures: list[str] = []
    assert sweep_repository_temps(layout, failures) == ["abc-tmp-1-2"]
    assert failures == []
    assert os.path.lexists(kept) and os.path.exists(new)
