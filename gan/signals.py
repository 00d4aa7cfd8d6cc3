"""SIGINT/SIGTERM during a run: the first asks for a checkpoint and a clean stop, a second stops
at once. A sweep's watchdog asks the same from another thread (``request_stop``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from gan import checkpoint


class Preempted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: str):
        super().__init__(
            f"{signal.Signals(signum).name} at step {step}: checkpoint written in {run_dir}; "
            f"continue with `{checkpoint.resume_command(run_dir)}`"
        )
        self.exit_code = 128 + signum


class Interrupted(BaseException):
    """A second SIGINT/SIGTERM: stop at once, without the checkpoint the first one asks for.
    A BaseException, like KeyboardInterrupt, so that no handler of errors swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} again: stopped at once")
        self.exit_code = 128 + signum

    def explain(self, step: int, saved_step: int | None, run_dir) -> None:
        """Says where the run stopped and what can continue it."""
        if saved_step is None:
            then = "no checkpoint was written yet: run the same command again"
        else:
            then = (
                f"the checkpoint of step {saved_step} continues with "
                f"`{checkpoint.resume_command(run_dir)}`"
            )
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

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield asked
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            _late["signal"] = asked.get("received")
    finally:
        _open_requests.remove(asked)


_late: dict[str, int | None] = {"signal": None}  # the last run's received signal, once it ended


def take_late_signal() -> int | None:
    """The SIGINT/SIGTERM the last run received (None: none), once: read after the run returned,
    it came after the last step, and a sweep's job then asks the sweep to stop all the same."""
    signum, _late["signal"] = _late["signal"], None
    return signum


_open_requests: list[dict[str, int | None]] = []  # the runs in progress, for request_stop


def request_stop(signum: int) -> bool:
    """Asks the run in progress to stop as a first ``signum`` would (checkpoint, then stop), from
    any thread (a sweep's watchdog); False if no run is in progress."""
    for asked in list(_open_requests):
        if asked["signal"] is None:
            asked["signal"] = signum
    return bool(_open_requests)
