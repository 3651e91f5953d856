"""graftfs without root: an ordinary user's store, and graftfs inside an unprivileged user namespace.

A test account is made for these tests (tests/support/users.py) with a range of subordinate IDs. As that
user, graftfs enters a user namespace mapped with ``newuidmap``, unpacks there, and hands the overlay to
rootless runc (``--without-mount``). Inside ``unshare --user --map-root-user --mount``, graftfs is root of
a namespace that maps one ID: it mounts the overlay itself (``userxattr``) and a nested runc uses it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import mounts_under
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.runc import make_config, run_in_rootfs, runc_binary
from tests.support.users import SUBID_COUNT, Account, chown_tree, graftfs_for_others, make_account

pytestmark = pytest.mark.skipif(
    not (shutil.which("newuidmap") and shutil.which("setpriv") and runc_binary()),
    reason="needs uidmap, util-linux's setpriv and runc",
)


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    with make_account() as acc:
        yield acc


@pytest.fixture
def home(account: Account) -> Iterator[Path]:
    """A directory of the account's own, with an image in it (``img``); checked for mounts after."""
    base = Path(tempfile.mkdtemp(prefix="graftfs-rootless-"))
    try:
        base.chmod(0o755)
        top = (
            TarBuilder()
            .dir("var/www", uid=33, gid=33)
            .file("var/www/index.html", b"hello\n", uid=33, gid=33)
            .file("etc/motd", b"rootless\n")
        )
        write_oci_layout(base / "img", [busybox_layer(), top.build()], tag="1")
        chown_tree(base, account.uid, account.gid)
        yield base
    finally:
        left = mounts_under(base)
        for point in reversed(left):
            subprocess.run(["umount", "-l", point], check=False)
        # Files of the account's subordinate IDs: root removes them.
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"mounts left behind: {left}"


def test_an_ordinary_user_creates_runs_and_deletes(account: Account, home: Path) -> None:
    gfs = [*graftfs_for_others(), "--store", str(home / "store")]
    account.run(*gfs, "init-store")
    recorded = json.loads((home / "store/meta/namespace.json").read_text())
    assert recorded["uid-mappings"] == [f"0:{account.uid}:1", f"1:{account.subid}:{SUBID_COUNT}"]
    report = account.run(*gfs, "features").stdout
    assert "root in a user namespace" in report and "with userxattr" in report, report
    assert "kept as the layers say" in report, report

    url = f"oci://{home}/img:1"
    refused = account.run(*gfs, "create", url, "mounted", check=False)
    assert refused.returncode == 1
    assert refused.stdout.startswith("rootless: an overlay mounted by graftfs would exist only in its own user")
    spec = json.loads(account.run(*gfs, "create", "--without-mount", url, "app").stdout)
    mount = spec["mounts"][0]
    assert mount["destination"] == "/" and mount["options"][0].endswith(",userxattr")

    # On the host, the image's files belong to the account's IDs: its own for root, subordinate for 33.
    volumes = home / "store/volumes"
    owners = {
        (p.stat().st_uid, p.name) for v in volumes.iterdir() for p in v.rglob("*") if p.name in ("motd", "index.html")
    }
    assert owners == {(account.uid, "motd"), (account.subid + 32, "index.html")}

    rootfs = Path(spec["root"]["path"])
    script = "ls -ln / | grep -w etc; stat -c '%u:%g' /etc/motd /var/www/index.html; echo new > /tmp/new"
    out = run_in_rootfs(
        rootfs,
        ["/bin/sh", "-c", script],
        uid_mappings=account.mappings,
        gid_mappings=[(0, account.gid, 1), (1, account.subid, SUBID_COUNT)],
        extra_mounts=[mount],
        as_user=(account.uid, account.gid),
    ).stdout.splitlines()
    assert out[0].split()[2:4] == ["0", "0"] and out[1:] == ["0:0", "33:33"], out
    assert (home / "store/images/app/diff/tmp/new").stat().st_uid == account.uid

    stats = json.loads(account.run(*gfs, "stats", "app").stdout)
    assert stats["disk_usage"]["exclusive_bytes_used"] > 0
    assert account.run(*gfs, "list").stdout.strip() == str(home / "store/images/app")
    assert account.run(*gfs, "delete", "app").stdout == "Image app deleted\n"
    account.run(*gfs, "clean")
    assert not list((home / "store/images").iterdir()) and not list(volumes.iterdir())


