"""The end of a multirun: one line per job that did not finish, the ablation report in
``<sweep dir>/report/``, and an exit status that says whether every job ran.

Registered as a Hydra callback in ``conf/config.yaml``. Each job leaves its outcome in its own
``summary.json`` (``train.py`` writes one even for a job refused as invalid), so this works the
same whichever launcher ran the jobs, in this process or elsewhere.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gan.errors import UserError

# Outcomes that do not fail a sweep: divergence is a result (some arms are meant to diverge).
ACCEPTED = ("finished", "diverged")


@dataclass(frozen=True)
class JobOutcome:
    job_dir: Path
    overrides: str  # the job's own overrides, comma-separated
    status: str  # finished | diverged | invalid | failed | preempted | running
    detail: str  # the error, the divergence step, or why the status is unknown


def job_outcomes(sweep_dir: Path) -> list[JobOutcome]:
    """Every job directory under ``sweep_dir`` (it has ``.hydra/overrides.yaml``), in order."""
    outcomes = []
    for overrides_file in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = ",".join(OmegaConf.load(overrides_file))
        outcomes.append(JobOutcome(job_dir, overrides, *_status(job_dir / "summary.json")))
    return sorted(outcomes, key=lambda o: _job_number(o.job_dir))


def _status(summary_file: Path) -> tuple[str, str]:
    if not summary_file.is_file():
        return "failed", "it ended before writing summary.json (killed, or crashed at start-up)"
    try:
        summary: dict[str, Any] = json.loads(summary_file.read_text())
    except (OSError, ValueError) as err:
        return "failed", f"summary.json is unreadable ({err})"
    status = summary.get("status", "failed")
    if status == "running":  # a job that stopped without updating its status was killed
        return "failed", "it was killed while running (summary.json still says running)"
    detail = summary.get("error") or (
        f"at step {summary['diverged_step']}" if summary.get("diverged_step") else ""
    )
    return status, detail


def _job_number(job_dir: Path) -> tuple[int, str]:
    head = job_dir.name.split("_", 1)[0]
    return (int(head), job_dir.name) if head.isdigit() else (1 << 30, job_dir.name)


def summarize(outcomes: list[JobOutcome]) -> tuple[list[str], bool]:
    """The lines to print (one per job that did not finish) and whether the sweep failed."""
    lines = []
    for o in outcomes:
        if o.status != "finished":
            detail = f": {o.detail}" if o.detail else ""
            lines.append(f"  {o.status:<9} {o.job_dir.name} ({o.overrides}){detail}")
    failed = any(o.status not in ACCEPTED for o in outcomes)
    counts = {
        s: sum(o.status == s for o in outcomes) for s in dict.fromkeys(o.status for o in outcomes)
    }
    head = f"sweep: {len(outcomes)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return [head, *lines], failed


def write_sweep_report(sweep_dir: Path) -> str:
    """Writes ``gan.report``'s report of the sweep into ``<sweep_dir>/report/``; returns one line
    saying where it is, or why there is none. Never raises: the jobs' results stand whatever
    happens to their report."""
    from gan import report

    out = Path(sweep_dir) / "report"
    try:
        runs, incomplete = report.load_runs([sweep_dir])
        out.mkdir(exist_ok=True)
        report.write_reports(runs, incomplete, out, threshold=None)
    except UserError as err:  # nothing finished, or runs that cannot be averaged
        return f"report: none written: {err}"
    except Exception as err:  # noqa: BLE001 - a report bug must not turn a sweep into a failure
        return (
            f"report: failed ({type(err).__name__}: {err}); "
            f"`python -m gan.report {sweep_dir}` shows the traceback"
        )
    return f"report: {out / 'report.html'} (and report.md, figures, summary.csv)"


class SweepSummary(Callback):
    """Prints the sweep's outcome per job, writes its report (``report: false`` turns that off,
    e.g. ``hydra.callbacks.sweep_summary.report=false``); exits 1 if a job failed other than by
    diverging."""

    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        lines, failed = summarize(job_outcomes(sweep_dir))
        # Printed, not logged: after the jobs, logging is Hydra's own (stdout, "[HYDRA]" lines).
        stream = sys.stderr if failed else sys.stdout
        print("\n".join(lines), file=stream, flush=True)
        if self.report:
            print(write_sweep_report(sweep_dir), flush=True)
        if failed:
            print(
                f"sweep {sweep_dir}: some jobs did not finish (above); exit status 1",
                file=stream,
                flush=True,
            )
            raise SystemExit(1)
