"""graftfs.cli.main.parse_flags: Go ``flag`` / urfave/cli semantics, which Garden's argv relies on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from graftfs.cli.main import COMMANDS, GLOBAL_FLAGS, UsageError, parse_flags
from graftfs.cli.settings import Flag

CREATE = COMMANDS["create"].flags
INIT = COMMANDS["init-store"].flags


def create(*args: str) -> tuple[dict[str, Any], list[str]]:
    return parse_flags(list(args), CREATE)


def glob(*args: str) -> tuple[dict[str, Any], list[str]]:
    return parse_flags(list(args), GLOBAL_FLAGS)


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "/s"],
        ["--store=/s"],
        ["-store", "/s"],
        ["-store=/s"],
    ],
)
def test_value_flag_spellings(argv: list[str]) -> None:
    assert glob(*argv, "list") == ({"store": "/s"}, ["list"])


def test_value_may_start_with_a_dash_or_contain_equals() -> None:
    assert glob("--log-file", "-weird-name", "list") == ({"log-file": "-weird-name"}, ["list"])
    assert glob("--config=/a=b.yml") == ({"config": "/a=b.yml"}, [])
    assert glob("--store=") == ({"store": ""}, [])


def test_repeated_scalar_flag_last_one_wins() -> None:
    assert glob("--store", "/a", "--store", "/b") == ({"store": "/b"}, [])


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["--with-clean"], True),
        (["-with-clean"], True),
        (["--with-clean=true"], True),
        (["--with-clean=false"], False),
        (["--with-clean=1"], True),
        (["--with-clean=0"], False),
    ],
)
def test_bool_flags(argv: list[str], value: bool) -> None:
    assert create(*argv) == ({"with-clean": value}, [])


def test_bool_flag_never_takes_the_next_argument() -> None:
    assert create("--with-clean", "false", "id") == ({"with-clean": True}, ["false", "id"])


def test_invalid_bool_value() -> None:
    with pytest.raises(UsageError, match='invalid boolean value "maybe" for -with-clean'):
        create("--with-clean=maybe")


def test_bool_values_go_accepts() -> None:
    assert create("--with-clean=t", "--without-clean=F") == ({"with-clean": True, "without-clean": False}, [])


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        (["--disk-limit-size-bytes", "1048576"], 1048576),
        (["--disk-limit-size-bytes=0"], 0),
        (["--disk-limit-size-bytes", "-1"], -1),  # the next argument is the value, dash or not
        (["-threshold-bytes=9223372036854775807"], 9223372036854775807),
    ],
)
def test_int_flags(argv: list[str], value: int) -> None:
    flags, args = create(*argv, "img", "id")
    assert list(flags.values()) == [value]
    assert args == ["img", "id"]


def test_invalid_int_value() -> None:
    with pytest.raises(UsageError) as err:
        create("--disk-limit-size-bytes", "lots")
    assert str(err.value) == 'invalid value "lots" for flag -disk-limit-size-bytes: parse error'


def test_list_flags_are_repeatable_and_split_on_commas() -> None:
    flags, args = create("--insecure-registry", "a:5000", "--insecure-registry=b,c:443", "-insecure-registry", "d", "x")
    assert flags == {"insecure-registry": ["a:5000", "b", "c:443", "d"]}
    assert args == ["x"]


def test_mapping_lists_as_grr_passes_them() -> None:
    flags, args = parse_flags(
        [
            "--uid-mapping",
            "0:4294967294:1",
            "--uid-mapping",
            "1:1:4294967293",
            "--gid-mapping",
            "0:4294967294:1,1:1:4294967293",
        ],
        INIT,
    )
    assert flags == {
        "uid-mapping": ["0:4294967294:1", "1:1:4294967293"],
        "gid-mapping": ["0:4294967294:1", "1:1:4294967293"],
    }
    assert args == []


def test_parsing_stops_at_the_first_positional_argument() -> None:
    flags, args = create("--with-clean", "docker:///busybox", "handle", "--without-mount")
    assert flags == {"with-clean": True}
    assert args == ["docker:///busybox", "handle", "--without-mount"]


def test_double_dash_ends_flags_and_is_consumed() -> None:
    assert create("--with-clean", "--", "--not-a-flag", "id") == ({"with-clean": True}, ["--not-a-flag", "id"])
    assert create("--", "--") == ({}, ["--"])


def test_single_dash_is_a_positional_argument() -> None:
    assert create("-", "id") == ({}, ["-", "id"])


def test_global_flags_stop_at_the_command_name() -> None:
    flags, rest = glob(
        "--config", "/c.yml", "--store", "/s", "--log-level", "debug", "create", "--with-clean", "i", "h"
    )
    assert flags == {"config": "/c.yml", "store": "/s", "log-level": "debug"}
    assert rest == ["create", "--with-clean", "i", "h"]
    sub, args = parse_flags(rest[1:], COMMANDS[rest[0]].flags)
    assert (sub, args) == ({"with-clean": True}, ["i", "h"])


def test_garden_create_argv() -> None:
    # guardian's DefaultCommandCreator: ExtraArgs (global flags) first, then the command and its flags.
    argv = ["--config", "/var/vcap/jobs/garden/config/grootfs_config.yml", "create"]
    argv += ["--disk-limit-size-bytes", "10485760", "--exclude-image-from-quota", "--username", "u", "--password", "p"]
    argv += ["docker:///busybox:1.26.1", "container-handle"]
    flags, rest = glob(*argv)
    assert flags == {"config": "/var/vcap/jobs/garden/config/grootfs_config.yml"}
    sub, args = parse_flags(rest[1:], COMMANDS["create"].flags)
    assert sub == {
        "disk-limit-size-bytes": 10485760,
        "exclude-image-from-quota": True,
        "username": "u",
        "password": "p",
    }
    assert args == ["docker:///busybox:1.26.1", "container-handle"]


def test_removed_log_timestamp_format_is_still_accepted() -> None:
    assert glob("--log-timestamp-format", "rfc3339", "list") == ({"log-timestamp-format": "rfc3339"}, ["list"])


@pytest.mark.parametrize("argv", [["--nope"], ["-nope"], ["--nope=1"], ["--with-clean", "--nope", "x"]])
def test_unknown_flag_is_an_error(argv: list[str]) -> None:
    with pytest.raises(UsageError) as err:
        create(*argv)
    assert str(err.value) == "flag provided but not defined: -nope"


def test_global_flag_after_the_command_is_unknown_to_the_command() -> None:
    with pytest.raises(UsageError, match="flag provided but not defined: -store"):
        create("--store", "/s", "img", "id")


def test_value_flag_without_a_value() -> None:
    with pytest.raises(UsageError) as err:
        glob("--store")
    assert str(err.value) == "flag needs an argument: -store"


def test_help_and_version_short_forms() -> None:
    assert glob("-h") == ({"help": True}, [])
    assert glob("--help") == ({"help": True}, [])
    assert glob("-v") == ({"version": True}, [])
    assert glob("--version") == ({"version": True}, [])
    assert create("-h") == ({"help": True}, [])


def test_commands_accept_long_help() -> None:
    assert create("--help") == ({"help": True}, [])


def test_custom_flag_table() -> None:
    table: Sequence[Flag] = [Flag("n", "int"), Flag("s", "list"), Flag("b", "bool"), Flag("t", "str")]
    assert parse_flags(["-n=3", "-s", "x,,y", "-b", "-t", "v", "rest"], table) == (
        {"n": 3, "s": ["x", "y"], "b": True, "t": "v"},
        ["rest"],
    )
    assert parse_flags([], table) == ({}, [])
