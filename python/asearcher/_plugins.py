"""Python reward plugins: the :func:`reward_plugin` decorator and what a plugin receives.

The engine calls each plugin on a thread of its own (never on its async workers), in batches
gathered across concurrent trajectories. A plugin is sync or async, per item or batched:

- per item: ``fn(trajectory, answers) -> float``, once per trajectory;
- batched: ``fn(trajectories, answers_lists) -> list[float]``, once per batch.

An exception fails the trajectories it concerns (the traceback is kept in their ``errors``) and
the run goes on. ``KeyboardInterrupt`` / ``SystemExit`` raised by a plugin also stop it: it is
not called again and later trajectories fail with a message saying so.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute the decorator sets; the Rust side reads it.
SPEC_ATTR = "__asearcher_reward__"


@overload
def reward_plugin(fn: F, /) -> F: ...
@overload
def reward_plugin(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    batched: bool = False,
    max_batch: int = 64,
    max_wait_ms: int = 20,
) -> Callable[[F], F]: ...
def reward_plugin(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    batched: bool = False,
    max_batch: int = 64,
    max_wait_ms: int = 20,
) -> Any:
    """Marks a function as a reward plugin; use bare (``@reward_plugin``) or with options.

    ``name`` is the key its score is recorded under in ``trajectory.rewards`` (default: the
    function's name). ``batched``: the function takes lists (see the module docs). Batches hold
    up to ``max_batch`` trajectories and close ``max_wait_ms`` after their first one. The
    function is returned unchanged (still callable), with ``__asearcher_reward__`` set.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"reward_plugin: name must be a non-empty string, got {name!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"reward_plugin: max_batch must be an integer >= 1, got {max_batch!r}")
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, int) or max_wait_ms < 0:
        raise ValueError(f"reward_plugin: max_wait_ms must be an integer >= 0, got {max_wait_ms!r}")

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"reward_plugin: {f!r} is not callable")
        spec = {
            "name": name if name is not None else getattr(f, "__name__", type(f).__name__),
            "batched": bool(batched),
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
        }
        setattr(f, SPEC_ATTR, spec)
        return f

    return mark if fn is None else mark(fn)


# Helpers the Rust side calls on the plugin's thread.


def _is_awaitable(value: Any) -> bool:
    return inspect.isawaitable(value)


async def _settle(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except BaseException as exc:  # recorded by the caller; KeyboardInterrupt stops the plugin
        return exc


async def _gather_results(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
    """Awaits all together; any exception (``KeyboardInterrupt`` too) is returned in its slot."""
    return await asyncio.gather(*(_settle(a) for a in awaitables))


def _format_exception(exc: BaseException, tb: TracebackType | None) -> tuple[str, str]:
    """``("<Type>: <msg>", formatted traceback)``; ``tb`` defaults to ``exc.__traceback__``."""
    message = f"{type(exc).__name__}: {exc}"
    tb = tb if tb is not None else exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return message, text
