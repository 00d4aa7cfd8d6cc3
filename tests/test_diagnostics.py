"""Per-layer diagnostics: their definitions, and that recording them changes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_config

from gan.diagnostics import activation_stats
from gan.run import run


def test_activation_statistics_definitions():
    tanh = activation_stats(torch.tensor([0.995, -0.999, 0.5, 0.0]), "tanh")
    assert tanh["saturated_frac"].item() == 0.5 and "dead_frac" not in tanh
    sigmoid = activation_stats(torch.tensor([0.005, 0.995, 0.5, 0.02]), "sigmoid")
    assert sigmoid["saturated_frac"].item() == 0.5
    assert activation_stats(torch.tensor([0.0, 0.0, 1.0, 2.0]), "relu")["dead_frac"].item() == 0.5
    leaky = activation_stats(torch.tensor([-0.01, 0.0, 1.0, 2.0]), "leaky_relu")
    assert leaky["dead_frac"].item() == 0.25
    assert leaky["act_mean"].item() == pytest.approx(2.99 / 4)


def read_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_diagnostics_cover_every_layer_and_leave_training_unchanged(tmp_path):
    common = ["init=he_xavier", "logger.mode=disabled", "trainer.steps=40", "trainer.log_every=10"]
    run(run_config([*common, "trainer.diag_every=20"], tmp_path / "diag"), progress=False)
    run(run_config([*common, "trainer.diag_every=0"], tmp_path / "plain"), progress=False)
    lines = read_lines(tmp_path / "diag")
    diag = [line for line in lines if any(k.startswith("diag/") for k in line)]
    assert [line["step"] for line in diag] == [0, 20]  # recorded entering steps 1 and 21
    keys = set(diag[0]) - {"step"}
    for layer in ("G/fc1", "G/fc2", "G/fc3", "G/fc4", "D/fc1", "D/fc2"):  # feed Leaky ReLU
        assert {f"diag/{layer}/{s}" for s in ("act_mean", "act_std", "dead_frac", "weight_std", "grad_norm")} <= keys
    for layer in ("G/out", "D/out"):  # feed tanh / the sigmoid in the loss
        assert {f"diag/{layer}/{s}" for s in ("act_std", "saturated_frac", "grad_norm")} <= keys
    assert 0 < diag[0]["diag/D/out/act_mean"] < 1  # a probability: the sigmoid was applied
    assert 0.3 < diag[0]["diag/G/fc2/dead_frac"] < 0.7  # BatchNorm'd Leaky ReLU: about half < 0
    # he_xavier's initial weight std is what the init report promised
    report = {(r["network"], r["layer"]): r for r in json.loads((tmp_path / "diag" / "init_report.json").read_text())
              if r["param"] == "weight"}
    assert diag[0]["diag/G/fc3/weight_std"] == pytest.approx(report[("generator", "fc3")]["measured_std"], rel=1e-5)
    def train_lines(lines: list[dict]) -> list[dict]:
        return [line for line in lines if "train/loss_D" in line]

    assert train_lines(lines) == train_lines(read_lines(tmp_path / "plain"))  # hooks observe only


def test_d_is_observed_in_its_own_step_only(tmp_path):
    from gan.diagnostics import LayerDiagnostics
    from gan.run import build_networks
    from gan.trainer import GANTrainer
    from gan import data

    g, d, _ = build_networks(run_config(["init=he_xavier"], tmp_path))
    trainer = GANTrainer(g, d, data.load("digits", None).images, batch_size=8, lr=2e-4,
                         betas=(0.5, 0.999), seed=0)
    diagnostics = LayerDiagnostics({"G": g, "D": d})
    with diagnostics.recording():
        trainer.gan_step(trainer._next_batch())
    # G runs once; D once on reals and fakes together (no BatchNorm); its G-step pass is not counted
    assert diagnostics._calls == {**{f"diag/G/{n}": 1 for n in ("fc1", "fc2", "fc3", "fc4", "out")},
                                  **{f"diag/D/{n}": 1 for n in ("fc1", "fc2", "out")}}
