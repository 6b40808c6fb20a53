"""SQLite's single write lock is never held through slow work a request does."""

from __future__ import annotations

import pytest

from tests.api.test_bad_input import submit
from unlearning import data


@pytest.mark.parametrize("service_env", ["embedded"], indirect=True)
def test_no_write_lock_is_held_while_a_sample_request_reads_its_dataset(
    api, registered, service_env, monkeypatch
):
    """SQLite: while the training split loads (seconds, for a large archive), another
    connection can write at once, without waiting on a busy timeout."""
    import sqlite3

    from app.deletions import service

    path = service_env["NEPENTHE_DATABASE_URL"].split("///", 1)[1]
    real = service.data.open_split
    writes: list[str] = []

    def open_split_and_write_meanwhile(*args, **kwargs):
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # fails at once if the request holds the lock
            other.execute("ROLLBACK")
            writes.append("ok")
        except sqlite3.OperationalError as exc:
            writes.append(str(exc))
        finally:
            other.close()
        return real(*args, **kwargs)

    monkeypatch.setattr(service.data, "open_split", open_split_and_write_meanwhile)
    train_ids = list(data.open_split("sklearn_digits", None, "train").ids[:3])
    response = submit(
        api, registered, forget_classes=None, forget_samples=train_ids, method="salun"
    )
    assert response.status_code == 202, response.text
    assert writes and set(writes) == {"ok"}