def test_graftfs_inside_an_unprivileged_user_namespace_runs_a_nested_container(account: Account, home: Path) -> None:
    """``unshare -Urm`` as the account: graftfs is root of a namespace that maps one ID, on the host's
    filesystem. It finds what it may do, mounts the overlay itself, and runc runs a container in it."""
    store = home / "store"
    rootfs = store / "images/nested/rootfs"
    bundle, state = home / "bundle", home / "state"
    bundle.mkdir()
    config = make_config(
        rootfs,
        ["/bin/sh", "-c", "cat /etc/motd; stat -c '%u' /var/www/index.html; ls /dev/null"],
        uid_mappings=[(0, 0, 1)],
        gid_mappings=[(0, 0, 1)],
    )
    (bundle / "config.json").write_text(json.dumps(config))
    chown_tree(bundle, account.uid, account.gid)
    gfs = shlex.join([*graftfs_for_others(), "--store", str(store)])
    runc = shlex.join([str(runc_binary()), "--root", str(state)])
    script = f"""
set -e
{gfs} init-store
{gfs} features
{gfs} create oci://{home}/img:1 nested > /dev/null
echo ---
rc=0
{runc} run --bundle {bundle} nested-{os.getpid()} || rc=$?
{gfs} delete nested
{gfs} clean
exit $rc
"""
    result = account.run("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, check=False)
    assert result.returncode == 0, (result.stdout, result.stderr)
    report, _, container = result.stdout.partition("---\n")
    assert "root in a user namespace" in report and "with userxattr" in report, report
    # One ID is mapped: owners cannot be kept, and graftfs says so rather than failing.
    assert "only one ID is mapped here" in report, report
    assert container == "rootless\n0\n/dev/null\nImage nested deleted\nclean completed\n", result
    assert not list((store / "images").iterdir())


def test_the_id_mapping_helpers_are_the_ones_named(account: Account, home: Path) -> None:
    """``--newuidmap-bin``/``--newgidmap-bin``, else the config file's ``newuidmap_bin``/``newgidmap_bin``,
    name the helpers that map the namespace (Garden points them at its own copies). Each wrapper here
    records its arguments and execs the real helper."""

    def wrapper(name: str, real: str) -> Path:
        script = home / name
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {home / name}.calls\nexec {real} "$@"\n')
        script.chmod(0o755)
        os.chown(script, account.uid, account.gid)
        return script

    newuidmap, newgidmap = shutil.which("newuidmap"), shutil.which("newgidmap")
    assert newuidmap and newgidmap
    uid_flag, uid_file, gid_file = (
        wrapper("uid-flag", newuidmap),
        wrapper("uid-file", newuidmap),
        wrapper("gid-file", newgidmap),
    )
    config = home / "config.yml"
    config.write_text(f"newuidmap_bin: {uid_file}\nnewgidmap_bin: {gid_file}\n")
    os.chown(config, account.uid, account.gid)
    gfs = [*graftfs_for_others(), "--config", str(config), "--store", str(home / "store")]

    account.run(*gfs, "--newuidmap-bin", str(uid_flag), "init-store")
    # The flag wins over the file for UIDs; the file names the GID helper. Each ran once, on graftfs's PID.
    expected = f"0 {{}} 1 1 {account.subid} {SUBID_COUNT}"
    uid_calls = (home / "uid-flag.calls").read_text().splitlines()
    gid_calls = (home / "gid-file.calls").read_text().splitlines()
    assert [c.split(" ", 1)[1] for c in uid_calls] == [expected.format(account.uid)], uid_calls
    assert [c.split(" ", 1)[1] for c in gid_calls] == [expected.format(account.gid)], gid_calls
    assert not (home / "uid-file.calls").exists()

    # Without the flag, the file's helper maps the namespace of every later command.
    account.run(*gfs, "list")
    assert len((home / "uid-file.calls").read_text().splitlines()) == 1

    # A helper that is not there is named in the error.
    missing = home / "no-such-newuidmap"
    failed = account.run(*gfs, "--newuidmap-bin", str(missing), "list", check=False)
    assert failed.returncode == 1
    assert failed.stdout.startswith(
        f"rootless: cannot map the store's IDs in a user namespace: {missing}: no such file or directory"
    ), failed.stdout
