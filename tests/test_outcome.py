"""A run's outcome: the rule on synthetic windows, and on real runs that end each way."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_config
from gan import tracking
from gan.outcome import (
    COLLAPSED_ACC_D_FAKE,
    COLLAPSED_ACC_G,
    STUCK_ALIKE,
    final_windows,
    outcome,
    read_windows,
)
from gan.record import Outcome
from gan.run import run


def window(**values: float) -> dict[str, float]:
    """One logging window; unless given, the numbers of a discriminator that is ahead but not
    winning (a healthy game)."""
    healthy = {
        "train/loss_D": 0.6,
        "train/loss_G": 0.9,
        "train/acc_D": 0.65,
        "train/acc_D_real": 0.6,
        "train/acc_D_fake": 0.7,
        "train/acc_G": 0.3,
        "train/D_x": 0.58,
        "train/D_G_z": 0.42,
    }
    return {**healthy, **values}


# D wins: it rejects every fake, before and after its update, confidently.
COLLAPSED = {"train/acc_G": 0.0, "train/acc_D_fake": 1.0, "train/D_G_z": 0.002, "train/D_x": 0.99}
# init=zeros: D says exactly 0.5 to everything; ties count as neither real nor fake.
STUCK = {
    **{"train/loss_D": math.log(2), "train/loss_G": math.log(2), "train/D_x": 0.5},
    **{"train/D_G_z": 0.5, "train/acc_D": 0.0, "train/acc_D_real": 0.0, "train/acc_D_fake": 0.0},
}


def test_a_healthy_game_is_trained():
    assert outcome([window()] * 60) == "trained"
    # Near equilibrium (D barely ahead, outputs near 0.5) is still a game, not "stuck".
    close = {"train/D_x": 0.505, "train/D_G_z": 0.5, "train/acc_D": 0.52, "train/loss_D": 0.69}
    assert outcome([window(**close)] * 60) == "trained"


def test_a_discriminator_that_wins_for_good_is_collapsed():
    assert outcome([window()] * 40 + [window(**COLLAPSED)] * 20) == "collapsed"
    # At the thresholds, D not even confident: still collapsed…
    edge = {"train/acc_G": COLLAPSED_ACC_G, "train/acc_D_fake": COLLAPSED_ACC_D_FAKE}
    assert outcome([window(**edge, **{"train/D_G_z": 0.4})] * 5) == "collapsed"
    # …but not once the updated D is fooled more often, or rejected fewer than half before.
    assert outcome([window(**{**edge, "train/acc_G": COLLAPSED_ACC_G + 0.01})] * 5) == "trained"
    assert outcome([window(**{**edge, "train/acc_D_fake": 0.49})] * 5) == "trained"


def test_a_run_at_lr_1e6_is_not_trained():
    # The numbers of a digits run at trainer.lr=1e6: finite, absurd, and D winning everything.
    absurd = window(
        **{"train/loss_G": 3.6e24, "train/loss_D": 0.0, "train/acc_D": 1.0, "train/acc_G": 0.0},
        **{"train/acc_D_real": 1.0, "train/acc_D_fake": 1.0, "train/D_x": 1.0, "train/D_G_z": 0.0},
    )
    assert outcome([absurd] * 10) == "collapsed"


def test_a_discriminator_giving_every_sample_one_answer_is_stuck():
    assert outcome([window(**STUCK)] * 30) == "stuck"  # every sample tied at 0.5
    # SGD at Adam's rate: D calls every sample real, although its mean outputs on reals and fakes
    # differ a little.
    all_real = {"train/acc_D_real": 1.0, "train/acc_D_fake": 0.0, "train/acc_D": 0.5}
    assert outcome([window(**all_real, **{"train/acc_G": 1.0, "train/D_x": 0.7})] * 30) == "stuck"
    # Calling every sample fake is stuck too, not collapsed, although no fake gets through.
    all_fake = {"train/acc_D_real": 0.0, "train/acc_D_fake": 1.0, "train/acc_D": 0.5}
    assert outcome([window(**all_fake, **{"train/acc_G": 0.0, "train/D_G_z": 0.3})] * 30) == "stuck"
    nearly = {"train/acc_D_real": 1 - STUCK_ALIKE, "train/acc_D_fake": STUCK_ALIKE}
    assert outcome([window(**nearly)] * 30) == "stuck"
    some_differ = {"train/acc_D_real": 1 - 2 * STUCK_ALIKE, "train/acc_D_fake": STUCK_ALIKE}
    assert outcome([window(**some_differ)] * 30) == "trained"


def test_a_generator_ahead_for_a_while_is_not_stuck():
    # D worse than a coin because G fools it, answering samples differently: the game goes on.
    ahead = {"train/acc_D": 0.39, "train/acc_D_real": 0.5, "train/acc_D_fake": 0.27}
    assert outcome([window(**ahead, **{"train/acc_G": 0.63, "train/D_G_z": 0.57})] * 9) == "trained"


def test_only_the_final_stretch_counts():
    assert [len(final_windows([window()] * n)) for n in (1, 4, 5, 6, 60)] == [1, 1, 1, 2, 12]
    # An early crisis the run recovered from does not count…
    assert outcome([window(**COLLAPSED)] * 48 + [window()] * 12) == "trained"
    assert outcome([window(**STUCK)] * 48 + [window()] * 12) == "trained"
    # …and the stretch is averaged: one stray window does not decide it either way.
    assert outcome([window(**COLLAPSED)] * 59 + [window()]) == "collapsed"
    assert outcome([window()] * 59 + [window(**COLLAPSED)]) == "trained"
    stray = window(**{**STUCK, "train/acc_D_fake": 0.3})
    assert outcome([window()] * 30 + [window(**STUCK)] * 29 + [stray]) == "stuck"


def test_non_finite_values_and_the_loops_status_are_diverged():
    assert outcome([window()] * 10, status="diverged") == "diverged"
    assert outcome([], status="diverged") == "diverged"
    assert outcome([window()] * 9 + [window(**{"train/loss_G": math.inf})]) == "diverged"
    with pytest.raises(ValueError, match="at least one logging window"):
        outcome([])


def test_windows_are_read_from_metrics_jsonl_in_order(tmp_path):
    lines = [
        {"step": 0, "diag/G/fc1/act_std": 1.0},
        {"step": 50, **window()},
        {"step": 100, **window(), "train/loss_G": "Infinity"},
        {"step": 100, "eval/fcd": 12.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    windows = read_windows(path)
    assert [w["step"] for w in windows] == [50, 100]
    assert windows[1]["train/loss_G"] == math.inf and "eval/fcd" not in windows[1]
    assert outcome(windows) == "diverged"


# Real runs on digits: each ends the way its name says. Evaluation, diagnostics and periodic
# checkpoints off.
QUIET = [
    "logger.mode=disabled",
    "trainer.eval_every=0",
    "trainer.diag_every=0",
    "trainer.ckpt_every=0",
    "trainer.threads=1",
]


def real_run(overrides: list[str], tmp_path, monkeypatch) -> tuple[dict, dict]:
    """summary.json, and what reached W&B's summary, of one real run."""
    summarized: dict = {}
    monkeypatch.setattr(tracking.RunLogger, "summarize", lambda self, v: summarized.update(v))
    out = tmp_path / "run"
    summary = run(run_config([*QUIET, *overrides], out), progress=False)
    assert json.loads((out / "summary.json").read_text()) == summary
    return summary, summarized


