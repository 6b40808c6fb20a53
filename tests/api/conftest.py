"""Fixtures live in tests/conftest.py; the API tests import these names from here."""

from tests.conftest import BACKENDS, snapshot

__all__ = ["BACKENDS", "snapshot"]
