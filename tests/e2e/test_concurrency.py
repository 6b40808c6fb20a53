"""More concurrent requests than the API has database connections and threads: all answered."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.e2e.test_service import register

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("service_env", ["production"], indirect=True),
]

# uvicorn's thread pool holds 40 threads and a process's pool 15 connections (5 + 10).
CLIENTS = 64
POLLS = 20


def test_sixty_four_clients_polling_at_once_are_all_answered(service, client, tmp_path):
    """A poll's session keeps its connection until its response model is validated in another
    thread: with every thread waiting for a connection and every connection waiting for a
    thread, the polls used to wait out the pool's 10 s timeout and answer 503."""
    reg = register(client, tmp_path)
    path = f"/v1/models/{reg['model']['id']}/versions"
    headers = {"Authorization": f"Bearer {service.admin_key}"}

    async def poll(http: httpx.AsyncClient) -> list[int]:
        return [(await http.get(path)).status_code for _ in range(POLLS)]

    async def all_at_once() -> list[int]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=service.url, headers=headers, timeout=60, limits=limits
        ) as http:
            polls = await asyncio.gather(*(poll(http) for _ in range(CLIENTS)))
        return [code for codes in polls for code in codes]

    assert Counter(asyncio.run(all_at_once())) == {200: CLIENTS * POLLS}
