"""The Garden/GrootFS command-line contract: commands, flags, config file, outputs, errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import GRAFTFS, Graftfs, pip_script
from tests.integration.test_safety import store_state
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout, write_rootfs_tar


@pytest.fixture
def image(workdir: Path) -> str:
    return write_oci_layout(workdir / "layout", [busybox_layer()], env=["PATH=/bin"]).url()


def test_version_and_help() -> None:
    out = subprocess.run([*GRAFTFS, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("graftfs version ")
    out = subprocess.run([*GRAFTFS, "--help"], capture_output=True, text=True, check=True).stdout
    assert "init-store" in out and "create" in out


def test_pips_script_runs_graftfs_as_the_launcher_does(workdir: Path, image: str) -> None:
    """The suite runs the launcher (GRAFTFS); bin/graftfs, the script pip installs, with site, runs the same."""
    config = workdir / "config.yml"
    config.write_text(f"store: {workdir / 'store'}\nlog_level: info\ncreate:\n  without_mount: false\n")
    outputs = []
    for command in (pip_script(), GRAFTFS):
        run = [*command, "--config", str(config)]
        subprocess.run([*run, "init-store"], check=True, capture_output=True)
        created = subprocess.run([*run, "create", image, "x"], check=True, capture_output=True, text=True)
        assert os.path.ismount(workdir / "store" / "images" / "x" / "rootfs")
        deleted = subprocess.run([*run, "delete", "x"], check=True, capture_output=True, text=True)
        outputs.append((json.loads(created.stdout)["root"]["path"], deleted.stdout, len(deleted.stderr.splitlines())))
    assert outputs[0] == outputs[1]
    assert outputs[0][1] == "Image x deleted\n"


def test_unknown_flag_prints_usage_and_exits_1(gfs: Graftfs) -> None:
    result = gfs.run("create", "--no-such-flag", "x", "y", check=False)
    assert result.returncode == 1
    assert result.stdout.startswith("Incorrect Usage: flag provided but not defined: -no-such-flag")


def test_create_with_wrong_argument_count(gfs: Graftfs) -> None:
    assert gfs.fails("create", "only-one") == "invalid arguments - usage: create [options] <image> <id>"


def test_invalid_id_is_refused(gfs: Graftfs, image: str) -> None:
    assert gfs.fails("create", image, "a/b") == "id `a/b` contains invalid characters: `/`"
    assert "not a valid image id" in gfs.fails("create", image, "..")
    # A newline would split `list` and the one-line error: refused, and shown escaped.
    assert gfs.fails("create", image, "a\nb") == "id `a\\nb` contains invalid characters: `\\n`"
    assert gfs.fails("create", image, "tab\there\x1b") == "id `tab\\there\\x1b` contains invalid characters: `\\t\\x1b`"
    assert gfs.run("list").stdout == "Store empty\n"
    assert os.listdir(gfs.store / "locks") == []


def test_unknown_scheme_is_a_clear_error_not_a_crash(gfs: Graftfs) -> None:
    before = store_state(gfs)
    line = gfs.fails("create", "http://example.com/x.tar", "x")
    assert line.startswith("unsupported image URL scheme `http`")
    assert store_state(gfs) == before


def test_missing_sources(gfs: Graftfs, workdir: Path) -> None:
    assert gfs.fails("create", f"oci://{workdir}/nothing", "x") == "Image source doesn't exist"
    assert "no such file or directory" in gfs.fails("create", str(workdir / "missing.tar"), "x")
    assert gfs.fails("create", str(workdir), "x") == "invalid base image: directory provided instead of a tar file"


def test_existing_id_is_refused_and_the_image_survives(gfs: Graftfs, image: str) -> None:
    gfs.create(image, "dup")
    before = store_state(gfs)
    assert gfs.fails("create", image, "dup") == "image for id `dup` already exists"
    assert store_state(gfs) == before
    assert (gfs.rootfs("dup") / "bin" / "busybox").exists()
    gfs.run("delete", "dup")


def test_create_needs_an_initialized_store(workdir: Path, image: str) -> None:
    g = Graftfs(workdir / "nostore")
    assert g.fails("create", image, "x") == "Store path is not initialized. Please run init-store."
    assert not (workdir / "nostore").exists()


def test_delete_is_idempotent_and_unknown_ids_exit_0(gfs: Graftfs, image: str) -> None:
    gfs.create(image, "gone")
    assert gfs.run("delete", "gone").stdout == "Image gone deleted\n"
    assert gfs.run("delete", "gone").stdout == "Image `gone` not found. Skipping delete.\n"
    result = gfs.run("delete", "/elsewhere/images/x")
    assert result.stdout == "path `/elsewhere/images/x` is outside store path Skipping delete.\n"
    assert gfs.fails("delete") == "id was not specified"
    nostore = Graftfs(gfs.store.parent / "never-initialized")
    assert nostore.run("delete", "x").stdout == "Image `x` not found. Skipping delete.\n"
    assert not nostore.store.exists()


def test_delete_by_path(gfs: Graftfs, image: str) -> None:
    gfs.create(image, "bypath")
    assert gfs.run("delete", str(gfs.store / "images" / "bypath")).stdout == "Image bypath deleted\n"


def test_list(gfs: Graftfs, image: str) -> None:
    assert gfs.run("list").stdout == "Store empty\n"
    gfs.create(image, "one")
    gfs.create(image, "two")
    listed = gfs.run("list").stdout.splitlines()
    assert sorted(listed) == [str(gfs.store / "images" / "one"), str(gfs.store / "images" / "two")]
    gfs.run("delete", "one")
    gfs.run("delete", "two")
    missing = Graftfs(gfs.store.parent / "missing")
    assert missing.fails("list") == f"no store found at {missing.store}"


def test_stats_of_unknown_image(gfs: Graftfs) -> None:
    assert gfs.fails("stats", "nope") == "Image `nope` not found."


def test_capacity_reports_the_configured_size(gfs: Graftfs, workdir: Path) -> None:
    assert gfs.run("capacity").stdout == '{"capacity":0}\n'
    config = workdir / "config.yml"
    config.write_text("init:\n  store_size_bytes: 123456\n")
    assert gfs.run("--config", str(config), "capacity").stdout == '{"capacity":123456}\n'


def test_generate_volume_size_metadata_rewrites_the_sizes_and_keeps_the_parents(gfs: Graftfs, image: str) -> None:
    gfs.create(image, "sized", "--without-mount")
    [volume] = gfs.volumes()
    record = gfs.store / "meta" / f"volume-{volume}"
    written = json.loads(record.read_text())
    assert written["Size"] > 0
    record.write_text(json.dumps({**written, "Size": 0}))
    gfs.run("generate-volume-size-metadata")
    assert json.loads(record.read_text()) == written
    gfs.run("delete", "sized")


def test_config_file_keys_and_precedence(workdir: Path, image: str) -> None:
    config = workdir / "config.yml"
    store = workdir / "from-config"
    config.write_text(f"store: {store}\ncreate:\n  without_mount: true\n")
    run = [*GRAFTFS, "--config", str(config)]
    subprocess.run([*run, "init-store"], check=True)
    assert store.is_dir()
    out = subprocess.run([*run, "create", image, "cfg"], capture_output=True, text=True, check=True).stdout
    assert "mounts" in json.loads(out)  # create.without_mount from the file
    flagged = subprocess.run(
        [*run, "create", "--with-mount", image, "cfg2"], capture_output=True, text=True, check=True
    )
    assert "mounts" not in json.loads(flagged.stdout)  # the flag wins
    subprocess.run([*run, "delete", "cfg"], check=True, capture_output=True)
    subprocess.run([*run, "delete", "cfg2"], check=True, capture_output=True)


def test_config_written_with_every_key_zero_valued_parses(workdir: Path) -> None:
    # What GrootFS's own tests and garden-runc-release's thresholder write: yaml.Marshal(config.Config{}).
    config = workdir / "zero.yml"
    config.write_text(
        'store: ""\ntardis_bin: ""\nnewuidmap_bin: ""\nnewgidmap_bin: ""\nmetron_endpoint: ""\nlog_level: ""\n'
        'log_file: ""\ncreate:\n  exclude_image_from_quota: false\n  skip_layer_validation: false\n'
        '  with_clean: false\n  clean_log_file: ""\n  without_mount: false\n  disk_limit_size_bytes: 0\n'
        '  insecure_registries: []\n  remote_layer_client_certificates_path: ""\nclean:\n  threshold_bytes: 0\n'
        'init:\n  store_size_bytes: 0\n  owneruser: ""\n  ownergroup: ""\n  with_direct_io: false\n'
    )
    out = subprocess.run(
        [*GRAFTFS, "--config", str(config), "--store", str(workdir / "s"), "capacity"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == '{"capacity":0}\n'


def test_bad_config(workdir: Path) -> None:
    g = Graftfs(workdir / "s")
    assert g.fails("--config", str(workdir / "nope.yml"), "list").startswith("invalid config path: ")
    bad = workdir / "bad.yml"
    bad.write_text("store: [unclosed\n")
    assert g.fails("--config", str(bad), "list").startswith("invalid config file: ")


def test_negative_values_are_refused(gfs: Graftfs, image: str) -> None:
    assert gfs.fails("create", "--disk-limit-size-bytes", "-1", image, "x") == (
        "invalid argument: disk limit cannot be negative"
    )
    assert gfs.fails("create", "--with-clean", "--without-clean", image, "x") == (
        "with-clean and without-clean cannot be used together"
    )


def test_logs_are_json_lines_on_stderr_and_never_on_stdout(gfs: Graftfs, image: str, workdir: Path) -> None:
    result = gfs.run("--log-level", "debug", "create", "--password", "hunter2", image, "logged")
    json.loads(result.stdout)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"timestamp", "level", "source", "message", "data"} <= set(line) for line in lines)
    assert "hunter2" not in result.stderr
    quiet = gfs.run("delete", "logged")
    assert quiet.stderr == ""
    log_file = workdir / "graftfs.log"
    gfs.run("--log-file", str(log_file), "create", image, "filelog")
    assert any(json.loads(line)["level"] == "info" for line in log_file.read_text().splitlines())
    gfs.run("delete", "filelog")


def test_the_log_file_has_grootfs_lines_for_create_delete_and_clean(gfs: Graftfs, image: str, workdir: Path) -> None:
    """Operators' queries, alerts and dashboards for GrootFS find graftfs's lines: source, names, levels."""
    log_file = workdir / "garden-image-plugin.log"
    logged = ("--log-file", str(log_file))  # with a log file the level is at least info, as GrootFS
    gfs.run(*logged, "create", image, "logged")
    gfs.run(*logged, "delete", "logged")
    gfs.run(*logged, "delete", "never-created")  # Garden asks both of its stores: this one logs no delete
    gfs.run(*logged, "clean")
    gfs.run(*logged, "list")
    gfs.run(*logged, "--log-level", "debug", "init-store")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {line["source"] for line in lines} == {"grootfs"}
    assert all(line["message"].startswith("grootfs.") for line in lines)
    info = [line["message"] for line in lines if line["level"] == "info"]
    for command, session in (("create", "groot-creating"), ("delete", "groot-deleting"), ("clean", "groot-cleaning")):
        assert info.count(f"grootfs.{command}.{session}.starting") == 1, info
        assert info.count(f"grootfs.{command}.{session}.ending") == 1, info
    assert "grootfs.create.groot-creating.making-image.ending" in info
    assert "grootfs.delete.groot-deleting.deleting-image.ending" in info
    assert "grootfs.list.groot-listing.ending" in info
    debug = [line["message"] for line in lines if line["level"] == "debug"]
    assert "grootfs.delete.id-not-found-skipping" not in debug  # info level then: not written
    assert "grootfs.init-store.store-manager-init-store.store-already-initialized" in debug
    creating = [line["data"] for line in lines if line["message"].startswith("grootfs.create.groot-creating.")]
    assert {d["imageID"] for d in creating} == {"logged"} and creating[0]["session"] == "1.1"
    # A failure is logged under GrootFS's name for it.
    gfs.run(*logged, "create", image, "twice")
    gfs.fails(*logged, "create", image, "twice")
    ended, failed = (json.loads(line) for line in log_file.read_text().splitlines()[-2:])
    assert (failed["level"], failed["message"]) == ("error", "grootfs.create.creating")
    assert failed["data"]["error"] == "image for id `twice` already exists"
    # And the session still ends, as GrootFS's deferred `ending` does.
    assert (ended["message"], ended["data"]["imageID"]) == ("grootfs.create.groot-creating.ending", "twice")
    gfs.run("delete", "twice")


def test_clean_keeps_layers_in_use_and_honours_the_threshold(gfs: Graftfs, workdir: Path) -> None:
    base = busybox_layer()
    a = write_oci_layout(workdir / "a", [base, TarBuilder().file("a", b"a").build()])
    b = write_oci_layout(workdir / "b", [base, TarBuilder().file("b", b"b").build()])
    gfs.create(a.url(), "a")
    gfs.create(b.url(), "b")
    gfs.run("delete", "b")
    assert len(gfs.volumes()) == 3
    assert gfs.run("clean", "--threshold-bytes", str(1 << 40)).stdout == "threshold not reached: skipping clean\n"
    assert len(gfs.volumes()) == 3
    assert gfs.run("clean", "--threshold-bytes", "1").stdout == "clean completed\n"
    assert gfs.volumes() == {c.partition(":")[2] for c in a.chain_ids}
    assert (gfs.rootfs("a") / "a").read_bytes() == b"a"
    assert gfs.run("clean").stdout == "clean completed\n"
    assert len(gfs.volumes()) == 2
    gfs.run("delete", "a")
    gfs.run("clean")
    assert gfs.volumes() == set()
    assert os.listdir(gfs.store / "l") == []
    assert sorted(os.listdir(gfs.store / "meta")) == ["dependencies", "features.json", "namespace.json", "released"]
    assert os.listdir(gfs.store / "meta" / "released") == []


def test_clean_without_a_store_is_not_an_error(workdir: Path) -> None:
    g = Graftfs(workdir / "missing")
    result = g.run("clean")
    assert result.stdout == f"no store found at {g.store}\n"
    assert result.stderr == f"no store found at {g.store}"


def test_init_store_records_mappings_and_refuses_different_ones(workdir: Path) -> None:
    g = Graftfs(workdir / "mapped")
    g.run(
        "init-store",
        "--uid-mapping",
        "0:4294967294:1",
        "--uid-mapping",
        "1:1:4294967293",
        "--gid-mapping",
        "0:4294967294:1,1:1:4294967293",
    )
    doc = json.loads((g.store / "meta" / "namespace.json").read_text())
    assert doc == {
        "uid-mappings": ["0:4294967294:1", "1:1:4294967293"],
        "gid-mappings": ["0:4294967294:1", "1:1:4294967293"],
    }
    assert os.stat(g.store).st_uid == 4294967294 and (os.stat(g.store).st_mode & 0o777) == 0o700
    g.run(
        "init-store",
        "--uid-mapping",
        "1:1:4294967293,0:4294967294:1",
        "--gid-mapping",
        "0:4294967294:1",
        "--gid-mapping",
        "1:1:4294967293",
    )
    assert g.fails("init-store", "--uid-mapping", "0:1000:1") == (
        "provided UID mappings do not match those already configured in the store"
    )


def test_delete_store_unmounts_and_removes_everything(gfs: Graftfs, image: str, workdir: Path) -> None:
    gfs.create(image, "x")
    gfs.create(image, "y")
    gfs.run("delete-store")
    assert not gfs.store.exists()
    gfs.run("delete-store")  # absent store: fine


def test_with_clean_spawns_a_clean(gfs: Graftfs, workdir: Path) -> None:
    old = write_rootfs_tar(workdir / "old.tar", busybox_layer())
    gfs.create(str(old), "old")
    gfs.run("delete", "old")
    assert len(gfs.volumes()) == 1
    new = write_oci_layout(workdir / "new", [TarBuilder().file("f", b"f").build()])
    gfs.create(new.url(), "new", "--with-clean")
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(gfs.volumes()) != 1:
        time.sleep(0.05)
    assert gfs.volumes() == {c.partition(":")[2] for c in new.chain_ids}
    gfs.run("delete", "new")


def _create_on_a_terminal(gfs: Graftfs, url: str, image_id: str, *flags: str) -> tuple[str, str]:
    """Run create with stderr on a pseudo-terminal; returns (stdout, what the terminal showed)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [*GRAFTFS, "--store", str(gfs.store), *flags, "create", url, image_id],
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            shown += chunk
        stdout = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, (stdout, shown)
    finally:
        os.close(master)
    return stdout, shown.decode()


