"""One settings object; every field can be set as an environment variable with NEPENTHE_ prefix."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    testing = "testing"
    production = "production"


# Known to everyone who reads this file, so refused in production (check_production).
DEVELOPMENT_SECRET = "nepenthe-development-secret-not-for-production"


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

    secret_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET),
        description="server secret that API key hashes are keyed with (HMAC-SHA256); at least "
        "32 characters in production, where the development default is refused",
    )
    signing_key_file: Path = Field(
        Path("var/signing-key.pem"),
        description="Ed25519 private key (PKCS#8 PEM) that signs receipts, certificates and "
        "audit heads; created on first use outside production, required in production",
    )
    due_months: int = Field(
        1,
        ge=1,
        le=12,
        description="statutory period: a request is due this many months after "
        "it was received (GDPR Art. 12(3): one month)",
    )
    max_extension_months: int = Field(
        2,
        ge=0,
        le=12,
        description="most months a request's deadline may be extended in all "
        "(GDPR Art. 12(3): two further months)",
    )
    webhook_max_attempts: int = Field(8, ge=1, le=50, description="deliveries tried per event")
    webhook_backoff_s: float = Field(
        2.0, gt=0, description="first retry delay of a failed webhook delivery; doubles each try"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="timeout of one webhook delivery")
    webhook_queue: str = Field("webhooks", description="Celery queue that carries webhook sends")
    webhook_allow_private: bool | None = Field(
        None,
        description="accept webhook URLs on loopback, private or link-local addresses (they "
        "reach the service's own network); default: only outside production",
    )

    @property
    def webhooks_may_reach_private(self) -> bool:
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.env is not Environment.production

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def production_problems(self) -> list[str]:
        """Why these settings must not run in production (empty when they may)."""
        if self.env is not Environment.production:
            return []
        problems = []
        secret = self.secret_key.get_secret_value()
        if secret == DEVELOPMENT_SECRET or len(secret) < 32:
            problems.append(
                "NEPENTHE_SECRET_KEY is the development default or shorter than 32 characters"
            )
        if not self.signing_key_file.is_file():
            problems.append(
                f"NEPENTHE_SIGNING_KEY_FILE {self.signing_key_file} does not exist; create one "
                "with `nepenthe-admin create-signing-key`"
            )
        return problems

    def check_production(self) -> None:
        """Refuse to start in production with a default secret or no signing key."""
        problems = self.production_problems()
        if problems:
            raise RuntimeError("refusing to start in production: " + "; ".join(problems))


@lru_cache
def get_settings() -> Settings:
    return Settings()
