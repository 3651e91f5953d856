"""graftfs.cli.settings: the table of settings, the GrootFS YAML file, the precedence flag > file > default,
and the checks a command makes, with GrootFS's texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from graftfs.cli.settings import DEFAULT_STORE, Settings, resolve
from graftfs.errors import InvalidArgument

# What GrootFS (and grr's thresholder) write with yaml.Marshal(config.Config{}): every key, zero values.
ZERO_VALUED = """\
store: ""
tardis_bin: ""
newuidmap_bin: ""
newgidmap_bin: ""
metron_endpoint: ""
log_level: ""
log_file: ""
log_timestamp_format: ""
create:
  exclude_image_from_quota: false
  skip_layer_validation: false
  with_clean: false
  clean_log_file: ""
  without_mount: false
  disk_limit_size_bytes: 0
  insecure_registries: []
  remote_layer_client_certificates_path: ""
clean:
  threshold_bytes: 0
init:
  store_size_bytes: 0
  owneruser: ""
  ownergroup: ""
  with_direct_io: false
"""

# What garden-runc-release's grootfs_config.yml.erb renders (plus the thresholder's additions).
GARDEN = """\
---
store: /var/vcap/data/grootfs/store/unprivileged
tardis_bin: /var/vcap/packages/grootfs/bin/tardis
newuidmap_bin: /var/vcap/packages/garden-idmapper/bin/newuidmap
newgidmap_bin: /var/vcap/packages/garden-idmapper/bin/newgidmap
log_level: info
metron_endpoint: 127.0.0.1:3457
create:
  with_clean: true
  without_mount: false
  skip_layer_validation: true
  insecure_registries:
  - registry.internal:5000
  - 10.0.0.5
  clean_log_file: /var/vcap/sys/log/garden/grootfs.clean.log
  remote_layer_client_certificates_path: /var/vcap/jobs/garden/certs
  disk_limit_size_bytes: 1073741824
  exclude_image_from_quota: true
clean:
  threshold_bytes: 16106127360
  ignore_images: [docker:///busybox]
init:
  store_size_bytes: 53687091200
  with_direct_io: true
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def load(path: str) -> Settings:
    """The settings with this config file and no flags."""
    return resolve({"config": path})


def test_no_config_gives_grootfs_defaults() -> None:
    cfg = load("")
    assert cfg == Settings()
    assert cfg.store == DEFAULT_STORE
    assert (cfg.log_level, cfg.newuidmap_bin, cfg.newgidmap_bin) == ("fatal", "newuidmap", "newgidmap")
    assert cfg.insecure_registries == []


def test_zero_valued_config_parses_and_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path, ZERO_VALUED)
    assert load(path) == Settings(config=path)


@pytest.mark.parametrize("text", ["", "---\n", "# only a comment\n", "create:\nclean:\ninit:\n", "{}\n"])
def test_empty_documents_and_sections(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load(path) == Settings(config=path)


def test_garden_config_is_read_whole(tmp_path: Path) -> None:
    path = write(tmp_path, GARDEN)
    cfg = load(path)
    assert cfg == Settings(
        config=path,
        store="/var/vcap/data/grootfs/store/unprivileged",
        log_level="info",
        log_file="",
        newuidmap_bin="/var/vcap/packages/garden-idmapper/bin/newuidmap",
        newgidmap_bin="/var/vcap/packages/garden-idmapper/bin/newgidmap",
        metron_endpoint="127.0.0.1:3457",
        exclude_image_from_quota=True,
        skip_layer_validation=True,
        with_clean=True,
        without_mount=False,
        disk_limit_size_bytes=1073741824,
        insecure_registries=["registry.internal:5000", "10.0.0.5"],
        clean_log_file="/var/vcap/sys/log/garden/grootfs.clean.log",
        remote_layer_client_certificates_path="/var/vcap/jobs/garden/certs",
        threshold_bytes=16106127360,
        store_size_bytes=53687091200,
        with_direct_io=True,  # read (and checked), and ignored
    )


def test_yaml_1_1_booleans_as_yaml_v2_reads_them(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "create:\n  with_clean: yes\n  without_mount: on\n  skip_layer_validation: no\n"))
    assert (cfg.with_clean, cfg.without_mount, cfg.skip_layer_validation) == (True, True, False)


