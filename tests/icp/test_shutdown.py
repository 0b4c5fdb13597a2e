"""Graceful shutdown of a real `icp serve` process on SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import asyncpg
import pytest

from tests.process import free_port, icp_env, serving


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_requests_and_closes_websockets_with_1001(
    db_url: str, make_token  # type: ignore[no-untyped-def]
) -> None:
    token = await make_token("admin")
    port = free_port()
    env = icp_env(ICP_DATABASE_URL=db_url, ICP_HOST="127.0.0.1")
    with serving(env, port) as proc:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            await ws.send_json({"op": "hello", "token": token})
            welcome = await ws.receive_json(timeout=5)
            assert welcome["op"] == "welcome"

            # An in-flight request: a login whose handler is blocked inside the database (we hold
            # a lock on the users table) when SIGTERM arrives.
            blocker = await asyncpg.connect(db_url)
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            login = asyncio.create_task(http.post(
                f"http://127.0.0.1:{port}/api/v1/session", json={"username": "nobody", "password": "x" * 20}
            ))
            await asyncio.sleep(0.5)
            assert not login.done()

            proc.send_signal(signal.SIGTERM)

            closing = await ws.receive(timeout=10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert ws.close_code == 1001

            await asyncio.sleep(0.3)
            # New connections are no longer accepted…
            with pytest.raises(OSError):
                _, w2 = await asyncio.open_connection("127.0.0.1", port)
                w2.close()
            # …but the in-flight request completes with a real answer once it can.
            await lock.rollback()
            await blocker.close()
            response = await asyncio.wait_for(login, 10)
            assert response.status == 401
            assert (await response.json(content_type=None))["code"] == "unauthorized"
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
