"""What the CLI prints (graftfs.cli.main.go_json, runtime_spec): JSON byte for byte as Go's encoding/json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from graftfs.api import Image
from graftfs.cli.main import go_json, runtime_spec

ROOTFS = "/var/vcap/data/grootfs/store/unprivileged/images/handle/rootfs"


def image(env: list[str] | None = None, mount: dict[str, Any] | None = None) -> Image:
    return Image(
        id="handle", path=ROOTFS.rsplit("/", 1)[0], rootfs=ROOTFS, env=env or [], mount=mount, config={}, layers_built=0
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "<b>&c"}, '{"a":"\\u003cb\\u003e\\u0026c"}'),
        ({"<key>": 1}, '{"\\u003ckey\\u003e":1}'),
        ("line\u2028sep\u2029", '"line\\u2028sep\\u2029"'),
        ({"q": 'say "hi"\\'}, '{"q":"say \\"hi\\"\\\\"}'),
        ({"n": "tab\tnl\ncr\r"}, '{"n":"tab\\tnl\\ncr\\r"}'),
        ({"ctl": "\x01\x1f"}, '{"ctl":"\\u0001\\u001f"}'),
        ({"utf8": "héllo ✓"}, '{"utf8":"héllo ✓"}'),
        ({"empty": [], "none": None, "t": True, "n": 0}, '{"empty":[],"none":null,"t":true,"n":0}'),
        ({"big": 18446744073709551615}, '{"big":18446744073709551615}'),
    ],
)
def test_go_json_escapes_like_go(value: Any, expected: str) -> None:
    assert go_json(value) == expected
    assert json.loads(go_json(value)) == value


def test_go_json_is_compact_and_keeps_key_order() -> None:
    assert go_json({"z": 1, "a": {"y": 2, "b": 3}}) == '{"z":1,"a":{"y":2,"b":3}}'


def test_runtime_spec_exact_bytes() -> None:
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
    assert runtime_spec(image(env)) == (
        '{"ociVersion":"","process":{"user":{"uid":0,"gid":0},'
        '"env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],'
        f'"cwd":""}},"root":{{"path":"{ROOTFS}"}}}}'
    )


def test_runtime_spec_omits_env_when_empty() -> None:
    assert runtime_spec(image([])) == (
        f'{{"ociVersion":"","process":{{"user":{{"uid":0,"gid":0}},"cwd":""}},"root":{{"path":"{ROOTFS}"}}}}'
    )


def test_runtime_spec_escapes_html_characters_in_env() -> None:
    spec = runtime_spec(image(["GREETING=<hello & bye>"]))
    assert '"env":["GREETING=\\u003chello \\u0026 bye\\u003e"]' in spec


def test_runtime_spec_puts_mounts_after_root_without_mount() -> None:
    mount = {
        "destination": "/",
        "type": "overlay",
        "source": "overlay",
        "options": ["lowerdir=/s/l/B:/s/l/A,upperdir=/s/images/handle/diff,workdir=/s/images/handle/workdir"],
    }
    spec = runtime_spec(image(["A=1"], mount))
    assert spec == (
        '{"ociVersion":"","process":{"user":{"uid":0,"gid":0},"env":["A=1"],"cwd":""},'
        f'"root":{{"path":"{ROOTFS}"}},'
        '"mounts":[{"destination":"/","type":"overlay","source":"overlay",'
        '"options":["lowerdir=/s/l/B:/s/l/A,upperdir=/s/images/handle/diff,workdir=/s/images/handle/workdir"]}]}'
    )
    doc = json.loads(spec)
    assert list(doc) == ["ociVersion", "process", "root", "mounts"]


def test_runtime_spec_is_one_line_of_json_garden_can_parse() -> None:
    spec = runtime_spec(image(["X=a\nb"]))
    assert "\n" not in spec
    doc = json.loads(spec)
    assert doc["process"]["env"] == ["X=a\nb"]
    assert doc["root"]["path"] == ROOTFS
