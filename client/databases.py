"""Databases of one's own for a local run (the tests, the benchmarks): a PostgreSQL database
created on the admin connection and dropped afterwards, the migrations run in-process, and the
service's per-process caches reset once its settings changed."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent
# The servers of the development machine (and of scripts/test.sh); the variables point elsewhere.
PG_ADMIN = os.environ.get("NEPENTHE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NEPENTHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def create_pg_database(admin_url: str, prefix: str = "nepenthe_test") -> str:
    """A new, empty database named ``PREFIX_<12 hex digits>``; returns its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def drop_pg_database(admin_url: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


def reset_caches() -> None:
    """Settings, engines and the producer are cached per process; call after changing them."""
    from app.config import get_settings
    from app.db import dispose_engines
    from app.keys import get_signer
    from app.queue import producer

    dispose_engines()
    for cached in (get_settings, producer, get_signer):
        cached.cache_clear()
