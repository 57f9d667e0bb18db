"""Awaitables made outside a running event loop: ``asyncio.run(engine.anext_batch(2))`` builds
its argument before the loop exists, so the native side returns ``deferred(make)``, a coroutine
that creates the asyncio future on first await, inside the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


async def deferred(make: Callable[[], Any]) -> Any:
    return await make()
