"""The worker's Celery application: ``celery -A workers.celery_app worker --pool solo``.

Use the solo (or threads) pool: CUDA cannot be initialised in forked prefork children, and one
process per GPU is what a GPU job wants anyway.
"""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.queue import celery_config

get_settings().check_production()
app = Celery("nepenthe-worker", include=["workers.tasks", "workers.webhooks"])
app.conf.update(celery_config(get_settings()))
