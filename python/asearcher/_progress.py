"""Progress bars: tqdm (``tqdm.auto``) in terminals and notebooks; when stderr is neither (a log
file, a pipe, a batch job), a plain line every ``ASEARCHER_PROGRESS_INTERVAL`` seconds (default
10) instead of a stream of carriage returns. ``ASEARCHER_PROGRESS=0`` turns progress off."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm

T = TypeVar("T")

#: Seconds between progress lines when output is a log.
DEFAULT_LOG_INTERVAL_S = 10.0
_LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar (disabled by ``ASEARCHER_PROGRESS=0``), as lines when stderr is a log."""
    disable = os.environ.get("ASEARCHER_PROGRESS", "1") == "0"
    if disable or _interactive():
        return tqdm(disable=disable, **kwargs)
    interval = float(os.environ.get("ASEARCHER_PROGRESS_INTERVAL", DEFAULT_LOG_INTERVAL_S))
    return plain_tqdm(
        file=_Lines(sys.stderr),
        mininterval=interval,
        maxinterval=max(interval, 10.0) * 10,
        miniters=1,
        bar_format=_LOG_FORMAT,
        ascii=True,
        dynamic_ncols=False,
        **kwargs,
    )


def with_count_progress(
    run: Callable[[Callable[[int], object] | None], T],
    progress: bool | Callable[[int], object],
    desc: str,
    unit: str,
) -> T:
    """``run(report)`` where ``report(n)`` takes a running count: ``progress`` itself when it is
    a callable, a bar's update when it is true, ``None`` when it is false."""
    if callable(progress):
        return run(progress)
    if not progress:
        return run(None)
    with progress_bar(desc=desc, unit=unit) as bar:
        return run(lambda n: bar.update(n - bar.n))


def _interactive() -> bool:
    """Whether a live bar renders: a terminal on stderr, or a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Lines(io.TextIOBase):
    """A stream that turns tqdm's carriage-return redraws into one line per redraw."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, s: str) -> int:
        text = s.replace("\r", "").replace("\x1b[A", "").strip()
        if text:
            self._stream.write(text + "\n")
            self._stream.flush()
        return len(s)

    def flush(self) -> None:
        self._stream.flush()
