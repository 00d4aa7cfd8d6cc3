"""SIGINT/SIGTERM during a run: the first asks for a checkpoint and a clean stop, a second stops
at once. A sweep's watchdog asks the same from another thread (``request_stop``). In a sweep's
worker process, one that comes outside any run is remembered for the next (``outside_runs``).

Light to import (the standard library only): a command's start (``kept_during_imports``) and a
worker process install their handlers here before anything heavy loads.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
START_UP_INTERRUPTED = "interrupted during start-up: nothing was trained"


@contextmanager
def handled_by(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Meanwhile SIGINT/SIGTERM go to ``handler``; then the handlers from before are back."""
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


@contextmanager
def kept_during_imports() -> Iterator[None]:
    """A command's first imports: a SIGINT/SIGTERM while torch and Hydra load waits for them to
    end, then stops the command with one line (exit 128 + signal). Raised inside torch's import,
    where its C++ code calls back into Python, a KeyboardInterrupt aborts the process
    ("terminate called ...")."""
    came: list[int] = []

    def keep(signum, frame) -> None:
        came.append(signum)

    with handled_by(keep):
        yield
    if came:
        print(START_UP_INTERRUPTED, file=sys.stderr)
        raise SystemExit(128 + came[0])


class Preempted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; its message says where it
    stopped and what continues it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class Interrupted(BaseException):
    """A second SIGINT/SIGTERM: stop at once, without the checkpoint the first one asks for.
    A BaseException, like KeyboardInterrupt, so that no handler of errors swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} again: stopped at once")
        self.exit_code = 128 + signum

    def explain(self, step: int, saved_step: int | None, resume: str) -> None:
        """Says where the run stopped and what can continue it (``resume``, the command that
        continues its checkpoint, if one was written)."""
        if saved_step is None:
            then = "no checkpoint was written yet: run the same command again"
        else:
            then = f"the checkpoint of step {saved_step} continues with `{resume}`"
        self.args = (f"{self.args[0]} at step {step}; {then}",)


@contextmanager
def stop_on_signals() -> Iterator[dict[str, int | None]]:
    """While open, SIGINT/SIGTERM ask the loop to stop (checkpoint, then exit) instead of killing
    it; a second signal interrupts at once. Only in the main thread (parallel launchers' workers
    skip)."""
    asked: dict[str, int | None] = {"signal": None}
    _open_requests.append(asked)
    _late["signal"] = None
    try:
        if threading.current_thread() is not threading.main_thread():
            yield asked
            return

        def handler(signum, frame):
            # Only a second real signal interrupts: a watchdog's request (``request_stop``) may
            # come first when the sweep's stop file is seen before this process's own copy of
            # the same Ctrl-C runs its handler.
            if asked.get("received") is not None:
                raise Interrupted(signum)
            asked["signal"] = signum
            asked["received"] = signum

        try:
            with handled_by(handler):
                came_before = take_signal_outside_runs()  # this worker's, as its run started
                if came_before is not None and asked.get("received") is None:
                    asked["signal"] = asked["received"] = came_before
                yield asked
        finally:  # once its handlers are gone: what this run received, for take_late_signal
            _late["signal"] = asked.get("received")
    finally:
        _open_requests.remove(asked)


# --------------------------------------------------------------------------------------------
# A sweep's worker process, outside its runs
# --------------------------------------------------------------------------------------------

_outside: dict[str, int | None] = {"signal": None}


def outside_runs() -> None:
    """In a sweep's worker process (a joblib worker's initializer, a population worker): a
    SIGINT/SIGTERM outside any run is remembered, not raised. Raised there (Python's default),
    it would end the worker mid-import or between two jobs, and joblib would then kill the
    other workers before their runs could checkpoint. The next run of this process stops at
    its first step (``stop_on_signals``), or its job does not start (``gan.cli.sweep_job``).

    Signals held back while the process started (``held``) arrive now."""

    def remember(signum, frame) -> None:
        keep_for_next_run(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, remember)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def keep_for_next_run(signum: int) -> None:
    """A SIGINT/SIGTERM that came outside any run (to a worker, or to a sweep's own process as
    its job prepared): the run about to start stops at its first step, with a checkpoint."""
    _outside["signal"] = signum


def take_signal_outside_runs() -> int | None:
    """The SIGINT/SIGTERM this worker received outside its runs since it was last asked, once."""
    signum, _outside["signal"] = _outside["signal"], None
    return signum


@contextmanager
def held() -> Iterator[None]:
    """Meanwhile SIGINT/SIGTERM wait in this thread, and a process started meanwhile begins
    with them held back (until it calls ``outside_runs``): a worker is spawned this way, so
    that no signal ends it while it imports."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


_late: dict[str, int | None] = {"signal": None}  # the last run's received signal, once it ended


def take_late_signal() -> int | None:
    """The SIGINT/SIGTERM the last run received (None: none), once: read after the run returned,
    it came after the last step, and a sweep's job then asks the sweep to stop all the same."""
    signum, _late["signal"] = _late["signal"], None
    return signum


_open_requests: list[dict[str, int | None]] = []  # the runs in progress, for request_stop


def stop_asked() -> bool:
    """True once the run in progress was asked to stop (a signal, or ``request_stop``)."""
    return any(asked["signal"] is not None for asked in _open_requests)


def request_stop(signum: int) -> bool:
    """Asks the run in progress to stop as a first ``signum`` would (checkpoint, then stop), from
    any thread (a sweep's watchdog); False if no run is in progress."""
    for asked in list(_open_requests):
        if asked["signal"] is None:
            asked["signal"] = signum
    return bool(_open_requests)
