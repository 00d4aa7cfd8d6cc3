"""The run's side of the training loop (``gan.trainer.Events``): its evaluation on fixed noise
and the best FCD, its checkpoints, and stop requests from signals."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from gan import checkpoint, faults, nets, quality, tracking
from gan.config import RunConfig
from gan.trainer import GANTrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Scores G's images of fixed noise (one seeded draw per run) against the test split."""

    evaluator: quality.Evaluator
    noise: torch.Tensor  # (N, z_dim) on the device

    def score(self, generator: nets.Generator) -> dict[str, float]:
        return self.evaluator.score_generator(generator, self.noise)


class RunEvents:
    """The run's side of the training loop (``gan.trainer.Events``): evaluation and the best FCD,
    checkpoints, and stop requests from signals."""

    def __init__(
        self,
        cfg: RunConfig,
        trainer: GANTrainer,
        logger: tracking.RunLogger,
        evaluation: Evaluation | None,
        best: dict[str, Any],
        asked: dict[str, int | None],
        saved: dict[str, int | None],
        seconds_before: float | None = 0.0,
    ):
        self.cfg, self.trainer, self.logger = cfg, trainer, logger
        self.evaluation, self.best, self.asked = evaluation, best, asked
        self.saved = saved  # {"step": the last checkpoint written}, for a run stopped at once
        # Training seconds of the parts before this one (None: not recorded by an older
        # version), so a checkpoint carries the time of the whole run up to its step.
        self.seconds_before = seconds_before
        self.started = time.perf_counter()

    def seconds(self) -> float | None:
        """Training seconds of the whole run so far; None when an earlier part's are unknown."""
        if self.seconds_before is None:
            return None
        return self.seconds_before + time.perf_counter() - self.started

    def evaluate(self, step: int, generator: nets.Generator) -> None:
        if self.evaluation is not None:
            self.record_scores(step, self.evaluation.score(generator))

    def record_scores(self, step: int, scores: dict[str, float]) -> None:
        """Logs ``eval/*`` scores of step ``step`` and keeps the best FCD."""
        faults.point("evaluation")
        identity = self.evaluation.evaluator.classifier.identity
        self.logger.log(step, {**scores, quality.CLASSIFIER: identity})
        if not self.best or scores[quality.FCD] < self.best[quality.FCD_BEST]:  # GANs can worsen
            self.best.update({quality.FCD_BEST: scores[quality.FCD], quality.FCD_BEST_STEP: step})
            self.logger.summarize(self.best)

    def checkpoint(self, step: int) -> None:
        wandb_run = self.logger.wandb_run
        blob = {
            "trainer": self.trainer.state_dict(),
            "rng": checkpoint.rng_states(),
            "config": dict(self.cfg.resolved),
            "wandb_id": wandb_run.id if wandb_run else None,
            "metrics_offset": self.logger.metrics_offset(),
            "best": dict(self.best),
            "precision": self.trainer.precision,
            "threads": torch.get_num_threads(),
            "seconds": self.seconds(),
        }
        try:
            checkpoint.save(self.cfg.out_dir, blob)
            self.saved["step"] = step
        except OSError as err:  # e.g. a full disk: the previous checkpoint is still intact
            log.warning(
                "warning: checkpoint at step %d not written (%s); the last good one is kept",
                step,
                err,
            )

    def should_stop(self) -> bool:
        return self.asked["signal"] is not None