def test_a_terminal_shows_pull_progress_on_stderr_only(gfs: Graftfs, workdir: Path) -> None:
    top = TarBuilder().file("data", os.urandom(1 << 20)).build()
    info = write_oci_layout(workdir / "img", [busybox_layer(), top])
    stdout, shown = _create_on_a_terminal(gfs, info.url(), "tty")
    json.loads(stdout)  # stdout is still exactly the runtime spec
    assert "\rpulling layers: 2/2 done, " in shown, shown
    assert shown.endswith("\r\n")  # the terminal's newline: the status line is finished, not left open
    gfs.run("delete", "tty")
    # A cached image has nothing to pull: nothing is shown. Neither when log lines go to the terminal.
    assert _create_on_a_terminal(gfs, info.url(), "tty")[1] == ""
    gfs.run("delete", "tty")
    gfs.run("clean")
    shown = _create_on_a_terminal(gfs, info.url(), "tty", "--log-level", "info")[1]
    assert '"built":2' in shown and "pulling layers" not in shown, shown
    gfs.run("delete", "tty")


def test_features_are_probed_once_and_reported(gfs: Graftfs, workdir: Path) -> None:
    record = gfs.store / "meta" / "features.json"
    doc = json.loads(record.read_text())
    assert doc["xattrs"] == "trusted" and doc["overlay"] == "kernel" and doc["ids"] == "all"
    report = gfs.run("features").stdout
    assert report.startswith(f"store            {gfs.store} (")
    assert "running as       root in the initial user namespace" in report
    assert "capabilities     all that graftfs uses" in report, report
    assert doc["caps_missing"] == [] and doc["fuse"] == ""  # fuse-overlayfs is not tried where overlayfs works
    # Creates use the record: one that says overlay cannot be mounted makes create refuse to mount...
    record.write_text(json.dumps({**doc, "overlay": "none"}))
    info = write_oci_layout(workdir / "img", [busybox_layer()])
    out = gfs.fails("create", info.url(), "x")
    assert out.startswith(f"this caller cannot mount overlayfs on {gfs.store}"), out
    # ... and a damaged record is probed again.
    record.write_text("{not json")
    gfs.create(info.url(), "x")
    assert json.loads(record.read_text()) == doc
    gfs.run("delete", "x")


