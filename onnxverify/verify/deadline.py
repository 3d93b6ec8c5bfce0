"""Time limits: the exceptions that end a verification early, and a SIGALRM guard."""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

import numpy as np

__all__ = ["TimeUp", "Decided", "alarm"]


class TimeUp(BaseException):
    """Raised when the budget is spent (BaseException: ``except Exception`` won't swallow it)."""


class Decided(Exception):
    def __init__(self, verdict):
        self.verdict = verdict


@contextmanager
def alarm(deadline: float):
    """Raise :class:`TimeUp` in the main thread at ``deadline`` (time.monotonic)."""
    if not np.isfinite(deadline) or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise TimeUp()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
