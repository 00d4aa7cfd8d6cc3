"""The hand-off between a sweep's jobs and the population launcher.

While the launcher gathers a sweep (``gathering``), a job that passed every check is enrolled
instead of trained: ``gan.run.run`` hands it over here and returns at once, and the launcher
trains the gathered jobs in populations afterwards. Outside a gathering nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gan.errors import UserError

ENROLLED = "enrolled"  # the status a gathered job's task returns until its population has run


@dataclass
class Enrolled:
    cfg: Any  # gan.config.RunConfig
    env: Any  # gan.run.Environment
    on_accepted: Callable[[], None] | None


_gathered: list[Enrolled] | None = None


@contextmanager
def gathering() -> Iterator[list[Enrolled]]:
    """While open, jobs that pass their checks are enrolled into the returned list."""
    global _gathered
    _gathered = []
    try:
        yield _gathered
    finally:
        _gathered = None


def check_population_options(trainer: Any) -> None:
    """Refuses trainer options a population cannot honour (a job asking for them is invalid)."""
    if trainer.compile:
        raise UserError(
            "trainer.compile=true: hydra/launcher=population trains its own batched networks, "
            "uncompiled; use trainer.compile=false, or another launcher (basic, joblib)"
        )
    if trainer.channels_last == "on":
        raise UserError(
            "trainer.channels_last=on: a population lays its convolutions out per member, not "
            "in channels_last; use trainer.channels_last=auto or off, or another launcher"
        )


def enroll(cfg: Any, env: Any, on_accepted: Callable[[], None] | None) -> dict | None:
    """Enrolls a checked job while gathering (returns its placeholder result), else None."""
    if _gathered is None:
        return None
    check_population_options(cfg.trainer)
    _gathered.append(Enrolled(cfg, env, on_accepted))
    return {"status": ENROLLED, "run_name": cfg.run_name}
