"""One settings object; every field can be set as an environment variable with NEPENTHE_ prefix."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    testing = "testing"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEPENTHE_", env_file=".env", extra="ignore")

    env: Environment = Field(Environment.development, description="deployment environment")
    database_url: str = Field(
        "sqlite:///var/nepenthe.db",
        description="SQLAlchemy URL; production uses postgresql+psycopg://user@host/db",
    )
    broker_url: str = Field(
        "filesystem://",
        description="Celery broker; production uses redis://host:6379/0",
    )
    broker_dir: Path = Field(
        Path("var/broker"), description="queue folder of the filesystem:// broker"
    )
    store_dir: Path = Field(Path("models_store"), description="root of the checkpoint store")
    data_roots: list[Path] = Field(
        [Path("var/data")],
        description="folders under which registered datasets may lie (Fashion-MNIST roots, "
        "ImageFolder trees); anything else is refused, so no client can read the server's files",
    )
    max_upload_bytes: int = Field(2 * 1024**3, description="largest accepted upload (413 above)")
    progress_interval_s: float = Field(
        0.5, description="least time between two progress writes of a running job"
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:n]'")
    max_noise_bytes: int = Field(
        4 * 1024**3,
        description="largest UNSIR impair set (forget classes x noise_batch x noise_repeats x "
        "input size x 4 bytes) a request may ask a worker to hold in memory",
    )
    requeue_after_s: float = Field(
        60.0,
        description="a starting worker re-sends jobs still queued after this long (their first "
        "send may have failed, or the message was lost with the broker)",
    )
    task_queue: str = Field("unlearning", description="Celery queue that carries unlearning jobs")
    redis_visibility_timeout_s: int = Field(
        7 * 3600,
        description="Redis redelivery delay for unacknowledged jobs: keep it above the "
        "longest job, or Redis hands a running job to a second worker",
    )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
