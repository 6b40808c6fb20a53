"""compliance: organisations and API keys, the hash-chained audit log, receipts and
certificates, the statutory clock, supersession, webhooks

Rows written before this revision belong to one organisation named "default"; their audit
events are chained in time order, their requests have no receipt, and the versions their
succeeded requests unlearned are superseded.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from app.audit import chain
from app.deletions.clock import add_months
from app.deletions.evidence import forget_spec_sha256
from app.orm import UtcDateTime
from app.signing import json_value

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
ORG_TABLES = ("model", "dataset", "deletion_request", "audit_event")

PG_APPEND_ONLY = """
CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_event_no_update_delete BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
"""
# SQLite drops a table's triggers with the table: a later batch migration that rebuilds
# audit_event must create these again.
SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: DELETE refused'); END",
]


def upgrade() -> None:
    _create_tables()
    _add_nullable_columns()
    _backfill(op.get_bind())
    _tighten_columns()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY)
    else:
        for statement in SQLITE_APPEND_ONLY:
            op.execute(statement)


def _create_tables() -> None:
    op.create_table(
        "organization",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organization")),
        sa.UniqueConstraint("name", name=op.f("uq_organization_name")),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organization.id"],
                                name=op.f("fk_api_key_org_id_organization")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
    )
    op.create_index(op.f("ix_api_key_org_id"), "api_key", ["org_id"])
    op.create_table(
        "audit_chain_head",
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["organization.id"],
                                name=op.f("fk_audit_chain_head_org_id_organization")),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "webhook",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("disabled_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["organization.id"],
                                name=op.f("fk_webhook_org_id_organization")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook")),
    )
    op.create_index(op.f("ix_webhook_org_id"), "webhook", ["org_id"])
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("webhook_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhook.id"],
                                name=op.f("fk_webhook_delivery_webhook_id_webhook")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
    )
    op.create_index(op.f("ix_webhook_delivery_status"), "webhook_delivery", ["status"])
    op.create_index(op.f("ix_webhook_delivery_webhook_id"), "webhook_delivery", ["webhook_id"])
    op.create_table(
        "due_date_extension",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("months", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("previous_due_at", TS, nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["deletion_request.id"],
                                name=op.f("fk_due_date_extension_request_id_deletion_request")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_due_date_extension")),
    )
    op.create_index(op.f("ix_due_date_extension_request_id"), "due_date_extension", ["request_id"])


def _add_nullable_columns() -> None:
    for table in ORG_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("org_id", sa.String(length=36), nullable=True))
    with op.batch_alter_table("audit_event") as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("actor", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("http_request_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("deletion_request") as batch_op:
        batch_op.add_column(sa.Column("upstream_request_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("forget_spec_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("due_at", TS, nullable=True))
        batch_op.add_column(sa.Column("receipt", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("certificate", sa.JSON(), nullable=True))
    with op.batch_alter_table("model_version") as batch_op:
        batch_op.add_column(sa.Column("superseded_at", TS, nullable=True))
        batch_op.add_column(sa.Column("superseded_by_request_id", sa.String(length=36),
                                      nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_model_version_superseded_by_request_id_deletion_request"),
            "deletion_request", ["superseded_by_request_id"], ["id"], use_alter=True,
        )


def _backfill(conn: sa.Connection) -> None:
    """Earlier rows go to an organisation named "default" (created only when there are any)."""
    if not any(conn.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first() for t in ORG_TABLES):
        return
    org_id, now = str(uuid.uuid4()), datetime.now(UTC)
    org = sa.table("organization", sa.column("id"), sa.column("name"),
                   sa.column("created_at", UtcDateTime()))
    conn.execute(org.insert().values(id=org_id, name="default", created_at=now))
    for table in ORG_TABLES:
        conn.execute(sa.text(f"UPDATE {table} SET org_id = :org"), {"org": org_id})
    _backfill_requests(conn)
    _supersede_unlearned(conn)
    _chain_events(conn, org_id, now)


def _backfill_requests(conn: sa.Connection) -> None:
    requests = sa.table(
        "deletion_request", sa.column("id"), sa.column("dataset_id"),
        sa.column("retain_dataset_id"), sa.column("forget_classes", sa.JSON()),
        sa.column("forget_samples", sa.JSON()), sa.column("created_at", UtcDateTime()),
        sa.column("forget_spec_sha256"), sa.column("due_at", UtcDateTime()),
    )
    for row in conn.execute(sa.select(requests)).all():
        conn.execute(requests.update().where(requests.c.id == row.id).values(
            forget_spec_sha256=forget_spec_sha256(
                row.dataset_id, row.retain_dataset_id, row.forget_classes, row.forget_samples,
                None),  # unsalted: salts came in revision 0007
            due_at=add_months(row.created_at, 1),
        ))


def _supersede_unlearned(conn: sa.Connection) -> None:
    """Requests that succeeded before this revision supersede, as later ones do, their input
    version and what derives from it, except their output and what derives from that."""
    children: dict[str, list[str]] = {}
    for version_id, parent_id in conn.execute(
        sa.text("SELECT id, parent_version_id FROM model_version")
    ):
        if parent_id is not None:
            children.setdefault(parent_id, []).append(version_id)

    def subtree(root: str) -> set[str]:
        found, frontier = {root}, [root]
        while frontier:
            frontier = [c for v in frontier for c in children.get(v, []) if c not in found]
            found.update(frontier)
        return found

    done = sa.table("job", sa.column("request_id"), sa.column("status"),
                    sa.column("output_version_id"), sa.column("finished_at", UtcDateTime()))
    requests = sa.table("deletion_request", sa.column("id"), sa.column("model_version_id"))
    versions = sa.table("model_version", sa.column("id"), sa.column("superseded_at", UtcDateTime()),
                        sa.column("superseded_by_request_id"))
    succeeded = conn.execute(
        sa.select(done.c.request_id, requests.c.model_version_id, done.c.output_version_id,
                  done.c.finished_at)
        .join(requests, requests.c.id == done.c.request_id)
        .where(done.c.status == "succeeded", done.c.output_version_id.is_not(None))
        .order_by(done.c.finished_at)
    ).all()
    marked: set[str] = set()
    for request_id, source, output, finished in succeeded:
        for version_id in sorted(subtree(source) - subtree(output) - marked):
            conn.execute(versions.update().where(versions.c.id == version_id).values(
                superseded_at=finished, superseded_by_request_id=request_id))
            marked.add(version_id)


def _chain_events(conn: sa.Connection, org_id: str, now: datetime) -> None:
    names = ["id", *chain.HASHED_FIELDS, "hash"]
    types = {"at": UtcDateTime(), "details": sa.JSON()}
    events = sa.table("audit_event", *(sa.column(n, types.get(n)) for n in names))
    seq, prev = 0, chain.GENESIS_HASH
    # In time order, as the chain keeps them from now on (a time bound is a seq bound).
    for row in conn.execute(sa.select(events).order_by(events.c.at, events.c.id)).all():
        seq += 1
        fields = {**row._asdict(), "org_id": org_id, "seq": seq, "actor": "legacy",
                  "prev_hash": prev, "details": json_value(row.details or {})}
        prev = chain.fields_hash(fields)
        conn.execute(events.update().where(events.c.id == row.id).values(
            seq=seq, actor="legacy", prev_hash=fields["prev_hash"], hash=prev,
            details=fields["details"],
        ))
    heads = sa.table("audit_chain_head", sa.column("org_id"), sa.column("seq"),
                     sa.column("hash"), sa.column("updated_at", UtcDateTime()))
    conn.execute(heads.insert().values(org_id=org_id, seq=seq, hash=prev, updated_at=now))


def _tighten_columns() -> None:
    with op.batch_alter_table("model") as batch_op:
        batch_op.alter_column("org_id", existing_type=sa.String(length=36), nullable=False)
        batch_op.drop_constraint("uq_model_name", type_="unique")
        batch_op.create_index(op.f("ix_model_org_id"), ["org_id"])
        batch_op.create_unique_constraint(op.f("uq_model_org_id"), ["org_id", "name"])
        batch_op.create_foreign_key(op.f("fk_model_org_id_organization"), "organization",
                                    ["org_id"], ["id"])
    with op.batch_alter_table("dataset") as batch_op:
        batch_op.alter_column("org_id", existing_type=sa.String(length=36), nullable=False)
        batch_op.drop_constraint("uq_dataset_name", type_="unique")
        batch_op.create_index(op.f("ix_dataset_org_id"), ["org_id"])
        batch_op.create_unique_constraint(op.f("uq_dataset_org_id"), ["org_id", "name"])
        batch_op.create_foreign_key(op.f("fk_dataset_org_id_organization"), "organization",
                                    ["org_id"], ["id"])
    with op.batch_alter_table("deletion_request") as batch_op:
        for column, kind in (("org_id", sa.String(length=36)),
                             ("forget_spec_sha256", sa.String(length=64)), ("due_at", TS)):
            batch_op.alter_column(column, existing_type=kind, nullable=False)
        batch_op.drop_constraint("uq_deletion_request_idempotency_key", type_="unique")
        batch_op.create_unique_constraint(op.f("uq_deletion_request_org_id"),
                                          ["org_id", "idempotency_key"])
        batch_op.create_index("ix_deletion_request_org_created", ["org_id", "created_at", "id"])
        batch_op.create_index("ix_deletion_request_org_due", ["org_id", "due_at"])
        batch_op.create_index(op.f("ix_deletion_request_upstream_request_id"),
                              ["upstream_request_id"])
        batch_op.create_foreign_key(op.f("fk_deletion_request_org_id_organization"),
                                    "organization", ["org_id"], ["id"])
    with op.batch_alter_table("audit_event") as batch_op:
        for column, kind in (("org_id", sa.String(length=36)), ("seq", sa.BigInteger()),
                             ("actor", sa.String(length=200)), ("prev_hash", sa.String(64)),
                             ("hash", sa.String(64))):
            batch_op.alter_column(column, existing_type=kind, nullable=False)
        for old in ("ix_audit_event_action", "ix_audit_event_at_id",
                    "ix_audit_event_caller_reference", "ix_audit_event_model_id",
                    "ix_audit_event_request_id"):
            batch_op.drop_index(old)
        for name, columns in (("org_action", "action"), ("org_at", "at"),
                              ("org_caller_reference", "caller_reference"),
                              ("org_model", "model_id"), ("org_request", "request_id")):
            batch_op.create_index(f"ix_audit_event_{name}", ["org_id", columns, "id"])
        batch_op.create_unique_constraint(op.f("uq_audit_event_org_id"), ["org_id", "seq"])
        batch_op.create_foreign_key(op.f("fk_audit_event_org_id_organization"), "organization",
                                    ["org_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_event_no_truncate ON audit_event")
        op.execute("DROP TRIGGER audit_event_no_update_delete ON audit_event")
        op.execute("DROP FUNCTION audit_event_append_only()")
    else:
        op.execute("DROP TRIGGER audit_event_no_update")
        op.execute("DROP TRIGGER audit_event_no_delete")
    with op.batch_alter_table("model_version") as batch_op:
        batch_op.drop_constraint(
            op.f("fk_model_version_superseded_by_request_id_deletion_request"), type_="foreignkey"
        )
        batch_op.drop_column("superseded_by_request_id")
        batch_op.drop_column("superseded_at")
    for table in ("model", "dataset"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(op.f(f"fk_{table}_org_id_organization"), type_="foreignkey")
            batch_op.drop_constraint(op.f(f"uq_{table}_org_id"), type_="unique")
            batch_op.drop_index(op.f(f"ix_{table}_org_id"))
            batch_op.create_unique_constraint(op.f(f"uq_{table}_name"), ["name"])
            batch_op.drop_column("org_id")
    with op.batch_alter_table("deletion_request") as batch_op:
        batch_op.drop_constraint(op.f("fk_deletion_request_org_id_organization"),
                                 type_="foreignkey")
        batch_op.drop_constraint(op.f("uq_deletion_request_org_id"), type_="unique")
        batch_op.drop_index(op.f("ix_deletion_request_upstream_request_id"))
        batch_op.drop_index("ix_deletion_request_org_due")
        batch_op.drop_index("ix_deletion_request_org_created")
        batch_op.create_unique_constraint(op.f("uq_deletion_request_idempotency_key"),
                                          ["idempotency_key"])
        for column in ("certificate", "receipt", "due_at", "forget_spec_sha256",
                       "upstream_request_id", "org_id"):
            batch_op.drop_column(column)
    with op.batch_alter_table("audit_event") as batch_op:
        batch_op.drop_constraint(op.f("fk_audit_event_org_id_organization"), type_="foreignkey")
        batch_op.drop_constraint(op.f("uq_audit_event_org_id"), type_="unique")
        for name in ("org_request", "org_model", "org_caller_reference", "org_at", "org_action"):
            batch_op.drop_index(f"ix_audit_event_{name}")
        batch_op.create_index("ix_audit_event_request_id", ["request_id"])
        batch_op.create_index("ix_audit_event_model_id", ["model_id"])
        batch_op.create_index("ix_audit_event_caller_reference", ["caller_reference"])
        batch_op.create_index("ix_audit_event_at_id", ["at", "id"])
        batch_op.create_index("ix_audit_event_action", ["action"])
        for column in ("hash", "prev_hash", "http_request_id", "actor", "seq", "org_id"):
            batch_op.drop_column(column)
    for index, table in (("ix_due_date_extension_request_id", "due_date_extension"),
                         ("ix_webhook_delivery_webhook_id", "webhook_delivery"),
                         ("ix_webhook_delivery_status", "webhook_delivery"),
                         ("ix_webhook_org_id", "webhook"), ("ix_api_key_org_id", "api_key")):
        op.drop_index(op.f(index), table_name=table)
    for table in ("due_date_extension", "webhook_delivery", "webhook", "audit_chain_head",
                  "api_key", "organization"):
        op.drop_table(table)
