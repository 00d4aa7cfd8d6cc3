"""The hand-off between a sweep's jobs and the population launcher.

While the launcher gathers a sweep (``gathering``), a job that passed every check is enrolled
instead of trained: ``gan.run.run`` hands it over here and returns at once, and the launcher
trains the gathered jobs in populations afterwards. Outside a gathering nothing changes. The
checks of what a population cannot honour (trainer options, the launcher's own) live here too:
this module imports nothing heavy, so a sweep's first checks can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from gan.errors import UserError

# The registered launcher (Hydra takes launchers only from the hydra_plugins namespace).
TARGET = "hydra_plugins.gan_population_launcher.population_launcher.PopulationLauncher"

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


def check_launcher_options(max_members: int, memory_fraction: float, n_jobs: int | None) -> None:
    """Refuses ``hydra.launcher`` options out of range (``gan.population.launcher``'s)."""
    if max_members < 1 or not 0 < memory_fraction <= 1:
        raise UserError(
            "hydra.launcher.max_members must be >= 1 and hydra.launcher.memory_fraction in "
            f"(0, 1], got {max_members} and {memory_fraction}"
        )
    if n_jobs is not None and n_jobs < 1:
        raise UserError(
            f"hydra.launcher.n_jobs must be >= 1 (populations trained at once), or null for "
            f"one per trainer.threads CPU cores; got {n_jobs}"
        )


def check_sweep_options(config: DictConfig) -> None:
    """The launcher's options, when the sweep uses it, checked before Hydra builds it (whose
    own report of an error raised in the constructor is a wrapped repr)."""
    options = config.hydra.launcher
    if options.get("_target_") == TARGET:
        check_launcher_options(options.max_members, options.memory_fraction, options.n_jobs)


def enroll(cfg: Any, env: Any, on_accepted: Callable[[], None] | None) -> dict | None:
    """Enrolls a checked job while gathering (returns its placeholder result), else None."""
    if _gathered is None:
        return None
    check_population_options(cfg.trainer)
    _gathered.append(Enrolled(cfg, env, on_accepted))
    return {"status": ENROLLED, "run_name": cfg.run_name}
