"""One settings object; every field can be set as an environment variable with NEPENTHE_ prefix."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    database_pool_size: int = Field(
        5,
        ge=1,
        le=200,
        description="database connections each process keeps open (API and worker processes "
        "alike; size PostgreSQL's max_connections for all of them)",
    )
    database_max_overflow: int = Field(
        10,
        ge=0,
        le=200,
        description="connections a process may open beyond the pool under load; the API lets "
        "at most pool size + overflow - 1 requests hold one at a time, the rest wait their turn",
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
    max_inflated_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        le=8 * 1024**3,  # unlearning.archives.MAX_INFLATED_BYTES: what workers read
        description="most bytes an uploaded zip archive (a .pt checkpoint, an .npz dataset) may "
        "inflate to: checked on its zip directory before anything is inflated, and each member "
        "held to its declared size while it inflates (413 above); at most 8 GiB",
    )
    max_compression_ratio: float = Field(
        100.0,
        ge=1,
        description="most times its own size an uploaded archive may inflate to, once it "
        "inflates past 64 MiB (413 above): compression bombs inflate a thousandfold, image "
        "arrays and checkpoints rarely tenfold",
    )
    max_model_parameters: int = Field(
        1_000_000_000,
        ge=1,
        description="most parameters and buffers a registered network may have, counted on "
        "the meta device before anything is allocated (422 above); every torchvision "
        "classifier has fewer",
    )
    max_body_bytes: int = Field(
        4 * 1024**2,
        ge=1024,
        description="largest request body that is not an upload (a JSON document); larger "
        "bodies are cut off with 413 while they stream",
    )
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
        description="when the broker holds fewer messages than queued jobs (a failed send, a "
        "broker restarted empty), the sweeper re-sends those last sent this long ago",
    )
    task_queue: str = Field("unlearning", description="Celery queue that carries unlearning jobs")
    # Faults: leases, the sweeper, the broker's publish timeout
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="how often a running job's worker writes its heartbeat"
    )
    lease_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a running job whose heartbeat is older than this lost its worker (killed, "
        "machine gone): the sweeper re-queues it, or fails it after max_attempts claims",
    )
    stall_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="a running job that reaches none of its checks for this long is stuck (a "
        "hung kernel or read): its heartbeat stops, and the sweeper re-queues it",
    )
    max_attempts: int = Field(
        3, ge=1, le=20, description="claims a job may have before a lost worker fails it"
    )
    sweep_interval_s: float = Field(
        15.0,
        gt=0,
        description="how often each worker's sweeper looks for lost workers and unsent jobs",
    )
    send_grace_s: float = Field(
        5.0,
        ge=0,
        description="a queued job whose send by the sweeper failed is tried again after this long",
    )
    broker_publish_timeout_s: float = Field(
        2.0,
        gt=0,
        description="socket timeout of a send to Redis; a submit waits at most about twice this "
        "for an unreachable broker before answering anyway (the job is kept and sent by the "
        "sweeper)",
    )
    redis_visibility_timeout_s: int = Field(
        7 * 3600,
        description="Redis redelivery delay for unacknowledged jobs: keep it above the "
        "longest job, or Redis hands a running job to a second worker",
    )

    # Quotas and limits, per organisation (docs/operations.md, "Quotas and limits"); 0: none
    quota_submissions_per_minute: int = Field(
        120,
        ge=0,
        description="deletion requests an organisation may have accepted in any 60 s; more are "
        "answered 429 rate_limited with Retry-After (an idempotent replay is no new submission)",
    )
    quota_queued_jobs: int = Field(
        200,
        ge=0,
        description="jobs an organisation may have waiting at once; a submission past it is "
        "answered 429 quota_exceeded with Retry-After",
    )
    quota_running_jobs: int = Field(
        0,
        ge=0,
        description="jobs of one organisation the workers run at once; its further jobs stay "
        "queued (phase held_by_quota) while other organisations' jobs run; 0: no limit",
    )
    quota_max_job_sample_passes: float = Field(
        50_000_000,
        ge=0,
        description="largest estimated work of one job (its method plus a retrained reference, "
        "in sample passes, the unit of metrics.cost); a request over it is refused with 422 "
        "job_cost_limit_exceeded before anything is written",
    )
    quota_stored_bytes: int = Field(
        100 * 1024**3,
        ge=0,
        description="checkpoints, uploaded datasets and job artifacts an organisation may hold; "
        "an upload (or a request whose output version) would pass it is refused with 413 "
        "storage_quota_exceeded before anything is stored",
    )
    job_time_limit_s: float = Field(
        6 * 3600.0,
        ge=0,
        description="a job running longer than this (one attempt) is ended as failed, by its "
        "worker at its next check or by the sweeper; keep it below "
        "NEPENTHE_REDIS_VISIBILITY_TIMEOUT_S; 0: no limit",
    )

    secret_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SECRET),
        description="server secret that API key hashes are keyed with (HMAC-SHA256); at least "
        "32 characters in production, where the development default is refused",
    )
    console_session_hours: float = Field(
        8.0,
        gt=0,
        le=24 * 30,
        description="how long a sign-in to the web console lasts; signing out, or revoking "
        "its API key, ends it sooner",
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
    coalescing_deadline_margin_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="a request of a coalescing model waits for others to join it until its due "
        "date less this margin at the latest (time left to run, review and retry it)",
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

    # Checkpoint store
    store_backend: Literal["local", "s3"] = Field(
        "local",
        description="where checkpoints, datasets and artifacts live: 'local' (NEPENTHE_STORE_DIR, "
        "one machine) or 's3' (a bucket every API and worker machine shares)",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph...); unset: AWS S3"
    )
    s3_bucket: str | None = Field(None, description="bucket of the s3 store (required for it)")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. 'nepenthe/'")
    s3_region: str = Field("us-east-1", description="region of the bucket")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key; unset: boto3's credential chain (env, ~/.aws, role)"
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="S3 secret key; set together with NEPENTHE_S3_ACCESS_KEY_ID"
    )
    store_cache_dir: Path = Field(
        Path("var/store-cache"),
        description="local copies of s3 objects, each checked against its SHA-256 before use; "
        "may be emptied at any time",
    )
    importance_cache_dir: Path | None = Field(
        Path("var/importance-cache"),
        description="per worker: SSD's weight importances, one folder per model version and "
        "dataset (the 32 most recently used versions), reused by later SSD requests on the same "
        "version; may be emptied at any time; empty: no cache",
    )

    worker_cache_bytes: int = Field(
        1024**3,
        ge=0,
        description="per worker process: the decoded datasets and built architectures kept "
        "between jobs (least recently used out first), so the next job on the same model and "
        "data does not read and decode them again; a changed dataset file is read afresh; 0: "
        "no cache",
    )

    @field_validator("importance_cache_dir", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value

    # Observability
    log_format: Literal["text", "json"] = Field(
        "text", description="'text' lines for people, or 'json' lines for a log collector"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="least level logged by the API and the worker (upper case)"
    )
    metrics_enabled: bool = Field(
        True,
        description="serve Prometheus metrics at GET /metrics, without an API key: keep it "
        "off the public network (or turn it off)",
    )
    readiness_timeout_s: float = Field(
        2.0, gt=0, description="longest GET /readyz waits for the database or the broker"
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
        if self.store_backend == "s3" and not self.s3_bucket:
            problems.append("NEPENTHE_STORE_BACKEND is s3 but NEPENTHE_S3_BUCKET is not set")
        return problems

    def check_production(self) -> None:
        """Refuse to start in production with a default secret or no signing key."""
        problems = self.production_problems()
        if problems:
            raise RuntimeError("refusing to start in production: " + "; ".join(problems))


@lru_cache
def get_settings() -> Settings:
    return Settings()
