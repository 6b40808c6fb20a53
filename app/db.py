"""Engine, sessions and the declarative base."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(
    url: str, *, read_only: bool = False, pool_size: int = 5, max_overflow: int = 10
) -> Engine:
    """An engine; on SQLite, ``read_only`` engines begin without taking the write lock."""
    pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            pool = {}  # an in-memory database lives in one connection (SingletonThreadPool)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **pool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_read if read_only else _sqlite_begin_write)
        return engine
    # A database that does not answer (not only one that refuses) must fail fast: requests then
    # get 503 in seconds instead of holding a thread for the operating system's TCP timeout.
    engine = create_engine(url, pool_timeout=10, connect_args={"connect_timeout": 5}, **pool)
    _ping_after_idle(engine)
    return engine


# A connection back in use within this many seconds was just working; one idle longer is pinged
# before use, so a restarted database costs no request an error. (pool_pre_ping pings on every
# checkout: a round trip per unit of work, a fifth of a status poll's.)
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    def stamp(_dbapi_conn: Any, record: Any, *_: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool throws this connection away and checks out another (SQLAlchemy's
            # documented pessimistic-disconnect recipe).
            raise DisconnectionError(f"a pooled connection failed its ping: {exc!r}") from exc

    event.listen(engine, "connect", stamp)
    event.listen(engine, "checkin", stamp)
    event.listen(engine, "checkout", ping_if_idle)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The sqlite3 driver opens transactions lazily, only before a write, so a SAVEPOINT taken
    # first would be released as a real COMMIT. Take control: no implicit BEGIN (here), an
    # explicit one per transaction (_sqlite_begin_write / _sqlite_begin_read). SQLAlchemy's
    # documented pysqlite recipe.
    dbapi_conn.isolation_level = None
    # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_write(conn: Any) -> None:
    # A unit of work that may write takes the write lock up front (waiting up to busy_timeout):
    # a deferred transaction that read first would fail at once with SQLITE_BUSY when another
    # process wrote in between. Such units keep slow work (file checks, hashing) outside.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_read(conn: Any) -> None:
    # Readers take no lock: in WAL mode they read a snapshot while a writer works.
    conn.exec_driver_sql("BEGIN")


_ENGINES: dict[bool, Engine] = {}


def get_engine(read_only: bool = False) -> Engine:
    """The process's engine; SQLite gets a second one for lock-free reads.

    On PostgreSQL, reads share the engine's pool in autocommit: at READ COMMITTED every
    statement sees its own snapshot inside a transaction or out of it, so a read-only unit of
    work gains nothing from BEGIN and COMMIT but two round trips."""
    settings = get_settings()
    key = read_only and settings.is_sqlite
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(
            settings.database_url,
            read_only=key,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
    if read_only and not settings.is_sqlite:
        return _autocommit(_ENGINES[key])
    return _ENGINES[key]


@lru_cache
def _autocommit(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def connection_capacity() -> int:
    """How many connections one process's engine may hold at once."""
    settings = get_settings()
    return settings.database_pool_size + settings.database_max_overflow


@lru_cache
def get_sessionmaker(read_only: bool = False) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(read_only), expire_on_commit=False)


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines (settings changed, or tests)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _autocommit.cache_clear()
    get_sessionmaker.cache_clear()


@contextmanager
def session_scope(read_only: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error (a request, or a worker step)."""
    session = get_sessionmaker(read_only)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


Named = TypeVar("Named", bound=Base)


def find_named(session: Session, table: type[Named], org_id: str, ref: str) -> Named | None:
    """The organisation's row of ``table`` (a table with ``org_id`` and ``name``) by id, else by
    name: an id always wins, so a name cannot shadow another row. Another organisation's row is
    not found."""
    by_id = session.get(table, ref)
    if by_id is not None and getattr(by_id, "org_id") == org_id:  # noqa: B009 - any table
        return by_id
    columns = (getattr(table, "org_id") == org_id, getattr(table, "name") == ref)  # noqa: B009
    return session.scalars(select(table).where(*columns)).first()
