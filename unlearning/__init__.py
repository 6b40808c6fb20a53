"""Pure-torch unlearning library: architectures, safe checkpoint I/O, datasets, methods, metrics.

It imports neither the service (``app``) nor Celery, so it can be used and tested on its own.
"""
