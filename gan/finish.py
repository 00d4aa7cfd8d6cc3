"""Finish: what a run records once its loop ended: the summary's result and outcome, the W&B
summary and artifacts, and the one result line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gan import outcome as outcomes
from gan import quality, record, tracking
from gan.config import RunConfig
from gan.events import Evaluation
from gan.record import Ending
from gan.trainer import ACC_D, ACC_G, LOSS_D, LOSS_G, TrainResult

log = logging.getLogger(__name__)

SUMMARY_KEYS_IN_WANDB = (
    "status",
    "steps",
    "seconds",
    "steps_per_second",
    "diverged",
    "diverged_step",
    "outcome",
)


def record_result(
    summary: dict[str, Any],
    result: TrainResult,
    best: dict[str, Any],
    resumed: dict[str, Any] | None,
    logger: tracking.RunLogger,
) -> None:
    """The summary's result (``settle``) and the part of it the W&B summary holds."""
    settle(summary, result, best, resumed, logger.out_dir)
    logger.summarize({k: v for k, v in summary.items() if k in SUMMARY_KEYS_IN_WANDB})
    if result.status == Ending.stopped:
        logger.mark_preempted()


def settle(
    summary: dict[str, Any],
    result: TrainResult,
    best: dict[str, Any],
    resumed: dict[str, Any] | None,
    out_dir: Path,
) -> None:
    """The summary's result: status, steps, time, final values, the best FCD, and the outcome
    read from ``out_dir``'s metrics; ``resumed``: the checkpoint the run continued."""
    status = record.status_of(result.status)
    summary.update(status=status, steps=result.step, **run_time(result, resumed))
    summary.update(final=result.last, **best)
    if result.status == Ending.diverged:
        summary.update(diverged=True, diverged_step=result.diverged_step)
    if status in record.FINAL:  # a stopped run has come to nothing yet
        windows = outcomes.read_windows(Path(out_dir) / record.METRICS_FILE)
        summary["outcome"] = outcomes.outcome(windows, result.status)


def run_time(result: TrainResult, resumed: dict[str, Any] | None) -> dict[str, Any]:
    """``seconds`` and ``steps_per_second`` of the whole run's training; a resumed run also gets
    ``resumed``: the step it continued from, and this part's steps and seconds. When an earlier
    part's time is unknown (a checkpoint of an older version), ``seconds`` is this part's and
    ``seconds_of`` says so."""
    if not resumed:
        rate = result.step / max(result.seconds, 1e-9)
        return {"seconds": round(result.seconds, 3), "steps_per_second": round(rate, 2)}
    first_step = resumed["trainer"]["step"]
    part = {
        "from_step": first_step,
        "steps": result.step - first_step,
        "seconds": round(result.seconds, 3),
    }
    before = resumed.get("seconds")
    if before is None:
        rate = part["steps"] / max(result.seconds, 1e-9)
        return {
            "seconds": part["seconds"],
            "seconds_of": "the resumed part only (an older checkpoint kept no time)",
            "steps_per_second": round(rate, 2),
            "resumed": part,
        }
    total = before + result.seconds
    rate = result.step / max(total, 1e-9)
    return {"seconds": round(total, 3), "steps_per_second": round(rate, 2), "resumed": part}


def record_artifacts(
    cfg: RunConfig,
    logger: tracking.RunLogger,
    evaluation: Evaluation | None,
    result: TrainResult,
) -> None:
    """With ``logger.log_artifacts``: a finished run's final checkpoint, and the feature classifier
    its scores were computed with, aliased by its id (FCDs compare only under one classifier)."""
    if not (cfg.logger.log_artifacts and logger.wandb_run):
        return
    if result.status == Ending.finished:  # a stopped run resumes, a diverged one has no final state
        logger.log_artifact(
            cfg.out_dir / record.CHECKPOINT_FILE,
            name=f"checkpoint-{logger.wandb_run.id}",
            kind="model",
            aliases=("final",),
            metadata={"run_name": cfg.run_name, "arm": cfg.init.arm, "step": result.step},
        )
    if evaluation:
        classifier = evaluation.evaluator.classifier
        logger.log_artifact(
            quality.classifier_path(cfg.data),
            name=f"classifier-{cfg.data.name}",
            kind="classifier",
            aliases=(classifier.identity,),
            metadata={"identity": classifier.identity, "test_accuracy": classifier.test_accuracy},
        )


def log_result(cfg: RunConfig, summary: dict[str, Any], result: TrainResult) -> None:
    """One line: what happened, how fast, the last window's metrics, the best FCD, where."""
    if result.status == Ending.diverged:
        outcome = f"diverged at step {result.diverged_step} (a loss or weight went non-finite)"
    else:
        outcome = f"{result.step} steps"
    speed = f"{summary['steps_per_second']:.1f} steps/s"
    resumed = summary.get("resumed")
    if resumed and "seconds_of" in summary:
        speed += f"; the time of the part resumed at step {resumed['from_step']} alone"
    elif resumed:
        speed += (
            f"; resumed at step {resumed['from_step']}: {resumed['steps']} steps in "
            f"{resumed['seconds']:.1f} s"
        )
    parts = [
        f"done {cfg.run_name}: {outcome} in {summary['seconds']:.1f} s ({speed}), "
        f"{summary['outcome']}"
    ]
    last = result.last
    if last:
        parts.append(
            f"loss_D {last[LOSS_D]:.3f} loss_G {last[LOSS_G]:.3f} "
            f"acc_D {last[ACC_D]:.2f} acc_G {last[ACC_G]:.2f}"
        )
    if quality.FCD_BEST in summary:
        best, at = summary[quality.FCD_BEST], summary[quality.FCD_BEST_STEP]
        parts.append(f"best FCD {best:.2f} at step {at}")
    log.info("%s", " | ".join([*parts, str(cfg.out_dir)]))