def test_missing_file_is_an_invalid_config_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(InvalidArgument) as err:
        load(str(missing))
    assert str(err.value) == f"invalid config path: open {missing}: no such file or directory"


def test_directory_is_an_invalid_config_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load(str(tmp_path))
    assert str(err.value) == f"invalid config path: read {tmp_path}: is a directory"


@pytest.mark.parametrize(
    "text",
    [
        "store: [unclosed\n",
        "create: {\n",
        "\tstore: tabs are not yaml\n",
        "- a list\n- at the top\n",
        "just a string\n",
        "create: 5\n",
        "create:\n  disk_limit_size_bytes: lots\n",
        "create:\n  with_clean: maybe\n",
        "create:\n  insecure_registries: registry:5000\n",
        "clean:\n  threshold_bytes: 1.5\n",
        "init:\n  store_size_bytes: true\n",
        "init:\n  with_direct_io: maybe\n",  # ignored, but as GrootFS, not when it is not a boolean
    ],
)
def test_malformed_yaml_is_an_invalid_config_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load(write(tmp_path, text))
    message = str(err.value)
    assert message.startswith("invalid config file: "), message
    assert "\n" not in message


# -- precedence (resolve): a flag that was given, else the file, else the default -----------------------------


def build(tmp_path: Path, text: str | None, **flags: Any) -> Any:
    given = {k.replace("_", "-"): v for k, v in flags.items()}
    if text is not None:
        given["config"] = write(tmp_path, text)
    return resolve(given)


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = build(
        tmp_path,
        GARDEN,
        store="/flag/store",
        tardis_bin="/flag/tardis",
        newuidmap_bin="/flag/newuidmap",
        newgidmap_bin="/flag/newgidmap",
        log_level="debug",
        log_file="/flag/log",
        metron_endpoint="127.0.0.1:9999",
    )
    assert cfg.store == "/flag/store"
    assert (cfg.newuidmap_bin, cfg.newgidmap_bin) == ("/flag/newuidmap", "/flag/newgidmap")
    assert (cfg.log_level, cfg.log_file, cfg.metron_endpoint) == ("debug", "/flag/log", "127.0.0.1:9999")
    # Keys without a global flag keep the file's value.
    assert cfg.threshold_bytes == 16106127360


def test_file_wins_over_defaults_when_no_flag_is_given(tmp_path: Path) -> None:
    cfg = build(tmp_path, GARDEN)
    assert cfg.store == "/var/vcap/data/grootfs/store/unprivileged"
    assert cfg.log_level == "info"
    assert cfg.metron_endpoint == "127.0.0.1:3457"


def test_empty_strings_in_the_file_leave_the_defaults(tmp_path: Path) -> None:
    cfg = build(tmp_path, ZERO_VALUED)
    assert cfg.store == DEFAULT_STORE
    assert (cfg.newuidmap_bin, cfg.newgidmap_bin) == ("newuidmap", "newgidmap")
    assert cfg.log_level == "fatal"


def test_empty_log_file_and_metron_flags_do_not_override_the_file(tmp_path: Path) -> None:
    text = "log_file: /file/log\nmetron_endpoint: 1.2.3.4:5\n"
    cfg = build(tmp_path, text, log_file="", metron_endpoint="")
    assert (cfg.log_file, cfg.metron_endpoint) == ("/file/log", "1.2.3.4:5")


def test_no_file_and_no_flags(tmp_path: Path) -> None:
    assert build(tmp_path, None) == Settings()


def test_bad_config_path_surfaces_through_resolve(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid config path: open .*: no such file or directory$"):
        resolve({"config": str(tmp_path / "missing.yml")})
