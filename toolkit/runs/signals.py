"""SIGTERM as Ctrl-C: a cluster that pre-empts a job sends SIGTERM, and the run should stop as if interrupted.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``; SIGTERM's default ends the process at once,
with no results.json status and the run directory's lock file left naming a dead process. Inside
:func:`terminate_as_interrupt` SIGTERM raises ``KeyboardInterrupt`` too, so a pre-empted run keeps
its checkpoint, writes ``"status": "interrupted"``, releases its lock and exits as Ctrl-C does.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt``; the previous handler comes back after it.

    Signal handlers can only be set from the main thread: elsewhere (a run in a worker thread) the
    block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["terminate_as_interrupt"]
