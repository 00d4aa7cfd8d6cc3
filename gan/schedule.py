"""When a training loop does what: logging windows, samples, diagnostics, evaluation and
checkpoints over steps 1..N, from a run's trainer section."""

from __future__ import annotations

from dataclasses import dataclass

from gan.config import TrainerConfig

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """When the loop does what, over steps 1..``steps``. A period of 0 turns a periodic task off."""

    steps: int
    log_every: int
    sample_every: int
    diag_every: int = 0
    eval_every: int = 0
    ckpt_every: int = 0

    @classmethod
    def of(cls, trainer: TrainerConfig) -> Schedule:
        """A run's schedule: its trainer section's length and periods."""
        return cls(
            steps=trainer.steps,
            log_every=trainer.log_every,
            sample_every=trainer.sample_every,
            diag_every=trainer.diag_every,
            eval_every=trainer.eval_every,
            ckpt_every=trainer.ckpt_every,
        )

    def due(self, every: int, step: int) -> bool:
        """Every ``every`` steps and at the last one; never when ``every`` is 0."""
        return every > 0 and (step % every == 0 or step == self.steps)

    def checkpoint_due(self, step: int) -> bool:
        """The last step always checkpoints, whatever the period."""
        return step == self.steps or (self.ckpt_every > 0 and step % self.ckpt_every == 0)

    def weights_read(self, step: int) -> bool:
        """Whether samples, evaluation or a checkpoint read the weights after step ``step``."""
        return (
            self.due(self.sample_every, step)
            or self.due(self.eval_every, step)
            or self.checkpoint_due(step)
        )

    def diag_due(self, step: int) -> tuple[bool, bool]:
        """(scalars, histograms) for step ``step``. Scalars are recorded during steps 1,
        diag_every + 1, … and the last (logged at the updates made before: 0, diag_every, …,
        steps - 1), so a run always has its end state; histograms at the first and last step."""
        if not self.diag_every:
            return False, False
        last = step == self.steps
        return (step - 1) % self.diag_every == 0 or last, step == 1 or last
