"""The init rule: every layer gets the scheme of what it feeds, at the std it should."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import run_config
from gan import nets
from gan.errors import UserError
from gan.init import (
    Rule,
    Scheme,
    SigmoidInLoss,
    fans,
    trace_feeds,
    trainable_weight,
)
from gan.init_call import init_table, initialize
from gan.run import build_networks

# What each weighted layer feeds, written out by hand from the architectures' definitions (not
# derived by the code under test): (activation, negative slope).
LEAKY, RELU, TANH, SIGMOID = ("leaky_relu", 0.2), ("relu", 0.0), ("tanh", None), ("sigmoid", None)
FEEDS = {
    "mlp": {
        "generator": {"fc1": LEAKY, "fc2": LEAKY, "fc3": LEAKY, "fc4": LEAKY, "out": TANH},
        "discriminator": {"fc1": LEAKY, "fc2": LEAKY, "out": SIGMOID},
    },
    "dcgan": {
        "generator": {"project": RELU, "up1": RELU, "out": TANH},
        "discriminator": {"conv1": LEAKY, "conv2": LEAKY, "out": SIGMOID},
    },
    "mlp_deep": {
        "generator": {**{f"fc{i}": LEAKY for i in range(1, 7)}, "out": TANH},
        "discriminator": {**{f"fc{i}": LEAKY for i in range(1, 7)}, "out": SIGMOID},
    },
}
# Every normalization axis on each model (the weighted layers, hence FEEDS, stay the same), and how
# many BatchNorm layers each network then has: (overrides, G's, D's), also written out by hand.
VARIANTS = {
    "mlp": [
        ([], 3, 0),
        (["model.g_norm=none"], 0, 0),
        (["model.d_norm=batch"], 3, 1),
        (["model.d_norm=spectral"], 3, 0),
        (["model.g_norm=none", "model.d_norm=spectral"], 0, 0),
    ],
    "dcgan": [
        ([], 2, 1),
        (["model.g_norm=none"], 0, 1),
        (["model.d_norm=none"], 2, 0),
        (["model.d_norm=spectral"], 2, 0),
    ],
    "mlp_deep": [([], 0, 0), (["model.d_norm=spectral"], 0, 0)],
}
CASES = [
    pytest.param(
        model, dataset, overrides, g_bn, d_bn, id=f"{model}-{dataset}-{','.join(overrides)}"
    )
    for model, variants in VARIANTS.items()
    for dataset in ("digits", "mnist")
    for overrides, g_bn, d_bn in variants
    if dataset == "digits" or not overrides  # every axis on digits; each model's default on mnist
]


def std_tolerance(n: int) -> float:
    """Relative tolerance for a sample std of n normal draws: 5 standard errors (1/sqrt(2n))."""
    return 5 / math.sqrt(2 * n)


def he_std(layer: nn.Module, slope: float) -> float:
    return math.sqrt(2 / (1 + slope**2)) / math.sqrt(fans(layer)[0])


def xavier_std(layer: nn.Module) -> float:
    fan_in, fan_out = fans(layer)
    return math.sqrt(2 / (fan_in + fan_out))


WEIGHTED_TYPES = ("Linear", "Conv2d", "ConvTranspose2d")


def weighted_layers(net: nn.Module) -> dict[str, nn.Module]:
    kinds = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    return {p: m for p, m in net.named_modules() if isinstance(m, kinds)}


def batch_norms(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]


@pytest.mark.parametrize(("model", "dataset", "overrides", "g_bn", "d_bn"), CASES)
def test_he_xavier_gives_every_weight_the_scheme_of_what_it_feeds(
    model, dataset, overrides, g_bn, d_bn, tmp_path
):
    cfg = run_config(
        [f"model={model}", f"dataset={dataset}", "init=he_xavier", *overrides], tmp_path
    )
    g, d, records = build_networks(cfg)
    assert (len(batch_norms(g)), len(batch_norms(d))) == (g_bn, d_bn)
    by_tensor = {(r.network, r.layer, r.param): r for r in records}
    checked = 0
    for network, net in (("generator", g), ("discriminator", d)):
        layers = weighted_layers(net)
        assert set(layers) == set(FEEDS[model][network]), "architecture changed: update FEEDS"
        spectral = network == "discriminator" and cfg.model.d_norm == "spectral"
        # Under spectral norm the rule draws the parametrization's original, and says so.
        param = "parametrizations.weight.original" if spectral else "weight"
        for path, layer in layers.items():
            kind, slope = FEEDS[model][network][path]
            record = by_tensor[(network, path, param)]
            assert record.type == type(layer).__name__.removeprefix("Parametrized")
            assert record.activation.startswith(kind)
            if kind in ("relu", "leaky_relu"):
                assert record.rule == "kaiming_normal"
                assert record.slope == pytest.approx(slope)
                assert record.gain == pytest.approx(math.sqrt(2 / (1 + slope**2)))
                expected = he_std(layer, slope)
            else:
                assert record.rule == "xavier_normal" and record.gain == 1.0
                expected = xavier_std(layer)
            assert (record.fan_in, record.fan_out) == fans(layer)
            assert record.expected_std == pytest.approx(expected, rel=1e-9)
            weight = trainable_weight(layer).detach()
            n = weight.numel()
            measured = weight.std(correction=0).item()  # as the report measures
            assert measured == pytest.approx(record.measured_std, rel=1e-3)
            if n >= 2000:  # enough draws for a sharp estimate; smaller ones are tested below
                assert measured == pytest.approx(expected, rel=std_tolerance(n))
                assert abs(weight.mean().item()) < 5 * expected / math.sqrt(n)
                checked += 1
            assert torch.count_nonzero(layer.bias) == 0
            if spectral:  # the power iteration follows the new draw: D sees weight / sigma ≈ 1
                assert effective_spectral_norm(layer) == pytest.approx(1.0, abs=0.1)
        for module in batch_norms(net):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert checked >= 3  # most weights; the rest are covered by the wide-layer test below
    assert len(records) == len(list(g.parameters())) + len(list(d.parameters()))


def effective_spectral_norm(layer: nn.Module) -> float:
    """The largest singular value of the weight the layer computes with, read in eval mode (a
    training-mode read would advance the power iteration)."""
    was = layer.training
    layer.eval()
    with torch.no_grad():
        matrix = layer.weight.flatten(1)
    layer.train(was)
    return torch.linalg.matrix_norm(matrix, 2).item()


def test_spectral_norm_without_the_resync_would_start_from_a_stale_sigma(monkeypatch, tmp_path):
    # The control for the check above: u and v left as registered on torch's default draw give
    # D a weight many times the intended spectral norm.
    from gan import init

    monkeypatch.setattr(init, "_resync_parametrization", lambda module, kind: None)
    cfg = run_config(["init=he_xavier", "model.d_norm=spectral"], tmp_path)
    _, d, _ = build_networks(cfg)
    assert effective_spectral_norm(d.fc2) > 3


def test_the_init_table_names_the_original_under_spectral_norm(tmp_path):
    plain = build_networks(run_config(["init=he_xavier"], tmp_path))[2]
    cfg = run_config(["init=he_xavier", "model.d_norm=spectral"], tmp_path)
    records = build_networks(cfg)[2]
    tensors = [f"{r.layer}.{r.param}" for r in records if r.network == "discriminator"]
    assert tensors == [
        "fc1.parametrizations.weight.original",
        "fc1.bias",
        "fc2.parametrizations.weight.original",
        "fc2.bias",
        "out.parametrizations.weight.original",
        "out.bias",
    ]
    assert "fc1.parametrizations.weight.original  Linear" in init_table(records)
    # The generator's records, and every field but the path, are what they are without it.
    assert [r for r in records if r.network == "generator"] == [
        r for r in plain if r.network == "generator"
    ]
    for r, p in zip(records[-6:], plain[-6:]):
        assert {**r.to_dict(), "param": p.param, "measured_std": 0} == {
            **p.to_dict(),
            "measured_std": 0,
        }


def test_small_layers_are_drawn_at_the_right_std_too():
    # The discriminator's last layer (256 → 1) has too few weights for a sharp check in place;
    # the same rule on a wide layer with the same activation is checked instead.
    layer = nn.Sequential(nn.Linear(4000, 5), SigmoidInLoss())
    scheme = Scheme.parse("x", {"weights": {"sigmoid": "xavier_normal"}}, "test")
    initialize(layer, scheme, network="discriminator", generator=torch.Generator().manual_seed(0))
    w = layer[0].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 4005), rel=std_tolerance(w.numel()))


@pytest.mark.parametrize(
    ("model", "overrides"),
    [
        ("mlp", []),
        ("dcgan", []),
        ("mlp_deep", []),
        ("mlp", ["model.g_norm=none", "model.d_norm=spectral"]),
        ("dcgan", ["model.g_norm=none", "model.d_norm=spectral"]),
    ],
)
def test_default_leaves_pytorch_init_bit_identical(model, overrides, tmp_path):
    cfg = run_config([f"model={model}", "init=default", "seed=7", *overrides], tmp_path)
    g, d, records = build_networks(cfg)
    torch.manual_seed(7)
    g_fresh, d_fresh = nets.build(cfg.model, (1, 8, 8))
    for net, fresh in ((g, g_fresh), (d, d_fresh)):
        pairs = zip(net.state_dict().items(), fresh.state_dict().items(), strict=True)
        for (name, p), (_, q) in pairs:
            assert torch.equal(p, q), name
    # The report states torch's own promise: std 1/sqrt(3·fan_in), torch's fan_in = size(1)·k·k.
    # Under spectral norm the state also holds u and v: untouched too, so not re-synced.
    for r in records:
        if r.param.endswith(("weight", "original")) and r.type in WEIGHTED_TYPES:
            torch_fan_in = math.prod(r.shape[1:])
            assert r.rule == "default"
            assert r.expected_std == pytest.approx(1 / math.sqrt(3 * torch_fan_in))
            n = math.prod(r.shape)
            if n >= 2000:  # uniform draws: the std estimate is tighter than for normal ones
                assert r.measured_std == pytest.approx(r.expected_std, rel=std_tolerance(n))


def test_per_network_selection_is_independent(tmp_path):
    both = run_config(["init=he_xavier"], tmp_path)
    mixed = run_config(["init=he_xavier", "init.discriminator=default"], tmp_path)
    control = run_config(["init=default"], tmp_path)
    assert mixed.init.arm == "he_xavier,discriminator=default"
    assert mixed.init.generator.name == "he_xavier" and mixed.init.discriminator.name == "default"
    (g_both, _, _), (g_mix, d_mix, _), (_, d_ctl, _) = map(build_networks, (both, mixed, control))
    for a, b in ((g_both, g_mix), (d_mix, d_ctl)):
        pairs = zip(a.state_dict().values(), b.state_dict().values())
        assert all(torch.equal(p, q) for p, q in pairs)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first, again, other = (
        build_networks(run_config(["init=he_xavier", f"seed={s}"], tmp_path))[0] for s in (3, 3, 4)
    )
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))
    assert not torch.equal(first.fc2.weight, other.fc2.weight)


def test_conv_transpose_fan_in_counts_the_terms_each_output_sums():
    # ConvTranspose2d weight is (in, out, k, k); torch.nn.init's fan_in is size(1)·k² = out·16,
    # but with stride 2 each output sums in·k²/s² = in·4 terms. He must use the latter. Here the
    # two differ 16-fold (with in = 4·out they would agree, and this test could not tell them).
    layer = nn.ConvTranspose2d(64, 256, 4, 2, 1)
    assert fans(layer) == (64 * 16 / 4, 256 * 16)
    assert nn.init._calculate_fan_in_and_fan_out(layer.weight)[0] == 256 * 16  # torch's
    net = nn.Sequential(layer, nn.ReLU())
    initialize(
        net,
        Scheme.parse("he", {"weights": "kaiming_normal"}, "test"),
        network="generator",
        generator=torch.Generator().manual_seed(0),
    )
    # Empirically: He with gain² = 2 turns unit-variance inputs into outputs of variance 2.
    x = torch.randn(8, 64, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = layer(x)[:, :, 1:-1, 1:-1]  # interior: borders sum fewer terms
    assert y.var().item() == pytest.approx(2.0, rel=0.05)  # torch's fan would give 2/16


def test_fans_match_torch_for_linear_and_stride_one_conv():
    for layer in (nn.Linear(30, 70), nn.Conv2d(8, 16, 3, 1, 1)):
        assert fans(layer) == tuple(map(float, nn.init._calculate_fan_in_and_fan_out(layer.weight)))
    assert fans(nn.Conv2d(8, 16, 4, 2, 1)) == (8 * 16, 16 * 16 / 4)


def test_trace_sees_through_norm_dropout_and_reshape_and_reads_the_actual_slope():
    net = nn.Sequential(
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        nn.Dropout(0.1),
        nn.Unflatten(1, (2, 4)),
        nn.Flatten(),
        nn.LeakyReLU(0.3),
        nn.Linear(8, 1),
        SigmoidInLoss(),
    )
    feeds = {path: f for path, _, f in trace_feeds(net)}
    assert (feeds["0"].kind, feeds["0"].slope, feeds["0"].via) == ("leaky_relu", 0.3, "5")
    assert feeds["6"].kind == "sigmoid"


@pytest.mark.parametrize(
    ("net", "message"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.ELU()), "layer '0' (Linear) feeds '1' (ELU)"),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1), nn.Tanh()),
            "layer '0' (Linear) feeds '1' (Linear)",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)),
            "layer '2' (Linear) feeds no nonlinearity",
        ),
        (nn.Sequential(nn.Embedding(4, 4), nn.ReLU()), "layer '0' (Embedding) has parameters"),
    ],
)
def test_anything_unmappable_is_an_error_naming_the_layer(net, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trace_feeds(net)


def test_scheme_without_a_rule_for_an_activation_fails_loudly():
    scheme = Scheme.parse("partial", {"weights": {"relu": "kaiming_normal"}}, "test")
    with pytest.raises(UserError, match="no weight rule for layers feeding tanh.*layer '0'"):
        initialize(
            nn.Sequential(nn.Linear(3, 3), nn.Tanh()),
            scheme,
            network="generator",
            generator=torch.Generator(),
        )


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown rule 'kaiming'.*kaiming_normal"):
        Rule.parse("kaiming", "init.generator.weights.relu")


def test_xavier_gain_auto_is_calculate_gains_five_thirds_for_tanh():
    net = nn.Sequential(nn.Linear(500, 400), nn.Tanh())
    auto = {"rule": "xavier_normal", "gain": "auto"}
    scheme = Scheme.parse("x", {"weights": {"tanh": auto}}, "t")
    (record, _) = initialize(
        net, scheme, network="generator", generator=torch.Generator().manual_seed(0)
    )
    assert record.gain == pytest.approx(5 / 3)
    expected = 5 / 3 * math.sqrt(2 / 900)
    assert record.measured_std == pytest.approx(expected, rel=std_tolerance(200_000))
