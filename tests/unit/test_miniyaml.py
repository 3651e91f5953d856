"""miniyaml reads what PyYAML reads, or declines: never a different value."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from graftfs.cli import miniyaml

GARDEN = """---
store: /var/vcap/data/grootfs/store/unprivileged
tardis_bin: /var/vcap/packages/grootfs/bin/tardis
newuidmap_bin: /var/vcap/packages/garden-idmapper/bin/newuidmap
log_level: info
metron_endpoint: 127.0.0.1:3457
create:
  json: true
  with_clean: false
  without_mount: true   # Garden mounts
  skip_layer_validation: true
  insecure_registries: []
  disk_limit_size_bytes: 0
  exclude_image_from_quota:
  uid_mappings: ["0:4294967294:1", "1:1:4294967293"]
clean:
  threshold_bytes: 0
init:
  store_size_bytes: 1073741824
  with_direct_io: false
"""


def same_as_pyyaml(text: str) -> None:
    ok, doc = miniyaml.load(text)
    if ok:
        assert doc == yaml.safe_load(text), text
        assert [type(v) for v in _leaves(doc)] == [type(v) for v in _leaves(yaml.safe_load(text))], text


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for k in value for leaf in [k, *_leaves(value[k])]]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_gardens_config_is_read_without_pyyaml() -> None:
    ok, doc = miniyaml.load(GARDEN)
    assert ok
    assert doc == yaml.safe_load(GARDEN)


@pytest.mark.parametrize(
    "text",
    [
        "a: 1.5",
        "a: 1:30",
        "a: 0777",
        "a: 0x1f",
        "a: 2001-12-14",
        "a: .inf",
        "a: 1e3",
        "a: +1.0",
        "a: &x 1\nb: *x",
        "a: !!str 1",
        "a: |\n  text",
        "a: 'it''s'",
        'a: "tab\\tthere"',
        "a: [x:y]",
        "a: {b: 1}",
        "yes: 1",
        "1: a",
        "a: b: c",
        "a:\n  - - x",
        "a:\n  - b: 1",
        "a: 1\na: 2",
        "a:\n    b: 1\n  c: 2",
        "- a",
        "a: @x",
        "a: é",
    ],
)
def test_anything_outside_the_subset_is_declined(text: str) -> None:
    assert miniyaml.load(text) == (False, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "---\na: 1\n",
        "a:\n",
        "a: ~\nb: null\nc: Null",
        "a: yes\nb: No\nc: ON\nd: off\ne: True",
        "a: -5\nb: 0\nc: 42",
        "a: '#not a comment' # a comment",
        "a: x#y",
        "a:\n- one\n- 'two'\nb: 3",
        "a:\n  b:\n    c: [1, two, 'three']\n  d: {}",
        "a: []\nb: [ ]",
        "a: 127.0.0.1:5000",
        "a: docker.io/library/busybox@sha256",
        "a: -flag",
    ],
)
def test_the_subset_reads_as_pyyaml_reads_it(text: str) -> None:
    ok, _ = miniyaml.load(text)
    assert ok, text
    same_as_pyyaml(text)


_words = st.sampled_from(
    ["yes", "No", "ON", "off", "true", "FALSE", "null", "~", "0", "7", "-3", "012", "1.5", "1:2", "0x1",
     "2001-01-01", ".5", "+1", "-", "a", "x_y", "/var/x", "127.0.0.1:5000", "a:b", "@a", "%a", ",a", "a,b",
     "é", "'q'", '"d"', "'a b'", '"#x"', "[]", "{}", "[a, 1]", "[ 'x' ,y]", "[a:b]", ""]
)  # fmt: skip
_keys = st.sampled_from(["store", "log_level", "a", "b_c", "x-y", "yes", "1", "k"])


@st.composite
def documents(draw: st.DrawFn, depth: int = 0) -> str:
    lines = []
    indent = " " * (depth * draw(st.sampled_from([2, 4])))
    for key in draw(st.lists(_keys, min_size=1, max_size=4)):
        kind = draw(st.sampled_from(["scalar", "empty", "list", "map"] if depth < 2 else ["scalar", "empty"]))
        comment = draw(st.sampled_from(["", " # c", "  #c"]))
        if kind == "scalar":
            lines.append(f"{indent}{key}: {draw(_words)}{comment}")
        elif kind == "empty":
            lines.append(f"{indent}{key}:{comment}")
        elif kind == "list":
            lines.append(f"{indent}{key}:")
            dash = indent + draw(st.sampled_from(["", "  "]))
            lines += [f"{dash}- {w}" for w in draw(st.lists(_words, min_size=1, max_size=3))]
        else:
            lines.append(f"{indent}{key}:")
            lines.append(draw(documents(depth + 1)))
    return "\n".join(lines)


@settings(max_examples=1500, deadline=None)
@given(documents())
def test_generated_documents_read_as_pyyaml_reads_them_or_are_declined(text: str) -> None:
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        assert miniyaml.load(text) == (False, None), text
        return
    ok, doc = miniyaml.load(text)
    if ok:
        assert doc == expected, text
        assert [type(v) for v in _leaves(doc)] == [type(v) for v in _leaves(expected)], text
