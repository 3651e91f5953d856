"""Log lines as GrootFS's lager writes them (issue 10): operators' queries match source and message names."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given
from hypothesis import strategies as st

from graftfs.log import LEVELS, Logger, plain_json


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_source_message_and_session_ids_are_lagers() -> None:
    out = io.StringIO()
    command = Logger(LEVELS["debug"], out).session("create")
    creating = command.session("groot-creating", imageID="img")
    creating.info("starting")
    creating.session("making-image", id="img").info("ending")
    command.error("creating", "boom")
    Logger(LEVELS["debug"], out).session("delete").session("groot-deleting").info("ending")
    lines = _lines(out)
    assert [list(line) for line in lines] == [["timestamp", "level", "source", "message", "data"]] * 4
    assert [(line["source"], line["level"], line["message"], line["data"]) for line in lines] == [
        ("grootfs", "info", "grootfs.create.groot-creating.starting", {"imageID": "img", "session": "1.1"}),
        (
            "grootfs",
            "info",
            "grootfs.create.groot-creating.making-image.ending",
            {"id": "img", "imageID": "img", "session": "1.1.1"},
        ),
        ("grootfs", "error", "grootfs.create.creating", {"error": "boom", "session": "1"}),
        ("grootfs", "info", "grootfs.delete.groot-deleting.ending", {"session": "1.1"}),
    ]


def test_sibling_sessions_are_numbered_in_turn_even_across_threads() -> None:
    out = io.StringIO()
    command = Logger(LEVELS["info"], out).session("create")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: command.session("build-layer").info("starting"), range(40)))
    sessions = sorted(int(str(line["data"]["session"]).split(".")[1]) for line in _lines(out))  # type: ignore[index]
    assert sessions == list(range(1, 41))


def test_data_keys_are_sorted_and_secrets_redacted() -> None:
    out = io.StringIO()
    Logger(LEVELS["info"], out).info("x", zeta=1, alpha=2, password="hunter2")
    line = out.getvalue()
    assert '"data":{"alpha":2,"password":"<redacted>","zeta":1}' in line
    assert "hunter2" not in line
    assert json.loads(line)["message"] == "grootfs.x"


def test_os_errors_are_logged_in_go_words() -> None:
    out = io.StringIO()
    Logger(LEVELS["error"], out).error("failed", FileNotFoundError(2, "No such file or directory", "/s/x"))
    assert _lines(out)[0]["data"] == {"error": "/s/x: no such file or directory"}


def test_below_the_level_nothing_is_written() -> None:
    out = io.StringIO()
    log = Logger(LEVELS["info"], out).session("init-store")
    log.debug("store-already-initialized")
    assert out.getvalue() == ""


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_VALUES = st.recursive(
    _SCALARS | st.lists(_SCALARS, max_size=3),
    lambda inner: st.dictionaries(st.text() | st.integers(), inner, max_size=4),
    max_leaves=12,
)


@given(_VALUES)
def test_plain_json_is_json_dumps_or_declines(value: object) -> None:
    """Log lines skip ``_json`` when they can: then byte for byte what ``json.dumps`` writes."""
    text = plain_json(value)
    if text is not None:
        assert text == json.dumps(value, separators=(",", ":"))


def test_a_delete_s_log_lines_need_no_json_module() -> None:
    line = {
        "timestamp": "2026-11-29T15:00:00.000000000Z",
        "level": "info",
        "source": "grootfs",
        "message": "grootfs.delete.groot-deleting.ending",
        "data": {"imageID": "my-container", "session": "1.1", "storePath": "/var/lib/graftfs", "seconds": 0.25},
    }
    assert plain_json(line) == json.dumps(line, separators=(",", ":"))
    assert plain_json({"error": 'a "quoted" path'}) is None  # escapes: jsonc's
