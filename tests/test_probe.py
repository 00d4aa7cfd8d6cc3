"""The textbook probe reproduces the textbook results, with margins."""

from __future__ import annotations

import json
import math
from statistics import mean

import pytest

from gan import probe


@pytest.fixture(scope="module")
def records():
    recs, _ = probe.probe_activations(depth=5, width=100, samples=1000, seed=0)
    return {(r["activation"], r["init"], r["layer"]): r for r in recs}


def test_records_cover_every_activation_init_and_layer(records):
    assert len(records) == 3 * 4 * 5
    r = records[("relu", "he", 3)]
    assert set(r) == {"activation", "init", "layer", "mean", "std", "saturated_frac", "dead_frac"}
    assert r["saturated_frac"] is None and 0.3 < r["dead_frac"] < 0.7  # ReLU kills about half


def test_relu_with_std_001_collapses_by_layer_5(records):
    first, last = (records[("relu", "normal_small", layer)]["std"] for layer in (1, 5))
    assert last < 1e-3 * first  # each layer multiplies the spread by ~0.01·sqrt(100/2) ≈ 0.07


def test_relu_with_he_keeps_its_spread(records):
    stds = [records[("relu", "he", layer)]["std"] for layer in range(1, 6)]
    assert min(stds) > 0.5 * max(stds)
    first, last = (records[("relu", "xavier", layer)]["std"] for layer in (1, 5))
    assert last < 0.3 * first  # Xavier halves ReLU's spread at each layer


def test_std_1_saturates_tanh_and_sigmoid(records):
    for layer in range(1, 6):
        assert records[("tanh", "normal_large", layer)]["saturated_frac"] > 0.7
        assert records[("sigmoid", "normal_large", layer)]["saturated_frac"] > 0.4
        assert records[("tanh", "xavier", layer)]["saturated_frac"] < 0.05
        assert records[("sigmoid", "xavier", layer)]["saturated_frac"] < 0.05


def test_std_001_shrinks_tanh_to_nothing(records):
    assert records[("tanh", "normal_small", 5)]["std"] < 1e-3


@pytest.mark.slow
def test_training_std_001_does_not_learn_and_he_learns_fastest():
    curves = probe.train_classifiers("digits", steps=300, progress=False)
    assert mean(curves["normal_small"][-50:]) == pytest.approx(math.log(10), abs=0.01)  # chance
    assert mean(curves["he"][-50:]) < 0.2 and mean(curves["xavier"][-50:]) < 0.3
    assert mean(curves["he"][:100]) < 0.7 * mean(curves["xavier"][:100])


@pytest.mark.slow
def test_cli_writes_the_figure_and_json(tmp_path):
    argv = ["--depth", "3", "--width", "20", "--samples", "200", "--out", str(tmp_path)]
    assert probe.main(argv) == 0
    assert (tmp_path / "probe.png").stat().st_size > 10_000
    assert len(json.loads((tmp_path / "probe.json").read_text())) == 3 * 4 * 3
    with pytest.raises(SystemExit):
        probe.main(["--depth", "0"])


def test_the_first_layer_s_weights_are_not_a_copy_of_the_inputs():
    # Drawn from one stream, W1 = σ·x[:width], and input i meets its own copy in unit i:
    # a pre-activation of σ·‖x_i‖² ≈ 14 under He, where N(0, 2) over 10^4 values stays below 8.
    _, outputs = probe.probe_activations(depth=1, samples=100, activations=("relu",), inits=("he",))
    assert outputs[("relu", "he")][0].max() < 8
