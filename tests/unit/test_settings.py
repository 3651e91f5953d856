"""graftfs.cli.settings: the table of settings, the GrootFS YAML file, the precedence flag > file > default,
and the checks a command makes, with GrootFS's texts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graftfs.api import CreateOptions
from graftfs.cli import main
from graftfs.cli.settings import DEFAULT_STORE, TABLE, Setting, Settings, create_options, resolve
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


def test_windows_line_ends_read_as_newlines(tmp_path: Path) -> None:
    path = tmp_path / "crlf.yml"
    path.write_bytes(GARDEN.replace("\n", "\r\n").encode())
    assert load(str(path)) == Settings(**{**vars(load(write(tmp_path, GARDEN))), "config": str(path)})


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


# -- every setting of the table: flag > file > default ---------------------------------------------------------


def _yaml(key: str, value: object) -> str:
    """A config file setting ``key`` (``section.name`` or ``name``) to ``value``, in JSON's flow style."""
    section, _, name = key.rpartition(".")
    line = f"{name}: {json.dumps(value)}\n"
    return f"{section}:\n  {line}" if section else line


# A file value and a flag value, both different from the default, for each kind.
FILE_VALUE: dict[str, object] = {"str": "/from/file", "int": 7, "bool": True, "list": ["file:1"]}
FLAG_VALUE: dict[str, object] = {"str": "/from/flag", "int": 9, "bool": True, "list": ["flag:1"]}


def _file_value(setting: Setting) -> object:
    return setting.choices[-1] if setting.choices else FILE_VALUE[setting.kind]


KEYED = [s for s in TABLE if s.key]
FLAGGED = [s for s in TABLE if s.flag and s.name != "config"]  # --config names the file: see below


def test_every_setting_has_a_flag_or_a_key_and_is_typed_as_its_default() -> None:
    annotations = {"str": "str", "int": "int", "bool": "bool", "list": "list[str]"}
    assert [s.name for s in TABLE] == list(Settings.__annotations__)
    for setting in TABLE:
        assert setting.flag or setting.key, setting
        assert Settings.__annotations__[setting.name] == annotations[setting.kind], setting
        assert setting.empty_flag in ("value", "unset", "default"), setting
        assert not setting.off_flag or setting.kind == "bool", setting


def test_defaults_are_the_defaults() -> None:
    assert resolve({}) == Settings()
    assert Settings().store == DEFAULT_STORE
    with pytest.raises(TypeError, match="unknown setting 'nope'"):
        Settings(nope=1)


@pytest.mark.parametrize("setting", KEYED, ids=lambda s: s.name)
def test_the_file_beats_the_default(tmp_path: Path, setting: Setting) -> None:
    value = _file_value(setting)
    assert value != setting.default
    cfg = load(write(tmp_path, _yaml(setting.key, value)))
    assert getattr(cfg, setting.name) == value


@pytest.mark.parametrize("empty", ['""', ""], ids=["empty-string", "no-value"])
@pytest.mark.parametrize("setting", KEYED, ids=lambda s: s.name)
def test_an_empty_value_in_the_file_is_the_default(tmp_path: Path, setting: Setting, empty: str) -> None:
    section, _, name = setting.key.rpartition(".")
    text = f"{section}:\n  {name}: {empty}\n" if section else f"{name}: {empty}\n"
    assert getattr(load(write(tmp_path, text)), setting.name) == setting.default


@pytest.mark.parametrize("setting", FLAGGED, ids=lambda s: s.name)
def test_a_flag_beats_the_file_and_the_default(tmp_path: Path, setting: Setting) -> None:
    flag = FLAG_VALUE[setting.kind]
    assert flag != setting.default
    assert getattr(resolve({setting.flag: flag}), setting.name) == flag
    if setting.key:
        file = write(tmp_path, _yaml(setting.key, False if setting.kind == "bool" else _file_value(setting)))
        assert getattr(resolve({"config": file, setting.flag: flag}), setting.name) == flag


@pytest.mark.parametrize("setting", [s for s in TABLE if s.off_flag], ids=lambda s: s.name)
def test_an_off_flag_beats_the_file(tmp_path: Path, setting: Setting) -> None:
    file = write(tmp_path, _yaml(setting.key, True))
    assert getattr(resolve({"config": file}), setting.name) is True
    assert getattr(resolve({"config": file, setting.off_flag: True}), setting.name) is False
    # --with-clean=false / --with-mount=false say nothing.
    assert getattr(resolve({"config": file, setting.off_flag: False}), setting.name) is True


