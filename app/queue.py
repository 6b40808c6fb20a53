"""Send jobs to the workers, only after the transaction that created them has committed.

The API never imports the worker code: it sends tasks by name with ids only. A send that fails
leaves the job ``queued`` in the database, which stays the source of truth. Other tasks (webhook
deliveries) use the same outbox through ``send_after_commit``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from amqp.exceptions import ChannelError
from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import session_scope
from app.jobs import repository as jobs_repo

log = logging.getLogger(__name__)
RUN_JOB_TASK = "unlearning.run_job"
_OUTBOX = "nepenthe_outbox"
_TASK_OUTBOX = "nepenthe_task_outbox"
# How often an idle worker on the filesystem:// broker looks for a message.
FILESYSTEM_POLL_S = 0.1


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the producer (API) and the consumer (worker)."""
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": settings.task_queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # A submit must not hang on a broker that is down: publish fails fast, the job stays
        # queued in the database and the sweeper sends it once the broker is back.
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
    }
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_dir.resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # kombu's default, every second, made a job's hand-over about 0.8 s on this
            # backend (bench/job_overhead.py); a listing of the queue folder costs microseconds.
            "polling_interval": FILESYSTEM_POLL_S,
        }
    elif settings.broker_url.startswith(("redis://", "rediss://")):
        # Unacknowledged jobs are redelivered after this delay: keep it above the longest job.
        conf["broker_transport_options"] = {
            "visibility_timeout": settings.redis_visibility_timeout_s,
            "socket_connect_timeout": settings.broker_publish_timeout_s,
            "socket_timeout": settings.broker_publish_timeout_s,
        }
    return conf


@lru_cache
def producer() -> Celery:
    app = Celery("nepenthe-api")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_after_commit(session: Session, job_id: str) -> None:
    """Send the job once ``session`` commits, and record it as sent in that same transaction.

    Recorded before the send, not after: the after-commit hook runs while the committing session
    still holds its connection, and writing from there would need a second one per submit (a
    burst of submits then exhausts the pool). A send that fails leaves a job the broker lacks;
    the sweeper finds the broker holding fewer messages than queued jobs and sends it again.
    """
    jobs_repo.mark_sent(session, job_id)
    session.info.setdefault(_OUTBOX, []).append(job_id)


def publish_job(job_id: str) -> bool:
    """Hand the job to the broker; False, logged, when the broker could not take it."""
    try:
        producer().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().task_queue)
    except Exception:  # the broker may be down: the job stays queued in the database
        log.warning(
            "could not send job %s to the broker; it stays queued and the sweeper sends it again",
            job_id,
            exc_info=True,
        )
        return False
    return True


def send_job(job_id: str) -> bool:
    """Send the job and record that it was sent (the sweeper's sends: they hold no other
    connection). False when the broker could not take it."""
    if not publish_job(job_id):
        return False
    try:
        with session_scope() as session:
            jobs_repo.mark_sent(session, job_id, only_queued=True)
    except Exception:  # sent all the same: at worst the sweeper sends a harmless duplicate
        log.warning("job %s was sent but could not be marked sent", job_id, exc_info=True)
    return True


def waiting_messages() -> int | None:
    """Messages waiting in the job queue of the broker (None: the broker cannot be asked)."""
    queue = get_settings().task_queue
    try:
        with producer().connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:  # Redis after a restart: the queue is not even declared any more
        return 0
    except Exception:
        log.warning("could not count the messages of queue %s", queue, exc_info=True)
        return None


def send_after_commit(
    session: Session, task_name: str, arg: str, queue: str, countdown: float | None = None
) -> None:
    """Send task ``task_name`` with the one id ``arg`` on ``queue`` once ``session`` commits
    (dropped if it rolls back); ``countdown``: seconds the worker waits before running it."""
    session.info.setdefault(_TASK_OUTBOX, []).append((task_name, arg, queue, countdown))


def send_task(task_name: str, arg: str, queue: str, countdown: float | None = None) -> bool:
    """Send now; False (logged) when the broker refused, the database row stays to retry from."""
    try:
        producer().send_task(task_name, args=[arg], queue=queue, countdown=countdown)
    except Exception:  # the broker may be down: the row stays pending in the database
        log.exception("could not send %s(%s) to the broker", task_name, arg)
        return False
    return True


@event.listens_for(Session, "after_commit")
def _flush_outbox(session: Session) -> None:
    for job_id in session.info.pop(_OUTBOX, []):
        publish_job(job_id)
    for task_name, arg, queue, countdown in session.info.pop(_TASK_OUTBOX, []):
        send_task(task_name, arg, queue, countdown)


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)
    session.info.pop(_TASK_OUTBOX, None)
