"""Progress of a long stage: each pretraining epoch, each probe fit.

Every line goes to stderr, and to each listener registered with :func:`listening`. The
CLI registers Dagster Pipes' log when an orchestrator launched the stage, so the lines also
appear in the run's event log while the stage runs; byol_core itself knows no orchestrator.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_listeners: list[Callable[[str], None]] = []


def report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    for listener in list(_listeners):
        listener(line)


@contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Send every progress line to ``listener`` as well, while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