def test_without_mount_wins_over_with_mount() -> None:
    assert resolve({"with-mount": True, "without-mount": True}).without_mount is True


@pytest.mark.parametrize("setting", [s for s in FLAGGED if s.kind == "bool"], ids=lambda s: s.name)
def test_a_false_boolean_flag_leaves_the_file_value(tmp_path: Path, setting: Setting) -> None:
    file = write(tmp_path, _yaml(setting.key, True)) if setting.key else ""
    assert getattr(resolve({"config": file, setting.flag: False}), setting.name) is bool(file)


def test_empty_flags_per_setting(tmp_path: Path) -> None:
    text = (
        "store: /file/store\nlog_level: info\nlog_file: /file/log\nmetron_endpoint: 1.2.3.4:5\n"
        "metrics_textfile: /file/prom\nnewuidmap_bin: /file/newuidmap\n"
        "create:\n  clean_log_file: /file/clean.log\n  insecure_registries: [file:1]\n"
        "clean:\n  threshold_bytes: 7\n"
    )
    empty = {s.flag: [] if s.kind == "list" else "" for s in FLAGGED if s.kind in ("str", "list")}
    cfg = resolve({"config": write(tmp_path, text), **empty, "threshold-bytes": 0})
    # --store "" and --log-level "" are the defaults, not the file's values.
    assert (cfg.store, cfg.log_level) == (DEFAULT_STORE, "fatal")
    # Empty --log-file, --metron-endpoint, --metrics-textfile, --clean-log-file, --insecure-registry: the file's.
    assert (cfg.log_file, cfg.metron_endpoint, cfg.metrics_textfile) == ("/file/log", "1.2.3.4:5", "/file/prom")
    assert (cfg.clean_log_file, cfg.insecure_registries) == ("/file/clean.log", ["file:1"])
    # Any other string flag given empty is empty; an int flag of 0 is 0.
    assert (cfg.newuidmap_bin, cfg.threshold_bytes) == ("", 0)


def test_the_config_flag_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "store: /file/store\n")
    assert resolve({"config": path}) == Settings(config=path, store="/file/store")
    assert resolve({"config": ""}) == Settings()


def test_the_defaults_are_not_shared_between_runs() -> None:
    first = resolve({})
    first.insecure_registries.append("x")
    assert resolve({}).insecure_registries == [] == Settings().insecure_registries


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("create:\n  disk_limit_size_bytes: lots\n", "`disk_limit_size_bytes` must be an integer"),
        ("create:\n  disk_limit_size_bytes: true\n", "`disk_limit_size_bytes` must be an integer"),
        ("create:\n  with_clean: 1\n", "`with_clean` must be true or false"),
        ("create:\n  insecure_registries: registry:5000\n", "`insecure_registries` must be a list"),
        (
            "create:\n  unenforceable_disk_limit: maybe\n",
            "`unenforceable_disk_limit` must be warn or refuse, not `maybe`",
        ),
        ("clean:\n  keep_used_within_seconds: 1.5\n", "`keep_used_within_seconds` must be an integer"),
        ("init:\n  with_direct_io: maybe\n", "`with_direct_io` must be true or false"),
        ("create: [1]\n", "`create` must be a mapping"),
        ("clean: 5\n", "`clean` must be a mapping"),
        ("7\n", "expected a mapping at the top level"),
        # The first error in the file's order of sections (create, clean, init) is the one reported.
        ("init: 5\nclean:\n  threshold_bytes: x\ncreate:\n  with_clean: 2\n", "`with_clean` must be true or false"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        load(write(tmp_path, text))
    assert str(err.value) == f"invalid config file: {error}"


def test_non_strings_are_read_as_text_and_lists_of_nothing_as_empty(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "log_file: 5\ncreate:\n  insecure_registries: 0\n  clean_log_file: true\n"))
    assert (cfg.log_file, cfg.insecure_registries, cfg.clean_log_file) == ("5", [], "True")


# -- the API's options ------------------------------------------------------------------------------------------


