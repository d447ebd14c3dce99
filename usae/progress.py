"""Progress bars, shown only when stderr is a terminal.

A job's stderr captured to a file would otherwise get every redraw of the bar, joined by
carriage returns into one line of tens of thousands of characters; there the log records
say how far a stage is (training: a row every ``log_every`` steps).
"""

from __future__ import annotations

from typing import Any, Iterable

from tqdm.auto import tqdm

REDRAW_S = 2.0  # seconds between redraws: a bar costs nothing next to a step


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless its output (stderr by default) is a terminal."""
    kwargs.setdefault("mininterval", REDRAW_S)
    return tqdm(iterable, disable=None, **kwargs)  # None: tqdm's own "only on a TTY"
