"""The message writer on real PostgreSQL: a resend racing the first send through another node."""

from __future__ import annotations

import asyncio

from icp.config import Settings
from icp.messaging.writer import MessageWriter, Outgoing
from icp.store import database, eventlog
from icp.store.eventlog import NewEvent


def _send(client_id: str) -> Outgoing:
    return Outgoing("broadcast:hki-fire", "unit:E1", client_id, b"same message", "normal", None,
                    NewEvent("message.sent", "channel/broadcast:hki-fire", {"text": "on my way"}, visibility=()))


async def test_one_client_id_sent_through_two_nodes_at_once_is_one_message(db_url: str) -> None:
    pool = await database.create_pool(db_url, Settings(pool_min=2, pool_max=6))
    nodes = [MessageWriter(pool), MessageWriter(pool)]  # two nodes' writers on one database
    for node in nodes:
        node.start()
    try:
        # Both writers queue behind the append lock, held here; the one that gets it second must
        # see what the first committed while it waited (its look-up runs after the lock).
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", eventlog.APPEND_LOCK_KEY)
            sends = [asyncio.create_task(node.write(_send("c-1"))) for node in nodes]
            await asyncio.sleep(0.5)
            assert not any(s.done() for s in sends)
        first, second = await asyncio.wait_for(asyncio.gather(*sends), 10)
        assert first.seq == second.seq and sorted([first.duplicate, second.duplicate]) == [False, True]
        assert await pool.fetchval("SELECT count(*) FROM messages WHERE client_id = 'c-1'") == 1
    finally:
        for node in nodes:
            await node.stop()
        await pool.close()