def test_clean_can_keep_layers_used_recently(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "img", [busybox_layer(), TarBuilder().file("f", b"f").build()])
    gfs.create(info.url(), "a")
    gfs.run("delete", "a")
    volumes = gfs.volumes()
    assert len(volumes) == 2
    # Deleted a moment ago: an hour's window keeps its layers, and so does a second's, for now.
    assert gfs.run("clean", "--keep-used-within-seconds", "3600").stdout == "clean completed\n"
    assert gfs.volumes() == volumes
    config = workdir / "keep.yml"
    config.write_text("clean:\n  keep_used_within_seconds: 1\n")
    gfs.run("--config", str(config), "clean")
    assert gfs.volumes() == volumes
    time.sleep(1.2)
    gfs.run("--config", str(config), "clean")
    assert gfs.volumes() == set()
    assert os.listdir(gfs.store / "meta" / "released") == []
    # Without the policy (GrootFS's clean), unused layers go at once.
    gfs.create(info.url(), "b")
    gfs.run("delete", "b")
    gfs.run("clean")
    assert gfs.volumes() == set()


#: bin/graftfs, reporting on stderr the graftfs modules the import system asked the bundle for and those
#: loaded by the end.
_PROBE = """
import json, os, sys
import graftfs
asked = []
find_spec = graftfs._Bundle.find_spec
def asking(self, name, path=None, target=None):
    asked.append(name)
    return find_spec(self, name, path, target)
graftfs._Bundle.find_spec = asking
exit = os._exit
def report(code):
    loaded = [name for name in sys.modules if name.startswith("graftfs")]
    sys.stderr.write("PROBE " + json.dumps([[a for a in asked if a.startswith("graftfs")], loaded]) + "\\n")
    exit(code)
os._exit = report
graftfs._command()
"""


