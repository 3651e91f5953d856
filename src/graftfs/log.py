"""Structured logs in the lager format GrootFS and Garden use.

Garden re-logs an image plugin's stderr line by line through lager's ``chug`` parser, so each line is one
JSON object: ``{"timestamp","level","source","message","data"}``. Logs are quiet by default (level
``fatal``), never go to stdout (stdout carries the result document), and never contain secrets: values of
keys that look like credentials are replaced before anything is serialised.

Lines are GrootFS's, so operators' log queries, alerts and dashboards keep working: source ``grootfs``, and
messages ``grootfs.<command>.<session>...<action>`` with GrootFS's session and action names for the events
GrootFS logs (``grootfs.create.groot-creating.starting``); events only graftfs has keep graftfs's action
names under the same source and sessions. As lager does, each session adds a ``session`` ID to its data
(``1``, then ``1.1`` for the first session inside it), and data keys are written sorted, as Go writes a map.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

LEVELS = {"debug": 0, "info": 1, "error": 2, "fatal": 3}
#: lager's component name, which GrootFS sets to its own name: the ``source`` of every line and the first
#: part of every message.
SOURCE = "grootfs"
_SECRET_WORDS = ("password", "token", "secret", "authorization", "credential")


def parse_level(name: str) -> int:
    """GrootFS semantics: case-insensitive, anything unknown means fatal."""
    return LEVELS.get(name.strip().lower(), LEVELS["fatal"])


def _redact(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if any(word in key.lower() for word in _SECRET_WORDS):
            out[key] = "<redacted>"
        elif isinstance(value, dict):
            out[key] = _redact(value)
        else:
            out[key] = value
    return out


def _timestamp() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def plain_json(value: Any) -> str | None:
    """``value`` exactly as ``json.dumps(value, separators=(",", ":"))`` writes it, when it is made of what log
    lines usually are: dicts with string keys, strings of printable ASCII, ints, finite floats, booleans and
    None; else None, and ``jsonc`` writes it. ``jsonc`` needs CPython's ``_json``, a shared library whose load
    (~0.6 ms) is most of what logging costs a delete, which reads no JSON otherwise."""
    out: list[str] = []
    return "".join(out) if _plain(value, out) else None


def _plain(value: Any, out: list[str]) -> bool:
    kind = value.__class__
    if kind is str:
        if not (value.isascii() and value.isprintable()) or '"' in value or "\\" in value:
            return False  # escapes: jsonc's
        out.append(f'"{value}"')
    elif kind is dict:
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            if key.__class__ is not str or not _plain(key, out):
                return False
            out.append(":")
            if not _plain(item, out):
                return False
        out.append("}")
    elif value is None or value is True or value is False:
        out.append("null" if value is None else "true" if value else "false")
    elif kind is int or (kind is float and value - value == 0):  # finite: NaN and infinities are jsonc's
        out.append(repr(value))
    else:
        return False
    return True


class Logger:
    """A lager-style logger: ``session()`` extends the dotted message prefix and carries data along."""

    def __init__(
        self,
        level: int = LEVELS["fatal"],
        stream: IO[str] | None = None,
        prefix: str = SOURCE,
        data: dict[str, Any] | None = None,
        session_id: str = "",
    ) -> None:
        self.level = level
        self._stream = stream
        self._prefix = prefix
        self._data = data or {}
        self._session_id = session_id
        # Numbers this logger's sessions, as lager does. A range iterator rather than itertools.count (an
        # import on every create and delete): next() on either is atomic, so layer builders on several
        # threads still get distinct IDs.
        self._sessions = iter(range(1, 1 << 62))

    @classmethod
    def open(cls, level_name: str, log_file: str) -> Logger:
        level = parse_level(level_name)
        if not log_file:
            return cls(level, sys.stderr)
        # GrootFS quirk kept on purpose: with a log file the effective level is at least info, so a
        # configured file is never silently empty.
        level = min(level, LEVELS["info"])
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return cls(level, os.fdopen(fd, "a", buffering=1))

    def session(self, name: str, **data: Any) -> Logger:
        number = next(self._sessions)
        session_id = f"{self._session_id}.{number}" if self._session_id else str(number)
        return Logger(self.level, self._stream, f"{self._prefix}.{name}", {**self._data, **data}, session_id)

    def enabled(self, level: str) -> bool:
        return self._stream is not None and LEVELS[level] >= self.level

    def _emit(self, level: str, action: str, data: dict[str, Any]) -> None:
        if not self.enabled(level):
            return
        merged = {**self._data, **data}
        if self._session_id:
            merged["session"] = self._session_id
        line = {
            "timestamp": _timestamp(),
            "level": level,
            "source": SOURCE,
            "message": f"{self._prefix}.{action}",
            "data": _redact(dict(sorted(merged.items()))),
        }
        assert self._stream is not None
        try:
            text = plain_json(line)
            if text is None:
                from . import jsonc  # not json, whose import of re costs more than a warm create's own work

                text = jsonc.dumps(line, default=str)
            self._stream.write(text + "\n")
            self._stream.flush()
        except OSError:
            pass  # a closed or full log sink must never fail the operation it describes

    def debug(self, action: str, **data: Any) -> None:
        self._emit("debug", action, data)

    def info(self, action: str, **data: Any) -> None:
        self._emit("info", action, data)

    def error(self, action: str, err: BaseException | str, **data: Any) -> None:
        self._emit("error", action, {**data, "error": error_text(err)})


def error_text(err: BaseException | str) -> str:
    """An error as one line in Go's words: an OS error reads ``<path>: no such file or directory``, not
    Python's ``[Errno 2] No such file or directory: '<path>'``."""
    if isinstance(err, OSError) and err.strerror:
        from .errors import os_reason  # loaded already by every command; not by a bare ``import graftfs.log``

        return (f"{err.filename}: " if err.filename else "") + os_reason(err)
    return str(err)


NULL = Logger()
