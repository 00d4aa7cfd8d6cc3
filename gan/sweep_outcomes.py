"""What a sweep's jobs came to, read from their directories: each job's outcome (its
``summary.json``, or none), the summary's lines, the jobs a stop or a kill left to settle, and the
command that completes the sweep. ``gan.sweeps`` prints them at the sweep's end."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from gan import console, files, record
from gan.record import Status

log = logging.getLogger(__name__)


def holds_only_hydra_files(job_dir: Path) -> bool:
    """True for a job directory that holds only what Hydra writes before the job's function runs:
    the job did not start (a worker ended as Hydra set it up, or it was told not to start)."""
    job_dir = Path(job_dir)
    return job_dir.is_dir() and {p.name for p in job_dir.iterdir()} <= {
        record.HYDRA_DIR,
        record.LOG_FILE,
    }


def discard_unstarted(job_dir: Path) -> None:
    """Removes the directory Hydra made for a job that did not start, if it holds nothing else
    (a job of an earlier launch keeps its results)."""
    if holds_only_hydra_files(job_dir):
        shutil.rmtree(job_dir, ignore_errors=True)


def job_failed(out_dir: Path, status: Status, error: BaseException) -> dict:
    """In a multirun, a job that cannot run is a result: its summary.json says why, and the sweep
    goes on (``SweepSummary`` lists it at the end and sets the exit status)."""
    summary = record.Summary(out_dir).read()
    summary.update(
        status=status,
        error=f"{type(error).__name__}: {error}" if status == Status.failed else str(error),
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        record.Summary(out_dir).write(summary)
    except OSError as err:  # a read-only or vanished job dir: the sweep lists it as failed
        log.error("error: %s: %s not written (%s)", out_dir, record.SUMMARY_FILE, err)
    return summary


def settle_killed_jobs(outcomes: list[JobOutcome], why: str) -> None:
    """Jobs whose process was killed (no live claim, summary ``running`` or none): their summary
    says ``failed`` with ``why``, their stale claim goes, and one killed before it wrote anything
    but Hydra's files is discarded (listed as not started)."""
    for o in outcomes:
        if o.status == record.NOT_STARTED:
            discard_unstarted(o.job_dir)
            continue
        if o.status != Status.failed or not o.job_dir.is_dir():
            continue
        if not files.remove_stale_claim(o.job_dir):
            continue  # a live process (another launch) holds it
        summary_file = record.Summary(o.job_dir)
        discard_unstarted(o.job_dir)  # its stale claim was all it held besides Hydra's files
        if not o.job_dir.is_dir():
            continue
        if not summary_file.exists():
            summary_file.write({"status": Status.failed, "error": why})
            continue
        try:
            summary = summary_file.load()
        except (OSError, ValueError):
            continue
        if summary.get("status") == Status.running:
            summary_file.write({**summary, "status": Status.failed, "error": why})


UNNUMBERED = 1 << 30  # the number of a job directory whose name does not start with one


@dataclass(frozen=True)
class JobOutcome:
    job_dir: Path
    overrides: str  # the job's own overrides, comma-separated
    status: str  # a record.Status, or record.NOT_STARTED
    detail: str  # the error, the divergence step, or why the status is unknown


def job_outcomes(sweep_dir: Path, planned: list[str] | None = None) -> list[JobOutcome]:
    """Every job directory under ``sweep_dir`` (it has ``.hydra/overrides.yaml``), in order; with
    ``planned`` (every job's overrides, by job number), the jobs that left no directory too, as
    not started."""
    outcomes = []
    for overrides_file in sorted(Path(sweep_dir).glob(f"*/{record.OVERRIDES_FILE}")):
        job_dir = overrides_file.parent.parent
        try:
            overrides = ",".join(OmegaConf.load(overrides_file))
        except Exception as err:  # noqa: BLE001 - a damaged file is one job's problem
            if holds_only_hydra_files(job_dir):  # its worker ended as Hydra wrote it
                outcomes.append(JobOutcome(job_dir, "?", record.NOT_STARTED, ""))
            else:
                outcomes.append(JobOutcome(job_dir, "?", Status.failed, f"overrides.yaml: {err}"))
            continue
        outcomes.append(JobOutcome(job_dir, overrides, *_status(job_dir)))
    seen = {_job_number(o.job_dir)[0] for o in outcomes}
    # A job directory named otherwise (hydra.sweep.subdir without the job's number) is matched
    # to its planned job by its overrides.
    named = {o.overrides for o in outcomes if _job_number(o.job_dir)[0] == UNNUMBERED}
    for number, overrides in enumerate(planned or []):
        if number not in seen and overrides not in named:
            not_started = JobOutcome(
                Path(sweep_dir) / f"{number}_", overrides, record.NOT_STARTED, ""
            )
            outcomes.append(not_started)
    return sorted(outcomes, key=lambda o: _job_number(o.job_dir))


def _status(job_dir: Path) -> tuple[str, str]:
    summary_file, name = record.Summary(job_dir), record.SUMMARY_FILE
    if holds_only_hydra_files(job_dir):  # no summary.json either
        return record.NOT_STARTED, ""
    if not summary_file.exists():
        return Status.failed, f"it ended before writing {name} (killed, or crashed at start-up)"
    try:
        summary = summary_file.load()
    except record.NotASummary:
        return Status.failed, f"{name} holds no summary"
    except (OSError, ValueError) as err:
        return Status.failed, f"{name} is unreadable ({err})"
    status = summary.get("status", Status.failed)
    claim = job_dir / files.CLAIM_FILE
    if status == Status.running and claim.exists() and not files.claim_is_stale(job_dir):
        return Status.running, "still running in another process (it holds the directory's claim)"
    if status == Status.running:  # a job that stopped without updating its status was killed
        return Status.failed, f"it was killed while running ({name} still says running)"
    detail = summary.get("error") or (
        f"at step {summary['diverged_step']}" if summary.get("diverged_step") else ""
    )
    return status, detail


def _job_number(job_dir: Path) -> tuple[int, str]:
    head = job_dir.name.split("_", 1)[0]
    return (int(head), job_dir.name) if head.isdigit() else (UNNUMBERED, job_dir.name)


def summarize(outcomes: list[JobOutcome]) -> tuple[list[str], bool]:
    """The lines to print (one per job that did not finish) and whether the sweep failed."""
    lines = []
    for o in outcomes:
        if o.status != Status.finished:
            detail = f": {o.detail}" if o.detail else ""
            lines.append(f"  {o.status:<9} {o.job_dir.name} ({o.overrides}){detail}")
    failed = any(o.status not in record.FINAL for o in outcomes)
    counts = {
        s: sum(o.status == s for o in outcomes) for s in dict.fromkeys(o.status for o in outcomes)
    }
    head = f"sweep: {len(outcomes)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return [head, *lines], failed


def rerun_command(sweep_dir: Path) -> str:
    """This sweep's command line, into the same sweep directory: it completes the jobs that did
    not finish."""
    args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
    from gan.checkpoint import hydra_value

    args.append(f"hydra.sweep.dir={hydra_value(str(sweep_dir))}")
    return " ".join([console.train_command(), *map(shlex.quote, args)])
