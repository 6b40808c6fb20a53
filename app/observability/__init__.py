"""Health and readiness checks, Prometheus metrics and structured logs, for the API and worker."""

from app.observability.logs import (
    bind_log_ids,
    configure_logging,
    current_ids,
    log_context,
    reset_log_ids,
)

__all__ = ["bind_log_ids", "configure_logging", "current_ids", "log_context", "reset_log_ids"]
