"""Progress bars that render well in terminals and notebooks (tqdm.auto), and stay quiet when
output is not a terminal and ASEARCHER_PROGRESS=0."""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar; disabled by ``ASEARCHER_PROGRESS=0``."""
    disable = os.environ.get("ASEARCHER_PROGRESS", "1") == "0"
    return tqdm(disable=disable, **kwargs)
