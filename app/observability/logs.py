"""Logging for the API and the worker: one stderr handler, text or JSON lines, with the ids of
the request or job being served.

The ids live in a context variable, so they follow the code that serves one request (async tasks
and the threads FastAPI runs sync routes in copy it) and never leak into another one.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TextIO

from app.config import Settings

_IDS: ContextVar[Mapping[str, str]] = ContextVar("nepenthe_log_ids", default=MappingProxyType({}))
# The keys of a JSON line; an id of the same name would overwrite them.
_RESERVED = frozenset({"time", "level", "logger", "message", "exc_info", "stack_info"})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Tag every log record made inside the block with ``ids`` (None values are left out).

    ``with log_context(job_id=job.id): ...``; blocks nest, an inner value wins until it ends.
    """
    token = bind_log_ids(**ids)
    try:
        yield
    finally:
        reset_log_ids(token)


def bind_log_ids(**ids: str | None) -> Token[Mapping[str, str]]:
    """Add ``ids`` to the current context until ``reset_log_ids(token)``; prefer log_context."""
    clash = _RESERVED.intersection(ids)
    if clash:
        raise ValueError(f"log ids may not be named {sorted(clash)}")
    merged = {**_IDS.get(), **{k: str(v) for k, v in ids.items() if v is not None}}
    return _IDS.set(MappingProxyType(merged))


def reset_log_ids(token: Token[Mapping[str, str]]) -> None:
    _IDS.reset(token)


def current_ids() -> Mapping[str, str]:
    """The ids that ``log_context`` blocks around the caller have set."""
    return _IDS.get()


class ContextFilter(logging.Filter):
    """Stamps each record with the current ids, at the time and in the context it was made."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "log_ids"):
            record.log_ids = dict(current_ids())
        return True


def _ids_of(record: logging.LogRecord) -> Mapping[str, str]:
    ids = getattr(record, "log_ids", None)
    return ids if isinstance(ids, Mapping) else current_ids()


class TextFormatter(logging.Formatter):
    """The classic one-line format, with ``key=value`` ids appended when there are any."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = _ids_of(record)
        if ids:
            line += " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, ids, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_ids_of(record),
        }
        if record.exc_info:
            # Cached on the record like logging.Formatter does, for the other handlers.
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes, not when it was created: test
    runners and daemonisers swap the stream, and a handler holding an old one fails to write."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        # Only StreamHandler.setStream assigns it; the stream is always the current stderr.
        pass


def configure_logging(settings: Settings) -> None:
    """Install the one root handler in ``settings.log_format`` at ``settings.log_level``.

    Called again (every ``create_app``), it replaces the handler it installed before instead of
    adding a second one; handlers that others installed (pytest's, a host's) stay.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    if settings.log_format == "json":
        # uvicorn gives its loggers handlers of their own that do not propagate: their startup
        # and access lines would be plain text in a JSON stream.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
