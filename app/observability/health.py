"""Readiness: can this process serve requests, i.e. reach its database and its broker?

Each check is bounded by ``readiness_timeout_s``, so a load balancer's probe gets an answer in
time even when a dependency hangs instead of refusing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import redis
from sqlalchemy import text

from app.config import Settings
from app.db import get_engine

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
# Shared and small: checks stuck on a hung dependency hold these threads until their own
# timeouts fire, and later probes time out waiting instead of piling up threads.
_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nepenthe-readiness")


def check_database(settings: Settings) -> str:  # noqa: ARG001 - every check takes the settings
    with get_engine(read_only=True).connect() as conn:
        conn.execute(text("SELECT 1"))
    return OK


def check_broker(settings: Settings) -> str:
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        timeout = settings.readiness_timeout_s
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return OK
    if url.startswith("filesystem://"):
        _check_writable_folder(settings.broker_dir)
        return OK
    return SKIPPED  # a broker this service does not document: nothing to test it with


def _check_writable_folder(folder: Path) -> None:
    """The folder is writable, or absent under a writable one: the first send creates it."""
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{existing} is not writable")


CHECKS: dict[str, Callable[[Settings], str]] = {"database": check_database, "broker": check_broker}


def readiness(settings: Settings) -> dict[str, str]:
    """Every check's outcome (``ok``, ``failed`` or ``skipped``), run side by side."""
    futures = {name: _EXECUTOR.submit(check, settings) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=settings.readiness_timeout_s)
    return {name: _outcome(name, future) for name, future in futures.items()}


def _outcome(name: str, future: Future[str]) -> str:
    if not future.done():
        future.cancel()  # still waiting for a thread: never start it
        log.warning("readiness: the %s check timed out", name)
        return FAILED
    exc = future.exception()
    if exc is not None:
        log.warning("readiness: the %s check failed: %r", name, exc)
        return FAILED
    return future.result()
