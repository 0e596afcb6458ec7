"""Ctrl-C (and dlpipe's SIGTERM, raised as KeyboardInterrupt) through Lightning: one guard for every Trainer call.

Lightning's `Trainer.fit/validate/test/predict` catch a KeyboardInterrupt, run their graceful shutdown, set SIGINT to
be ignored and call `sys.exit(1)`; the interrupt survives only as that `SystemExit`'s `__context__`. Wrap each Trainer
call in `interrupts_kept()` to get the KeyboardInterrupt back (stages exit 130, runs end KILLED) and SIGINT handled
again as it was before the call.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def interrupted_exit(exc: BaseException) -> bool:
    """True for the `SystemExit` Lightning raises after it caught a KeyboardInterrupt inside a Trainer call."""
    return isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Re-raise an interrupt that a Trainer call inside the block turned into `sys.exit(1)` as KeyboardInterrupt.

    Any other `SystemExit` passes unchanged. On an interrupt, the SIGINT handler in place when the block began is
    restored (Lightning leaves SIGINT ignored, so a later Ctrl-C in the same process would do nothing).
    """
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    except SystemExit as exc:
        if not interrupted_exit(exc):
            raise
        if main_thread and sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        raise KeyboardInterrupt(*exc.__context__.args) from exc


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block are re-raised, to their own handlers, when it ends (main thread
    only: other threads never see them as exceptions)."""
    signums = (signal.SIGINT, signal.SIGTERM)
    handlers = {s: signal.getsignal(s) for s in signums}
    if threading.current_thread() is not threading.main_thread() or None in handlers.values():
        yield
        return
    caught: list[int] = []
    for s in signums:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)
