"""Every init option and variant against torch.nn.init's definitions, on Linear, Conv2d and
ConvTranspose2d shapes; schemes written in YAML; per-layer override patterns."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import CONF_DIR, run_config
from gan.errors import UserError
from gan.init import TRUNC_STD_FACTOR, SigmoidInLoss, fans, trainable_weight
from gan.init_call import initialize
from gan.init_options import resolve_scheme

LAYERS = {  # ≥ 18k weights each: sample stds within ~3.7 % at 5 standard errors
    "linear": lambda: nn.Linear(400, 300),
    "conv": lambda: nn.Conv2d(64, 32, 3, 1, 1),
    "conv_transpose": lambda: nn.ConvTranspose2d(64, 32, 4, 2, 1),
}
ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "sigmoid": SigmoidInLoss}


def rel_tol(n: int) -> float:
    return 5 / math.sqrt(2 * n)  # 5 standard errors of a sample std


def init_layer(overrides: list[str], layer_kind: str, activation: str, tmp_path) -> nn.Module:
    """A layer feeding ``activation``, initialized as the discriminator is under ``overrides``."""
    scheme = run_config(overrides, tmp_path).init.discriminator
    layer = LAYERS[layer_kind]()
    initialize(
        nn.Sequential(layer, ACTIVATIONS[activation]()),
        scheme,
        network="discriminator",
        generator=torch.Generator().manual_seed(0),
    )
    return layer


def gain_of(activation: str) -> float:
    if activation == "leaky_relu":
        return nn.init.calculate_gain(activation, 0.2)
    return nn.init.calculate_gain(activation)


def check_distribution(w: torch.Tensor, std: float, dist: str, mean: float = 0.0) -> None:
    n = w.numel()
    assert w.std().item() == pytest.approx(std, rel=rel_tol(n))
    assert abs(w.mean().item() - mean) < 5 * std / math.sqrt(n)
    spread = (w - mean).abs().max().item()
    if dist == "uniform":  # U(±sqrt(3)·std): bounded, and the bound is reached
        assert 0.99 * math.sqrt(3) * std <= spread <= math.sqrt(3) * std * (1 + 1e-6)
    elif dist == "trunc_normal":  # cut at ±2 of its own sigma = std / 0.8796
        assert spread <= 2 * std / TRUNC_STD_FACTOR * (1 + 1e-6)
        assert spread > 1.9 * std / TRUNC_STD_FACTOR
    else:  # normal: unbounded; 18k draws reach beyond 3.5 std
        assert spread > 3.5 * std


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize("dist", ["normal", "uniform", "trunc_normal"])
@pytest.mark.parametrize("activation", ["leaky_relu", "tanh"])
@pytest.mark.parametrize("gain", ["1.0", "auto"])
def test_xavier(layer_kind, dist, activation, gain, tmp_path):
    overrides = ["init=xavier", f"init.dist={dist}", f"init.gain={gain}"]
    layer = init_layer(overrides, layer_kind, activation, tmp_path)
    fan_in, fan_out = fans(layer)
    g = 1.0 if gain == "1.0" else gain_of(activation)
    check_distribution(layer.weight, g * math.sqrt(2 / (fan_in + fan_out)), dist)


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize("dist", ["normal", "uniform"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("activation", ["leaky_relu", "tanh"])
def test_he(layer_kind, dist, mode, activation, tmp_path):
    overrides = ["init=he", f"init.dist={dist}", f"init.mode={mode}"]
    layer = init_layer(overrides, layer_kind, activation, tmp_path)
    slope = 0.2 if activation == "leaky_relu" else 0.0  # tanh layers get the ReLU gain
    fan = fans(layer)[0 if mode == "fan_in" else 1]
    check_distribution(layer.weight, math.sqrt(2 / (1 + slope**2)) / math.sqrt(fan), dist)


def test_he_on_linear_draws_like_torchs_own_kaiming_normal(tmp_path):
    # For Linear our fans are torch's: our draws and kaiming_normal_'s must share one std.
    ours = init_layer(["init=he"], "linear", "leaky_relu", tmp_path).weight.detach()
    theirs = torch.empty(300, 400)
    nn.init.kaiming_normal_(
        theirs, a=0.2, nonlinearity="leaky_relu", generator=torch.Generator().manual_seed(1)
    )
    assert ours.std().item() == pytest.approx(theirs.std().item(), rel=2 * rel_tol(ours.numel()))


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize("dist", ["normal", "uniform", "trunc_normal"])
def test_lecun(layer_kind, dist, tmp_path):
    layer = init_layer(["init=lecun", f"init.dist={dist}"], layer_kind, "tanh", tmp_path)
    check_distribution(layer.weight, 1 / math.sqrt(fans(layer)[0]), dist)


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize(
    ("option", "std"), [("normal_small", 0.01), ("normal_large", 1.0), ("dcgan", 0.02)]
)
def test_fixed_std_schemes(layer_kind, option, std, tmp_path):
    layer = init_layer([f"init={option}"], layer_kind, "leaky_relu", tmp_path)
    check_distribution(layer.weight, std, "normal")
    assert torch.count_nonzero(layer.bias) == 0


def test_dcgan_batchnorm_weight_is_normal_one_point_oh_two(tmp_path):
    scheme = run_config(["init=dcgan"], tmp_path).init.generator
    bn = nn.BatchNorm1d(20_000)
    initialize(
        nn.Sequential(nn.Linear(3, 20_000), bn, nn.ReLU()),
        scheme,
        network="generator",
        generator=torch.Generator().manual_seed(0),
    )
    check_distribution(bn.weight.detach(), 0.02, "normal", mean=1.0)
    assert torch.count_nonzero(bn.bias) == 0


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize("activation", ["leaky_relu", "tanh"])
def test_orthogonal(layer_kind, activation, tmp_path):
    layer = init_layer(["init=orthogonal"], layer_kind, activation, tmp_path)
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # the shorter side is orthonormal
    g = gain_of(activation)
    eye = torch.eye(gram.shape[0], dtype=torch.double)
    torch.testing.assert_close(gram, g**2 * eye, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer_kind", LAYERS)
def test_zeros(layer_kind, tmp_path):
    layer = init_layer(["init=zeros"], layer_kind, "tanh", tmp_path)
    assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0


def test_he_xavier_uniform_keeps_the_he_xavier_stds(tmp_path):
    layer = init_layer(["init=he_xavier_uniform"], "conv_transpose", "tanh", tmp_path)
    fan_in, fan_out = fans(layer)
    check_distribution(layer.weight, math.sqrt(2 / (fan_in + fan_out)), "uniform")


def test_per_network_preset_file(tmp_path):
    cfg = run_config(["init=g_he_xavier_d_default"], tmp_path)
    assert (cfg.init.generator.name, cfg.init.discriminator.name) == ("he_xavier", "default")


def test_a_scheme_written_in_yaml_with_layer_overrides(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "generator:\n"
        "  weights: {relu: kaiming_uniform, tanh: xavier_normal}\n"
        "  overrides: {'hidden*': {rule: normal, std: 0.5}}\n"
        "discriminator: other\n"
    )
    (tmp_path / "other.yaml").write_text("discriminator:\n  weights: lecun_normal\n")
    g_scheme = resolve_scheme("mine", "generator", tmp_path, "mine")
    d_scheme = resolve_scheme("mine", "discriminator", tmp_path, "mine")
    assert d_scheme.name == "other" and d_scheme.weights["sigmoid"].name == "lecun_normal"
    net = nn.Sequential()
    net.add_module("hidden1", nn.Linear(200, 300))
    net.add_module("act", nn.ReLU())
    net.add_module("out", nn.Linear(300, 200))
    net.add_module("tanh", nn.Tanh())
    records = initialize(
        net, g_scheme, network="generator", generator=torch.Generator().manual_seed(0)
    )
    rules = {(r.layer, r.param): r.rule for r in records}
    assert rules[("hidden1", "weight")] == "normal(0, 0.5)"
    assert rules[("out", "weight")] == "xavier_normal"
    check_distribution(net.hidden1.weight.detach(), 0.5, "normal")


def test_an_override_pattern_that_matches_nothing_is_an_error(tmp_path):
    (tmp_path / "typo.yaml").write_text(
        "generator:\n  weights: kaiming_normal\n  overrides: {'fc9': zeros}\n"
    )
    scheme = resolve_scheme("typo", "generator", tmp_path, "typo")
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    message = r"override pattern\(s\) \['fc9'\] match no layer.*layers are: 0"
    with pytest.raises(UserError, match=message):
        initialize(net, scheme, network="generator", generator=torch.Generator())


def test_a_cycle_of_scheme_names_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("generator: b\n")
    (tmp_path / "b.yaml").write_text("generator: a\n")
    with pytest.raises(UserError, match="cycle: a -> b -> a"):
        resolve_scheme("a", "generator", tmp_path, "a")


def test_negative_std_is_refused(tmp_path):
    # A rule's own std (init.std is refused by its name: tests/test_config.py).
    with pytest.raises(UserError, match="needs std > 0, got -0.1"):
        run_config(["init=normal_small", "init.generator.weights.std=-0.1"], tmp_path)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "init").glob("*.yaml")))
@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
def test_under_spectral_norm_every_scheme_draws_the_original_as_it_would_the_weight(
    option, layer_kind, tmp_path
):
    # The same draws from the same stream: the parametrization changes where the rule writes
    # (the original), never what it writes.
    scheme = run_config([f"init={option}"], tmp_path).init.discriminator
    tensors = []
    for wrap in (lambda layer: layer, nn.utils.parametrizations.spectral_norm):
        torch.manual_seed(0)  # torch's own init of the layer, for the default scheme
        layer = wrap(LAYERS[layer_kind]())
        (weight, bias) = initialize(
            nn.Sequential(layer, nn.LeakyReLU(0.2)),
            scheme,
            network="discriminator",
            generator=torch.Generator().manual_seed(0),
        )
        assert weight.rule == scheme.weights["leaky_relu"].describe() and bias.param == "bias"
        assert weight.fan_in in (None, fans(layer)[0])  # None: a rule that reads no fan
        tensors.append((trainable_weight(layer).detach().clone(), weight))
    (plain, plain_record), (original, record) = tensors
    assert torch.equal(plain, original)
    assert record.param == "parametrizations.weight.original" and plain_record.param == "weight"
    assert record.expected_std == plain_record.expected_std
