"""WsCycle's receive(): messages handed to a waiting receive() or queued, in order,
and none lost when the receive() is cancelled after its message was handed over."""

from __future__ import annotations

import asyncio

import pytest
from ferrocorn.asgi import WsCycle


def _msg(n: int) -> dict:
    return {"type": "websocket.receive", "text": str(n)}


async def _next(ws: WsCycle) -> dict:
    # Bounded: a lost message would otherwise leave the test waiting forever.
    return await asyncio.wait_for(ws.receive(), 5)


def _cycle() -> WsCycle:
    ws = WsCycle(conn=None, scope={"type": "websocket"})
    ws.queue.clear()  # past websocket.connect
    return ws


def test_messages_keep_their_order_between_waiter_and_queue() -> None:
    async def main() -> list[dict]:
        ws = _cycle()
        first = asyncio.ensure_future(ws.receive())
        await asyncio.sleep(0)
        assert ws.waiter is not None  # receive() is waiting
        ws.deliver(_msg(1))  # to the waiter
        ws.deliver(_msg(2))  # the waiter is done but has not run: queued
        return [await first, await _next(ws)]

    assert asyncio.run(main()) == [_msg(1), _msg(2)]


def test_cancelled_receive_keeps_a_message_it_was_handed() -> None:
    async def main() -> list[dict]:
        ws = _cycle()
        pending = asyncio.ensure_future(ws.receive())
        await asyncio.sleep(0)
        ws.deliver(_msg(1))
        ws.deliver(_msg(2))
        pending.cancel()  # before the task runs again: its message is not lost
        with pytest.raises(asyncio.CancelledError):
            await pending
        return [await _next(ws), await _next(ws)]

    assert asyncio.run(main()) == [_msg(1), _msg(2)]


def test_cancelled_idle_receive_leaves_nothing_behind() -> None:
    async def main() -> dict:
        ws = _cycle()
        pending = asyncio.ensure_future(ws.receive())
        await asyncio.sleep(0)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert ws.waiter is None and ws.queue == []
        ws.deliver(_msg(3))
        return await _next(ws)

    assert asyncio.run(main()) == _msg(3)
