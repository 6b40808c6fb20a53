"""The per-organisation hash chain over audit events.

``record`` only queues an event on the session. When the outermost transaction commits, the
queued events are numbered and linked under a row lock on the organisation's chain head, so
concurrent writers append one after another in commit order, and the lock is held only for the
last moments of a transaction (it is the last lock any transaction takes, so no deadlock).

Inserting an event still takes locks after the head's: PostgreSQL's foreign-key checks take
FOR KEY SHARE on the rows it names (its organisation, model, request, job). A row locked FOR
UPDATE by another transaction would make the insert wait for that transaction while holding the
head that transaction needs at its own commit: a deadlock. So rows are locked FOR NO KEY UPDATE
(``with_for_update(key_share=True)``), which key-share locks pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from app.audit import repository
from app.orm import AuditChainHead, AuditEvent, utcnow
from app.signing import json_value, sha256_hex

GENESIS_HASH = "0" * 64
_PENDING = "nepenthe_audit_pending"

# Every column but the surrogate id and the hash itself: what the hash covers.
HASHED_FIELDS = (
    "org_id",
    "seq",
    "at",
    "action",
    "actor",
    "model_id",
    "model_version_id",
    "dataset_id",
    "request_id",
    "job_id",
    "caller_reference",
    "client_address",
    "http_request_id",
    "details",
    "prev_hash",
)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fields_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the hashed fields (``at`` as fixed-width UTC text)."""
    canonical = {name: fields[name] for name in HASHED_FIELDS}
    canonical["at"] = timestamp(canonical["at"])
    return sha256_hex(canonical)


def event_hash(row: AuditEvent) -> str:
    return fields_hash({name: getattr(row, name) for name in HASHED_FIELDS})


def queue(session: Session, row: AuditEvent) -> None:
    """Hold ``row`` until the transaction commits (then ``_append`` chains and inserts it)."""
    row.details = json_value(row.details or {})
    # Begin now if nothing has yet: an event must belong to the transaction that commits it.
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    session.info.setdefault(_PENDING, []).append((transaction, row))


@event.listens_for(Session, "before_commit")
def _append(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released: its events wait for the outermost commit
    pending = [row for _, row in session.info.pop(_PENDING, [])]
    by_org: dict[str, list[AuditEvent]] = {}
    for row in pending:
        by_org.setdefault(row.org_id, []).append(row)
    # Organisations in a fixed order: two transactions never wait on each other's heads.
    for org_id in sorted(by_org):
        head = repository.lock_head(session, org_id)  # the locked row, not a cached copy
        for row in by_org[org_id]:
            # Stamped when appended, never before the previous event (a clock stepping back):
            # time only grows along the chain, so a time bound is a seq bound (search).
            row.at = max(utcnow(), head.updated_at)
            row.seq, row.prev_hash = head.seq + 1, head.hash
            row.hash = event_hash(row)
            repository.insert_event(session, row)
            head.seq, head.hash, head.updated_at = row.seq, row.hash, row.at


@event.listens_for(Session, "after_soft_rollback")
def _drop(session: Session, previous: SessionTransaction) -> None:
    """Events recorded inside a rolled-back transaction (or savepoint) are never written."""
    pending = session.info.get(_PENDING)
    if not pending:
        return
    kept = [(t, row) for t, row in pending if not _inside(t, previous)]
    if kept:
        session.info[_PENDING] = kept
    else:
        session.info.pop(_PENDING, None)


def _inside(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


@dataclass
class ChainReport:
    """The outcome of walking one organisation's chain."""

    org_id: str
    events_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    broken: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken is None


def walk(rows: Iterable[AuditEvent], report: ChainReport) -> None:
    """Check seq, link and content of each event in seq order; stop at the first broken one."""
    expected_seq, prev_hash = 1, GENESIS_HASH
    for row in rows:
        problem = _link_problem(row, expected_seq, prev_hash)
        if problem is not None:
            report.broken = {
                "seq": expected_seq,
                "event_id": row.id,
                "found_seq": row.seq,
                **problem,
            }
            return
        report.events_checked += 1
        report.head_seq, report.head_hash = row.seq, row.hash
        expected_seq, prev_hash = row.seq + 1, row.hash


def _link_problem(row: AuditEvent, expected_seq: int, prev_hash: str) -> dict[str, str] | None:
    if row.seq != expected_seq:
        return {
            "code": "sequence_gap",
            "detail": (
                f"expected event {expected_seq} but found event {row.seq}: events were deleted or "
                "reordered"
            ),
        }
    if row.prev_hash != prev_hash:
        return {
            "code": "link_broken",
            "detail": (
                f"event {row.seq} does not link to the hash of event {row.seq - 1}: an event "
                "before it was replaced, or events were reordered"
            ),
        }
    if event_hash(row) != row.hash:
        return {
            "code": "content_altered",
            "detail": (
                f"event {row.seq} no longer matches its hash: it was edited after it was written"
            ),
        }
    return None


def check_head(report: ChainReport, head: AuditChainHead | None) -> None:
    """The chain must end where its head says: otherwise events were cut from the end."""
    if report.broken is not None or head is None:
        return
    if (head.seq, head.hash) != (report.head_seq, report.head_hash):
        report.broken = {
            "seq": report.head_seq + 1,
            "event_id": None,
            "code": "truncated",
            "detail": f"the chain ends at event {report.head_seq} but its head records event "
            f"{head.seq}: events were removed from the end",
        }


def check_beyond_head(report: ChainReport, first_beyond: int | None) -> None:
    """Rows with a seq past the chain head belong to no verified chain: a row inserted around
    the service (the head is advanced only by the service's own appends)."""
    if report.broken is not None or first_beyond is None:
        return
    report.broken = {
        "seq": first_beyond,
        "event_id": None,
        "code": "beyond_head",
        "detail": f"event {first_beyond} lies past the chain head (event {report.head_seq}): it "
        "was written around the service",
    }


def check_anchor(report: ChainReport, anchor_seq: int, anchor_hash: str, found: str | None) -> None:
    """Compare with a head exported earlier and kept elsewhere (``found``: the hash of event
    ``anchor_seq`` now, None when there is no such event). The walk must have reached the
    anchor: an event that exists but lies past the verified chain proves nothing."""
    if report.broken is not None:
        return
    if found is None or report.head_seq < anchor_seq:
        report.broken = {
            "seq": anchor_seq,
            "event_id": None,
            "code": "truncated",
            "detail": f"an exported head names event {anchor_seq}, but the chain ends at event "
            f"{report.head_seq}: events were removed or the log was rolled back",
        }
    elif found != anchor_hash:
        report.broken = {
            "seq": anchor_seq,
            "event_id": None,
            "code": "anchor_mismatch",
            "detail": f"event {anchor_seq} does not have the hash of the exported head: the "
            "chain was rewritten since that head was exported",
        }


def in_batches(
    session: Session, org_id: str, up_to: int | None = None, size: int = 2000
) -> Iterator[AuditEvent]:
    """The organisation's events in seq order (up to seq ``up_to``), a batch at a time (100k
    events fit no memory budget as one list, and the walk stops early at a break)."""
    after = 0
    while True:
        batch = repository.events_after(session, org_id, after, up_to, size)
        yield from batch
        if len(batch) < size:
            return
        after = batch[-1].seq
