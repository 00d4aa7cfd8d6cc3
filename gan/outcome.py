"""What a run came to, beyond "finished": trained, collapsed, stuck or diverged.

Read from the logging windows the loop already writes (``train/*`` lines of metrics.jsonl, each the
mean over ``trainer.log_every`` steps), averaged over the run's final stretch (its last fifth), so
that one noisy window does not decide and an early crisis the run recovered from does not count:

- ``diverged``: the loop stopped on a non-finite loss or weight (status ``diverged``), or a final
  window holds a non-finite value.
- ``stuck``: nothing learns: over the final stretch the discriminator gives every sample the same
  answer: it calls (nearly) all of them real, or all fake, or ties them all at 0.5 (``acc_D_real``
  and ``acc_D_fake`` each within ``STUCK_ALIKE`` of 0 or 1, not both near 1; both near 0 only with
  ``D_x`` and ``D_G_z`` alike), which leaves it no better than a coin. Its answers then carry
  nothing for the generator to learn from.
  ``init=zeros`` is the pure case: every weight 0, every gradient symmetric, D says 0.5 to
  everything and the losses stay at ln 2; SGD at Adam's learning rate moves so little that D ends
  up calling every sample real. A generator merely ahead for a while (D worse than a coin, but
  answering samples differently) is not stuck.
- ``collapsed``: the discriminator wins for good: over the final stretch the just-updated
  discriminator lets at most ``COLLAPSED_ACC_G`` of the fakes through as real, having called at
  least half of them fake before its update (``acc_D_fake``, which also sets this apart from a
  tie). The generator no longer fools it: the no-BatchNorm generator under default init, a run at
  ``trainer.lr=1e6`` (finite as its losses are), SGD with momentum 0.9.
- ``trained``: anything else. It says that the game kept going, not that the samples are good:
  FCD says that.

Checked in that order. The thresholds sit between what healthy and failed digits runs showed
(README "Outcomes").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from gan.record import Ending, Outcome
from gan.trainer import ACC_D_FAKE, ACC_D_REAL, ACC_G, D_G_Z, D_X, LOSS_D, LOSS_G, TRAIN_PREFIX

FINAL_FRACTION = 0.2  # the final stretch: this share of the windows, at least one
STUCK_ALIKE = 0.05  # D answers all but this share of the reals, and of the fakes, alike
COLLAPSED_ACC_G = 0.05  # at most this share of the fakes fool the updated D…
COLLAPSED_ACC_D_FAKE = 0.5  # …which had called at least this share of them fake

# The window metrics the rule reads (gan.trainer.METRICS, logged as train/NAME).
KEYS = (LOSS_D, LOSS_G, ACC_D_REAL, ACC_D_FAKE, ACC_G, D_X, D_G_Z)


def final_windows(windows: Sequence[Mapping[str, float]]) -> Sequence[Mapping[str, float]]:
    """The final stretch: the last ``FINAL_FRACTION`` of the windows, at least one."""
    return windows[-max(1, math.ceil(FINAL_FRACTION * len(windows))) :]


def outcome(windows: Sequence[Mapping[str, float]], status: str = Ending.finished) -> Outcome:
    """The run's outcome from its logging windows in step order, each a mapping with at least
    the KEYS; ``status`` is the loop's ending (``diverged`` decides at once)."""
    if status == Ending.diverged:
        return Outcome.diverged
    if not windows:
        raise ValueError("a run that did not diverge has at least one logging window")
    final = final_windows(windows)
    if not all(math.isfinite(w[k]) for w in final for k in KEYS):
        return Outcome.diverged
    mean = {k: sum(w[k] for w in final) / len(final) for k in KEYS}
    if _one_answer(mean):
        return Outcome.stuck
    if mean[ACC_G] <= COLLAPSED_ACC_G and mean[ACC_D_FAKE] >= COLLAPSED_ACC_D_FAKE:
        return Outcome.collapsed
    return Outcome.trained


def _one_answer(mean: Mapping[str, float]) -> bool:
    """D gives every sample the same answer: all called real (accuracies on reals and fakes
    1, 0), all fake (0, 1), or all tied at 0.5 (0, 0, with D(x) and D(G(z)) alike: at (0, 0)
    a D that calls the reals fake and the fakes real answers them differently)."""
    real, fake = mean[ACC_D_REAL], mean[ACC_D_FAKE]
    if not all(min(x, 1 - x) <= STUCK_ALIKE for x in (real, fake)):
        return False
    if max(real, fake) <= STUCK_ALIKE:  # (0, 0)
        return abs(mean[D_X] - mean[D_G_Z]) <= STUCK_ALIKE
    return min(real, fake) <= STUCK_ALIKE


def read_windows(metrics_file: Path) -> list[dict[str, float]]:
    """The logging windows of a run's metrics.jsonl (its ``train/*`` lines), in step order, as
    numbers (the file writes a non-finite value as a string such as ``"NaN"``)."""
    lines = Path(metrics_file).read_text().splitlines()
    records = (json.loads(line) for line in lines if line.strip())
    return [
        {k: float(v) for k, v in r.items() if k == "step" or k.startswith(TRAIN_PREFIX)}
        for r in records
        if KEYS[0] in r
    ]
