"""Celery workers that run unlearning jobs."""