SHORT = ["trainer.steps=100", "trainer.log_every=20", "trainer.sample_every=100"]


@pytest.mark.slow
def test_an_all_zero_init_is_stuck(tmp_path, monkeypatch):
    summary, summarized = real_run(["init=zeros", *SHORT], tmp_path, monkeypatch)
    assert summary["status"] == "finished" and summary["outcome"] == "stuck"
    assert summarized["outcome"] == "stuck"
    assert summary["final"]["train/D_x"] == summary["final"]["train/D_G_z"] == 0.5


@pytest.mark.slow
def test_an_absurd_learning_rate_is_collapsed_not_trained(tmp_path, monkeypatch):
    summary, summarized = real_run(["trainer.lr=1e6", *SHORT], tmp_path, monkeypatch)
    assert summary["status"] == "finished" and summary["final"]["train/loss_G"] > 1e6
    assert summary["outcome"] == summarized["outcome"] == "collapsed"


@pytest.mark.slow
@pytest.mark.parametrize(("init", "expected"), [("default", "collapsed"), ("he_xavier", "trained")])
def test_without_batchnorm_in_g_the_default_init_collapses_and_he_xavier_trains(
    init, expected, tmp_path, monkeypatch
):
    # The setting: the MLP GAN on digits with G's BatchNorm removed. Under PyTorch's
    # default init D wins within a few hundred steps and stays ahead; He/Xavier keeps the game.
    steps = ["trainer.steps=500", "trainer.log_every=25", "trainer.sample_every=500"]
    overrides = ["model.g_norm=none", f"init={init}", *steps]
    summary, summarized = real_run(overrides, tmp_path, monkeypatch)
    assert summary["outcome"] == summarized["outcome"] == expected


def test_the_outcomes_are_the_documented_four():
    assert tuple(Outcome) == ("trained", "collapsed", "stuck", "diverged")


def test_a_d_that_calls_reals_fake_and_fakes_real_answers_them_differently_not_stuck():
    # Accuracies (0, 0) are a tie only where D(x) and D(G(z)) are alike: here G is ahead.
    inverted = window(**{"train/acc_D_real": 0.02, "train/acc_D_fake": 0.03, "train/acc_G": 0.97})
    inverted.update({"train/D_x": 0.1, "train/D_G_z": 0.9})
    assert outcome([inverted] * 10) == Outcome.trained
    tied = {**inverted, "train/D_x": 0.5, "train/D_G_z": 0.5}
    assert outcome([tied] * 10) == Outcome.stuck