def test_a_warm_create_and_a_delete_preload_what_they_import(workdir: Path, image: str) -> None:
    """graftfs._HOT_* name what Garden's calls import: loaded from the bundle before the command runs, none of
    them through the import system."""
    import shutil

    import graftfs

    root = workdir / "pkg"
    shutil.copytree(Path(graftfs.__file__).parent, root / "graftfs", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(root)}
    config = workdir / "config.yml"
    config.write_text(f"store: {workdir / 'store'}\nlog_level: info\n")

    def probe(*args: str) -> tuple[set[str], set[str]]:
        argv = [sys.executable, "-c", _PROBE, *args]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        asked, loaded = json.loads(result.stderr.rpartition("PROBE ")[2])
        return set(asked), set(loaded)

    probe("--config", str(config), "init-store")
    try:
        probe("--config", str(config), "create", image, "cold")  # pulls, and writes the bundle
        asked, loaded = probe("--config", str(config), "create", image, "warm")
        assert (asked, loaded) == (set(), {"graftfs", *graftfs._HOT_DELETE, *graftfs._HOT_CREATE})
        asked, loaded = probe("--config", str(config), "delete", "warm")
        assert (asked, loaded) == (set(), {"graftfs", *graftfs._HOT_DELETE})
        asked, loaded = probe("--store", str(workdir / "store"), "delete", "cold")
        assert (asked, loaded) == (set(), {"graftfs", *graftfs._HOT_DELETE} - {"graftfs.cli.miniyaml"})
    finally:
        for image_id in ("cold", "warm"):
            subprocess.run([*GRAFTFS, "--config", str(config), "delete", image_id], check=True, capture_output=True)
