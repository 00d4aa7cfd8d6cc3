"""Named fault points, for the fault-injection tests: nothing happens unless ``GAN_FAULT`` is set.

``GAN_FAULT=<point>:<signal>[@<n>]`` makes the process send itself the signal (SIGTERM, SIGINT or
KILL) the n-th time (default: the first) it passes ``point(<point>)``. The points sit where a real
interruption would hurt most: see ``POINTS``. ``<point>:HOLD[@<n>]`` instead holds the run there
until it is asked to stop (its signal, or a sweep's watchdog), at most ``HOLD_SECONDS``: a test's
signal then finds it training, however fast or slow the machine.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "GAN_FAULT"
HOLD = "HOLD"
HOLD_SECONDS = 120.0
POINTS = (
    "sweep_job",  # a sweep's job in its process, before its checks: outside any run
    "data_load",  # after the training split is loaded, before anything is written
    "wandb_init",  # after the logger (and W&B) started
    "evaluation",  # in the middle of an evaluation
    "checkpoint_write",  # after the temporary checkpoint file is written, before its rename
    "summary",  # after training, before summary.json is written
)
_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Marks fault point ``name``; signals this process if ``GAN_FAULT`` asks for it here."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, what = spec.partition(":")
    what, _, nth = what.partition("@")
    if where not in POINTS or (what not in ("KILL", HOLD, *signal.Signals.__members__)):
        # A typo must not pass for a test whose fault never happened.
        raise RuntimeError(
            f"{ENV}={spec!r}: expected <point>:<SIGNAL|KILL|HOLD>[@n], points {POINTS}"
        )
    if where != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != int(nth or 1):
        return
    if what == HOLD:
        _hold()
        return
    signum = signal.SIGKILL if what == "KILL" else signal.Signals[what]
    os.kill(os.getpid(), signum)


def _hold() -> None:
    from gan import signals

    deadline = time.monotonic() + HOLD_SECONDS
    while not signals.stop_asked() and time.monotonic() < deadline:
        time.sleep(0.05)
