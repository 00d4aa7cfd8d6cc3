"""Per-layer diagnostics: their definitions, how they aggregate, and that recording them changes
nothing."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import conftest
from conftest import data_source, run_config
from gan import diagnostics
from gan.diagnostics import AGGREGATION, MEAN_OVER_PASSES, LayerDiagnostics, activation_stats
from gan.init import SigmoidInLoss
from gan.run import run


def test_activation_statistics_definitions():
    tanh = activation_stats(torch.tensor([0.995, -0.999, 0.5, 0.0]), "tanh")
    assert tanh["saturated_frac"].item() == 0.5 and "dead_frac" not in tanh
    sigmoid = activation_stats(torch.tensor([0.005, 0.995, 0.5, 0.02]), "sigmoid")
    assert sigmoid["saturated_frac"].item() == 0.5
    relu = activation_stats(torch.tensor([0.0, 0.0, 1.0, 2.0]), "relu")
    assert relu["dead_frac"].item() == 0.5
    leaky = activation_stats(torch.tensor([-0.01, 0.0, 1.0, 2.0]), "leaky_relu")
    assert leaky["dead_frac"].item() == 0.25
    assert leaky["act_mean"].item() == pytest.approx(2.99 / 4)


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_every_activation_statistic_declares_its_aggregation(kind):
    assert set(activation_stats(torch.rand(10), kind)) <= set(AGGREGATION)


def test_statistics_are_averaged_over_passes_or_read_once_as_declared():
    layer = nn.Linear(3, 2)
    net = nn.Sequential(layer, nn.Tanh())
    recorder = LayerDiagnostics({"G": net})
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with recorder.recording():
        first, second = net(x), net(2 * x)
        second.sum().backward()
    values = recorder.results()
    prefix = "diag/G/0"
    assert recorder._calls == {prefix: 2}
    for name, stat in (("act_mean", torch.mean), ("act_std", lambda y: y.std(correction=0))):
        expected = (stat(first) + stat(second)).item() / 2  # the mean over the two passes
        assert values[f"{prefix}/{name}"] == pytest.approx(expected, rel=1e-6)
    assert values[f"{prefix}/weight_std"] == pytest.approx(layer.weight.std(correction=0).item())
    assert values[f"{prefix}/grad_norm"] == pytest.approx(layer.weight.grad.norm().item())
    assert AGGREGATION["act_mean"] == MEAN_OVER_PASSES


def test_a_joint_pass_on_reals_and_fakes_is_recorded_as_the_two_passes_it_holds():
    # D without batch statistics runs reals and fakes in one call; with BatchNorm, in two. Its
    # act_std must not depend on which: a pooled std would also count the gap between them.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1), SigmoidInLoss())
    real, fake = torch.randn(8, 3), torch.randn(8, 3) + 3
    apart, joint = LayerDiagnostics({"D": net}), LayerDiagnostics({"D": net}, joined=("D",))
    with apart.recording():
        net(real), net(fake)
    with joint.recording():
        net(torch.cat((real, fake)))
    assert joint._calls == apart._calls == {"diag/D/0": 2, "diag/D/2": 2}
    expected = apart.results()
    assert joint.results() == pytest.approx(expected, rel=1e-6)


def test_histogram_samples_come_from_every_pass_and_all_of_each():
    # Kept whole they were the first 10,000 values of the first pass: D's reals only, and the
    # first few samples of a wide layer.
    net = nn.Sequential(nn.Linear(1, 4000, bias=False), nn.ReLU())
    nn.init.ones_(net[0].weight)
    recorder = LayerDiagnostics({"D": net})
    with recorder.recording(keep_samples=True):
        for value in (1.0, 2.0, 3.0):  # three passes of 5 × 4,000 activations, each one value
            net(torch.full((5, 1), value))
    (kept,) = recorder.samples.values()
    assert len(kept) <= diagnostics.HISTOGRAM_SAMPLES
    assert set(kept.tolist()) == {1.0, 2.0, 3.0}


def test_a_statistic_without_a_declared_aggregation_fails_loudly(monkeypatch):
    stats = diagnostics.activation_stats
    monkeypatch.setattr(
        diagnostics,
        "activation_stats",
        lambda y, kind: {**stats(y, kind), "act_kurtosis": y.mean()},
    )
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    recorder = LayerDiagnostics({"G": net})
    with pytest.raises(KeyError, match="'act_kurtosis' declares no aggregation.*AGGREGATION"):
        with recorder.recording():
            net(torch.randn(4, 3))
    recorder._sums = {"diag/G/0/act_kurtosis": torch.tensor(1.0)}  # reached results() anyway
    with pytest.raises(KeyError, match="'act_kurtosis' declares no aggregation"):
        recorder.results()


def read_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_diagnostics_cover_every_layer_and_leave_training_unchanged(tmp_path):
    common = ["init=he_xavier", "logger.mode=disabled", "trainer.steps=40", "trainer.log_every=10"]
    run(run_config([*common, "trainer.diag_every=20"], tmp_path / "diag"), progress=False)
    run(run_config([*common, "trainer.diag_every=0"], tmp_path / "plain"), progress=False)
    lines = read_lines(tmp_path / "diag")
    diag = [line for line in lines if any(k.startswith("diag/") for k in line)]
    assert [line["step"] for line in diag] == [0, 20, 39]  # entering steps 1, 21 and the last
    keys = set(diag[0]) - {"step"}
    leaky = ("act_mean", "act_std", "dead_frac", "weight_std", "grad_norm")
    for layer in ("G/fc1", "G/fc2", "G/fc3", "G/fc4", "D/fc1", "D/fc2"):  # feed Leaky ReLU
        assert {f"diag/{layer}/{s}" for s in leaky} <= keys
    for layer in ("G/out", "D/out"):  # feed tanh / the sigmoid in the loss
        assert {f"diag/{layer}/{s}" for s in ("act_std", "saturated_frac", "grad_norm")} <= keys
    assert 0 < diag[0]["diag/D/out/act_mean"] < 1  # a probability: the sigmoid was applied
    assert 0.3 < diag[0]["diag/G/fc2/dead_frac"] < 0.7  # BatchNorm'd Leaky ReLU: about half < 0
    # he_xavier's initial weight std is what the init report promised
    report = json.loads((tmp_path / "diag" / "init_report.json").read_text())
    weights = {(r["network"], r["layer"]): r for r in report if r["param"] == "weight"}
    promised = weights[("generator", "fc3")]["measured_std"]
    assert diag[0]["diag/G/fc3/weight_std"] == pytest.approx(promised, rel=1e-5)

    def train_lines(lines: list[dict]) -> list[dict]:
        return [line for line in lines if "train/loss_D" in line]

    assert train_lines(lines) == train_lines(read_lines(tmp_path / "plain"))  # hooks observe only


def test_d_is_observed_in_its_own_step_only(tmp_path):
    from gan import data
    from gan.config import TrainerConfig, preset
    from gan.run import build_networks
    from gan.trainer import GANTrainer

    g, d, _ = build_networks(run_config(["init=he_xavier"], tmp_path))
    images = data.load(data_source("digits", conftest.DATA_DIR), train=True).images
    section = preset(TrainerConfig, "trainer", batch_size=8)
    trainer = GANTrainer(g, d, images, section, seed=0, precision="fp32")
    recorder = LayerDiagnostics({"G": g, "D": d})
    with recorder.recording():
        trainer.gan_step(trainer._next_batch())
    # G runs once; D once on reals and fakes together (no BatchNorm); its G-step pass is not
    # counted
    assert recorder._calls == {
        **{f"diag/G/{n}": 1 for n in ("fc1", "fc2", "fc3", "fc4", "out")},
        **{f"diag/D/{n}": 1 for n in ("fc1", "fc2", "out")},
    }
