"""The run record: what a run directory holds, by name, and what its summary.json says.

Every other module takes the names of a run's files from here, its status words from ``Status``,
its outcome words from ``Outcome``, and reads and writes summary.json through ``Summary``. The
record's JSON files are strict JSON: a non-finite number is written as the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"`` (``strict_json``), which ``float()`` reads back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from gan.files import atomic_file

# The entries of a run directory.
METRICS_FILE = "metrics.jsonl"  # one strict-JSON object per log step, {"step": N, ...}
INIT_REPORT_FILE = "init_report.json"  # the init table: one entry per initialized tensor
SUMMARY_FILE = "summary.json"  # the run's identity, status and result (``Summary``)
CHECKPOINT_FILE = "checkpoint.pt"  # the state a resume continues (``gan.checkpoint``)
SAMPLES_DIR = "samples"  # sample grids, one PNG per sampled step (``sample_file``)
LOG_FILE = "train.log"  # Hydra's job log (hydra.job.name=train); resumes and members add to it
HYDRA_DIR = ".hydra"  # Hydra's files of the job:
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"  # its command-line overrides
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"  # its composed config


def sample_file(run_dir: Path | str, step: int) -> Path:
    """Where the sample grid of ``step`` goes."""
    return Path(run_dir) / SAMPLES_DIR / f"step_{step:07d}.png"


def sample_files(run_dir: Path | str) -> list[Path]:
    """The run's sample grids, in step order."""
    return sorted((Path(run_dir) / SAMPLES_DIR).glob("step_*.png"))


def sample_step(path: Path) -> int:
    """The step of a sample grid ``sample_file`` named."""
    return int(Path(path).stem.removeprefix("step_"))


class Word(str, Enum):
    """A closed set of words that behave as plain strings in JSON, f-strings and comparisons.

    Members are named as their values: W&B records an Enum by its name, and an Enum hashes by
    its name, so a member and its word are the same dict key.
    """

    def __str__(self) -> str:
        return str(self.value)


class Status(Word):
    """What summary.json's ``status`` says of a run."""

    running = "running"  # training now, or killed while training (no live claim)
    finished = "finished"
    diverged = "diverged"  # a loss or weight went non-finite: a result, not a failure
    preempted = "preempted"  # stopped on a signal; its checkpoint resumes it
    failed = "failed"  # crashed; ``error`` says how
    invalid = "invalid"  # refused before training (a sweep's job); ``error`` says why


# A run that came to its end: its summary holds its result and outcome, a sweep counts it as done
# (divergence is a result: some arms are meant to diverge), and only more steps continue it.
FINAL = (Status.finished, Status.diverged)
# A sweep's job that left no directory, or one holding only Hydra's files: never in a summary.json
NOT_STARTED = "not started"


class Outcome(Word):
    """What a run that came to its end came to (summary.json's ``outcome``; ``gan.outcome``)."""

    trained = "trained"
    collapsed = "collapsed"
    stuck = "stuck"
    diverged = "diverged"


class Ending(Word):
    """How the training loop ended (``gan.trainer.TrainResult.status``)."""

    finished = "finished"
    diverged = "diverged"
    stopped = "stopped"  # asked to stop (a signal), after writing its checkpoint


# The run's status after its loop ended: a stopped run can resume, so it is preempted.
STATUS_OF_ENDING = {
    Ending.finished: Status.finished,
    Ending.diverged: Status.diverged,
    Ending.stopped: Status.preempted,
}


def status_of(ending: str) -> Status:
    """The run's status for the loop's ``ending``."""
    return STATUS_OF_ENDING[Ending(ending)]


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # str(float) → its word


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float as the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"``: strict JSON readers accept the files, and ``float()`` reads them back."""
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[str(value)]
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Writes strict JSON atomically: a reader never sees a half-written file."""
    with atomic_file(path) as f:
        f.write((json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n").encode())


class NotASummary(ValueError):
    """summary.json holds JSON, but not an object."""


class Summary:
    """A run's summary.json, and the only reader and writer of it."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / SUMMARY_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, Any]:
        """The summary; OSError if it cannot be read, ValueError if it is not JSON, NotASummary
        if it is JSON but not an object."""
        summary = json.loads(self.path.read_text())
        if not isinstance(summary, dict):
            raise NotASummary(f"{self.path} holds no summary")
        return summary

    def read(self) -> dict[str, Any]:
        """The summary; {} if there is none, or none that can be read."""
        try:
            return self.load()
        except (OSError, ValueError):
            return {}

    def final_status(self) -> Status | None:
        """The run's status if it is final (``FINAL``), else None: a run killed after its last
        checkpoint but before its summary has not ended, and resuming it writes the summary."""
        status = self.read().get("status")
        return Status(status) if status in FINAL else None

    def write(self, summary: Mapping[str, Any]) -> None:
        write_json(self.path, summary)
