-- The role the API and the workers connect as: every right on Nepenthe's tables except changing,
-- deleting or truncating audit rows. Not the tables' owner, so it cannot drop or disable the
-- append-only trigger either. Run as the owner after each `alembic upgrade head`:
--   psql "$OWNER_URL" -v role=nepenthe_app -f scripts/pg_app_role.sql
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"role";
REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM :"role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"role";
