"""``nepenthe-admin``: the operator's commands, run where the service's settings and database
are. The first admin key of an organisation is made here, never by a default in code.

Commands that use the database first bring its schema up to date (``alembic upgrade head``, a
no-op when it already is), so ``create-key`` works on a fresh database."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.actors import Actor, Scope
from app.audit import service as audit
from app.auth import service as auth
from app.config import get_settings
from app.db import make_engine, session_scope
from app.errors import ServiceError
from app.keys import get_signer
from app.orm import Organization
from app.signing import create_key_file, public_pem

# Commands that read or write the database: the schema is migrated to head before they run.
DATABASE_COMMANDS = {"create-org", "create-key", "revoke-key", "verify-audit"}


def alembic_config() -> Config:
    """The project's Alembic configuration, pointed at the configured database.

    ``alembic.ini`` lies beside the packages in a checkout (an editable install); an installed
    package (the Docker image) has it in the working directory, as ``alembic upgrade head`` does.
    """
    beside_code = Path(__file__).resolve().parent.parent / "alembic.ini"
    for ini in (beside_code, Path.cwd() / "alembic.ini"):
        if ini.is_file() and (ini.parent / "migrations").is_dir():
            cfg = Config(str(ini))
            cfg.attributes["database_url"] = get_settings().database_url
            cfg.attributes["configure_logger"] = False
            return cfg
    raise SystemExit(
        "cannot find alembic.ini and migrations/ to bring the database schema up to date; run "
        "`alembic upgrade head` in the folder that holds them, then this command again"
    )


def migrate() -> tuple[str | None, str | None]:
    """Bring the configured database to the newest migration: (revision before, after).

    Does nothing (and needs no schema privileges) when it is already there."""
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    engine = make_engine(get_settings().database_url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        raise SystemExit(
            f"the database is at migration {current}, which this version of Nepenthe does not "
            "know (a newer version migrated it): run that version's nepenthe-admin"
        )
    if current != head:
        command.upgrade(cfg, "head")
    return current, head


def _migrate_and_report() -> None:
    before, after = migrate()
    if before != after:
        # stderr: stdout carries only the command's answer (a key's token, say).
        print(
            f"nepenthe-admin: database schema migrated from {before or 'empty'} to {after}",
            file=sys.stderr,
        )


def operator() -> str:
    return f"cli:{getpass.getuser()}"


def create_org(name: str) -> Organization:
    with session_scope() as session:
        return auth.create_org(session, name, operator())


def create_key(org_ref: str, name: str, scopes: list[Scope], create_org: bool = False) -> str:
    """A new key's token (shown once). ``create_org``: make the organisation when it is new."""
    with session_scope() as session:
        org = auth.find_org(session, org_ref)
        if org is None:
            if not create_org:
                raise SystemExit(f"no organisation {org_ref!r}; pass --create-org to make it")
            org = auth.create_org(session, org_ref, operator())
        _, token = auth.create_key(session, Actor(org.id, operator()), name, scopes)
    return token


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nepenthe-admin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="bring the database schema up to date (alembic upgrade head)")
    sub.add_parser("create-org", help="create an organisation").add_argument("name")
    key = sub.add_parser("create-key", help="create an API key; prints its token once")
    key.add_argument("--org", required=True, help="organisation name or id")
    key.add_argument("--name", default="admin", help="a label for the key")
    key.add_argument(
        "--scope",
        action="append",
        choices=[s.value for s in Scope],
        help="repeat for several; default: admin",
    )
    key.add_argument("--create-org", action="store_true", help="create the organisation too")
    revoke = sub.add_parser("revoke-key", help="revoke an API key")
    revoke.add_argument("--org", required=True)
    revoke.add_argument("key_id")
    signing = sub.add_parser("create-signing-key", help="write a new Ed25519 signing key")
    signing.add_argument("--path", help="default: NEPENTHE_SIGNING_KEY_FILE")
    sub.add_parser("public-key", help="print the public key that verifies evidence (PEM)")
    verify = sub.add_parser("verify-audit", help="walk an organisation's audit chain")
    verify.add_argument("--org", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ServiceError as exc:
        print(f"error ({exc.code}): {exc.detail}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "migrate":
        before, after = migrate()
        print(
            f"database schema at {after}"
            + (f" (was {before or 'empty'})" if before != after else "")
        )
        return 0
    if args.command in DATABASE_COMMANDS:
        _migrate_and_report()
    if args.command == "create-org":
        print(create_org(args.name).id)
    elif args.command == "create-key":
        scopes = [Scope(s) for s in (args.scope or [Scope.admin.value])]
        print(create_key(args.org, args.name, scopes, args.create_org))
    elif args.command == "revoke-key":
        with session_scope() as session:
            org = auth.find_org(session, args.org)
            if org is None:
                raise SystemExit(f"no organisation {args.org!r}")
            auth.revoke_key(session, Actor(org.id, operator()), args.key_id)
    elif args.command == "create-signing-key":
        path = args.path or str(get_settings().signing_key_file)
        create_key_file(Path(path))
        print(path)
    elif args.command == "public-key":
        print(public_pem(get_signer().public_key), end="")
    elif args.command == "verify-audit":
        return _verify(args.org)
    return 0


def _verify(org_ref: str) -> int:
    with session_scope(read_only=True) as session:
        org = auth.find_org(session, org_ref)
        if org is None:
            raise SystemExit(f"no organisation {org_ref!r}")
        report = audit.verify(session, org.id)
    summary = {
        "ok": report.ok,
        "events_checked": report.events_checked,
        "head_seq": report.head_seq,
        "broken": report.broken,
    }
    print(json.dumps(summary, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
