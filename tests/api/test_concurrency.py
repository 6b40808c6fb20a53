"""A request gives its database connection back however its route ends (tests/e2e/
test_concurrency.py: many at once against the real server)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from app.db import connection_capacity, get_engine
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("service_env", BACKENDS, indirect=True)


def test_a_route_that_fails_gives_its_connection_back_before_its_answer(api):
    """FastAPI throws the route's exception into the session dependency: the session must be
    closed right there, not whenever the event loop gets round to finalising a generator."""
    from app.deps import get_session

    async def fail_in_a_route() -> int:
        unit = get_session()
        session = await unit.__anext__()
        session.execute(select(1))  # the connection is checked out
        with pytest.raises(LookupError):
            await unit.athrow(LookupError("the route failed"))
        return int(get_engine().pool.checkedout())  # type: ignore[attr-defined]

    assert asyncio.run(fail_in_a_route()) == 0
    for _ in range(connection_capacity() + 5):  # a leaked slot would soon starve the rest
        assert api.get("/v1/jobs/no-such-job").json()["code"] == "job_not_found"
    assert api.get("/v1/whoami").status_code == 200