def test_create_options_carry_every_create_setting() -> None:
    cfg = Settings(
        without_mount=True,
        skip_layer_validation=True,
        disk_limit_size_bytes=5,
        exclude_image_from_quota=True,
        insecure_registries=["r:5000"],
        username="u",
        password="p",
        remote_layer_client_certificates_path="/certs",
        unenforceable_disk_limit="refuse",
        ephemeral=True,
    )
    progress = object()
    options = create_options(cfg, progress)  # type: ignore[arg-type]
    default = CreateOptions()
    assert [n for n in CreateOptions.__slots__ if getattr(options, n) == getattr(default, n)] == []
    assert (options.mount, options.insecure_registries, options.progress) == (False, ("r:5000",), progress)
    assert (options.disk_limit_bytes, options.remote_layer_certificates) == (5, "/certs")
    assert create_options(Settings()).__repr__() == default.__repr__()


# -- the commands' checks, through the command line: GrootFS's texts, in GrootFS's order -----------------------


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # run() points it into the store
    store = str(tmp_path / "nostore")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main.run(["--store", store, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


NEGATIVE_DISK = "invalid argument: disk limit cannot be negative"
NEGATIVE_THRESHOLD = "invalid argument: clean threshold cannot be negative"
NEGATIVE_KEEP = "invalid argument: keep-used-within-seconds cannot be negative"
BOTH_CLEAN = "with-clean and without-clean cannot be used together"
CREATE_USAGE = "invalid arguments - usage: create [options] <image> <id>"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["create", "--disk-limit-size-bytes", "-1", "img", "id"], NEGATIVE_DISK),
        (["create", "--threshold-bytes", "-1", "img", "id"], NEGATIVE_THRESHOLD),
        (["create", "--with-clean", "--without-clean", "img", "id"], BOTH_CLEAN),
        (["clean", "--threshold-bytes", "-1"], NEGATIVE_THRESHOLD),  # before the store is looked for, as GrootFS
        (["clean", "--keep-used-within-seconds", "-1"], NEGATIVE_KEEP),
        # The argument count first, then the flags' checks, in the table's order.
        (["create", "--disk-limit-size-bytes", "-1", "img"], CREATE_USAGE),
        (["create", "--disk-limit-size-bytes=-1", "--with-clean", "--without-clean", "img", "id"], BOTH_CLEAN),
        (["create", "--threshold-bytes=-1", "--disk-limit-size-bytes=-1", "img", "id"], NEGATIVE_DISK),
        (["clean", "--keep-used-within-seconds=-1", "--threshold-bytes=-1"], NEGATIVE_THRESHOLD),
        (["init-store", "extra"], "invalid arguments - usage: init-store [options]"),
        (["stats"], "invalid arguments - usage: stats [options] <id|image path>"),
        (["features", "x"], "invalid arguments - usage: features"),
        (["generate-volume-size-metadata", "x"], "invalid arguments - usage: generate-volume-size-metadata"),
        (["delete"], "id was not specified"),
    ],
)
def test_refused_with_grootfs_texts(cli: Callable[..., tuple[int, str, str]], argv: list[str], error: str) -> None:
    assert cli(*argv)[:2] == (1, error + "\n")


def test_checks_are_logged_as_grootfs_logs_them(cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = cli("--log-level", "error", "create", "--disk-limit-size-bytes", "-1", "img", "id")
    assert (code, out) == (1, NEGATIVE_DISK + "\n")
    line = json.loads(err)
    assert (line["message"], line["data"]["error"]) == ("grootfs.create.config-builder-failed", NEGATIVE_DISK)


def test_file_values_are_checked_by_the_commands_that_use_them(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    config = write(tmp_path, "create:\n  disk_limit_size_bytes: -1\nclean:\n  threshold_bytes: -1\n")
    assert cli("--config", config, "create", "img", "id")[:2] == (1, NEGATIVE_DISK + "\n")
    assert cli("--config", config, "clean")[:2] == (1, NEGATIVE_THRESHOLD + "\n")
    # A command without those flags does not look at them (Garden's delete, stats and capacity carry on).
    assert cli("--config", config, "capacity")[:2] == (0, '{"capacity":0}\n')
    assert cli("--config", config, "delete", "x") == (0, "Image `x` not found. Skipping delete.\n", "")
    # A flag that is fine wins over the file's value before the check.
    assert cli("--config", config, "clean", "--threshold-bytes", "0")[:2] == (
        0,
        f"no store found at {tmp_path}/nostore\n",
    )


def test_file_errors_come_before_argument_errors(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    config = write(tmp_path, "create:\n  with_clean: maybe\n")
    assert cli("--config", config, "create", "only-one") == (
        1,
        "invalid config file: `with_clean` must be true or false\n",
        "",
    )
