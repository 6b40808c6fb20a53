"""Queries on the job table for the metrics scrape: counted by the database, no row fetched."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import ColumnElement, Float, case, cast, extract, func, select
from sqlalchemy.orm import Session

from app.orm import Job, JobStatus


def status_counts(session: Session) -> dict[str, int]:
    """Jobs by status; the status column is indexed, so this stays cheap."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {str(status): int(count) for status, count in rows}


def duration_histograms(
    session: Session, statuses: Iterable[JobStatus], buckets: Sequence[float]
) -> dict[str, tuple[list[int], int, float]]:
    """Per status of ``statuses``: the cumulative counts of run times up to each bound of
    ``buckets``, the count and the sum of the run times of jobs that ran (a job canceled while
    queued never started and has none).

    One GROUP BY query with a SUM(CASE) per bucket: the database counts, no row is fetched.
    """
    seconds = _run_seconds(session.get_bind().dialect.name).label("seconds")
    ran = (
        select(Job.status, seconds)
        .where(
            Job.status.in_(list(statuses)),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .subquery()
    )
    query = select(
        ran.c.status,
        func.count(),
        func.coalesce(func.sum(ran.c.seconds), 0.0),
        *(func.sum(case((ran.c.seconds <= bound, 1), else_=0)) for bound in buckets),
    ).group_by(ran.c.status)
    result: dict[str, tuple[list[int], int, float]] = {}
    for status, count, total, *cumulative in session.execute(query):
        result[status] = ([int(n) for n in cumulative], int(count), float(total))
    return result


def _run_seconds(dialect: str) -> ColumnElement[float]:
    """``finished_at - started_at`` in seconds: SQLite keeps naive UTC text, PostgreSQL
    timestamptz (whose difference is an interval)."""
    if dialect == "sqlite":
        return cast(
            (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0, Float
        )
    return cast(extract("epoch", Job.finished_at - Job.started_at), Float)
