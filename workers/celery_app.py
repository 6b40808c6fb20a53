"""The worker's Celery application: ``celery -A workers.celery_app worker --pool solo``.

Use the solo (or threads) pool: CUDA cannot be initialised in forked prefork children, and one
process per GPU is what a GPU job wants anyway.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from app.config import get_settings
from app.observability import configure_logging
from app.queue import celery_config

get_settings().check_production()
app = Celery("nepenthe-worker", include=["workers.tasks", "workers.webhooks", "workers.sweeper"])
app.conf.update(celery_config(get_settings()))


@setup_logging.connect
def _use_the_services_logging(**_: Any) -> None:
    """With a receiver here, Celery installs no handler of its own: its logs and the tasks' go
    through the same root handler as the API's, in NEPENTHE_LOG_FORMAT at NEPENTHE_LOG_LEVEL
    (the worker's --loglevel option is not used)."""
    configure_logging(get_settings())
