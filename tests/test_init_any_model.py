"""The init rule on models this project did not design, traced by following the data; and the
project's own networks, which must come out exactly as they did before the rule traced.

Every expected rule below is written by hand from the model's published structure, never read
back from the code under test. The std each record states must equal the formula (relative
1e-9), and the measured std of every weight must lie within 5 standard errors of it: relative
tolerance 5/sqrt(2n) for n draws, from 0.23 % (ResNet-18's 512→512 convs) to 6.4 % (3072
weights, the DCGAN's RGB layers); the two small tensors of the SNGAN discriminator are looser
(its 3→128 1×1 shortcut, 384 weights: 18 %; its Linear(128, 1) head, 128 weights: 31 %).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gan
from conftest import torch_threads
from gan import init as init_module
from gan import init_call, nets
from gan.config import CONF_DIR, D_NORMS, G_NORMS, ModelConfig, preset
from gan.errors import UserError
from gan.init import Scheme, SigmoidInLoss, SoftmaxInLoss, trainable_weight
from gan.init_options import resolve_scheme
from gan.runtime import derive_seed
from gan.trace import TracedLayer, trace_feeds

ROOT = Path(__file__).resolve().parents[1]
LEAKY_GAIN = math.sqrt(2 / (1 + 0.2**2))
RELU_GAIN = math.sqrt(2)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def std_tolerance(n: int) -> float:
    """Relative tolerance for a sample std of n normal draws: 5 standard errors (1/sqrt(2n))."""
    return 5 / math.sqrt(2 * n)


def he(fan_in: float, gain: float = RELU_GAIN) -> tuple[str, float]:
    return "kaiming_normal", gain / math.sqrt(fan_in)


def xavier(fan_in: float, fan_out: float) -> tuple[str, float]:
    return "xavier_normal", math.sqrt(2 / (fan_in + fan_out))


def check(model: nn.Module, records, expected: dict[str, tuple[str, tuple[str, float]]]) -> None:
    """Every weight of ``model`` has the hand-written (feeds, (rule, std)), and measures it."""
    weights = {r.layer: r for r in records if r.param.endswith(("weight", "original"))}
    weighted = {
        p for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    }
    assert set(expected) == weighted, "expected rules must name every weighted layer"
    for path, (feeds, (rule, std)) in expected.items():
        record = weights[path]
        assert (record.activation, record.rule) == (feeds, rule), path
        assert record.expected_std == pytest.approx(std, rel=1e-9), path
        w = trainable_weight(model.get_submodule(path)).detach()
        measured = w.std(correction=0).item()
        assert measured == pytest.approx(std, rel=std_tolerance(w.numel())), path
    for r in records:
        if r.param == "bias":
            assert torch.count_nonzero(model.get_submodule(r.layer).bias) == 0


# --------------------------------------------------------------------------------------------
# A module whose registration order is not its forward order
# --------------------------------------------------------------------------------------------


class Reordered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc2 = nn.Linear(512, 256)  # registered first, used second
        self.fc1 = nn.Linear(256, 512)

    def forward(self, x):
        return torch.tanh(self.fc2(F.leaky_relu(self.fc1(x), 0.2)))


@pytest.mark.parametrize("traced_by", ["fx", "running"])
def test_registration_order_does_not_decide_what_a_layer_feeds(traced_by):
    model = Reordered()
    example = torch.randn(2, 256) if traced_by == "running" else None
    records = gan.initialize(model, "he_xavier", seed=0, example_input=example)
    check(
        model,
        records,
        {
            "fc1": ("leaky_relu(0.2)", he(256, LEAKY_GAIN)),
            "fc2": ("tanh", xavier(512, 256)),
        },
    )
    assert [r.layer for r in records] == ["fc2", "fc2", "fc1", "fc1"]  # drawn as registered


# --------------------------------------------------------------------------------------------
# DCGAN as the PyTorch examples lay it out (nz 100, ngf = ndf = 64, 64×64 RGB), with the
# activations written as functions, as most published GAN code does
# --------------------------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
        self.convs = nn.ModuleList([nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False)])
        self.convs.extend(
            nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in zip(widths, widths[1:])
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        self.out = nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False)

    def forward(self, z):  # z: (B, nz, 1, 1) → (B, nc, 64, 64)
        for conv, bn in zip(self.convs, self.bns):
            z = F.relu(bn(conv(z)), inplace=True)
        return torch.tanh(self.out(z))


class DCGANDiscriminator(nn.Module):
    def __init__(self, ndf=64, nc=3):
        super().__init__()
        widths = [ndf, ndf * 2, ndf * 4, ndf * 8]
        self.first = nn.Conv2d(nc, ndf, 4, 2, 1, bias=False)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 4, 2, 1, bias=False) for a, b in zip(widths, widths[1:])
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(w) for w in widths[1:])
        self.out = nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False)

    def forward(self, x):  # x: (B, nc, 64, 64) → (B,) probabilities
        x = F.leaky_relu(self.first(x), 0.2, inplace=True)
        for conv, bn in zip(self.convs, self.bns):
            x = F.leaky_relu(bn(conv(x)), 0.2, inplace=True)
        return torch.sigmoid(self.out(x)).view(-1, 1).squeeze(1)


def test_dcgan_of_the_pytorch_examples_with_functional_activations():
    g, d = DCGANGenerator(), DCGANDiscriminator()
    records = gan.initialize(
        {"generator": g, "discriminator": d},
        "he_xavier",
        seed=0,
        example_input={
            "generator": torch.randn(2, 100, 1, 1),
            "discriminator": torch.randn(2, 3, 64, 64),
        },
    )
    # Traced by running, the sizes are known: the first ConvTranspose sees a 1×1 input, so each
    # output sums nz = 100 terms (not 100·4²); the last Conv (4×4 → 1×1) reaches 1 output.
    check(
        g,
        [r for r in records if r.network == "generator"],
        {
            "convs.0": ("relu", he(100)),
            "convs.1": ("relu", he(512 * 4)),  # k4 s2: (4/2)² input positions per output
            "convs.2": ("relu", he(256 * 4)),
            "convs.3": ("relu", he(128 * 4)),
            "out": ("tanh", xavier(64 * 4, 3 * 16)),
        },
    )
    check(
        d,
        [r for r in records if r.network == "discriminator"],
        {
            "first": ("leaky_relu(0.2)", he(3 * 16, LEAKY_GAIN)),
            "convs.0": ("leaky_relu(0.2)", he(64 * 16, LEAKY_GAIN)),
            "convs.1": ("leaky_relu(0.2)", he(128 * 16, LEAKY_GAIN)),
            "convs.2": ("leaky_relu(0.2)", he(256 * 16, LEAKY_GAIN)),
            "out": ("sigmoid", xavier(512 * 16, 1)),
        },
    )


def test_the_one_by_one_conv_transpose_fan_keeps_the_he_variance():
    # He with gain² = 2 turns unit-variance inputs into outputs of variance 2 when the fan is
    # the number of terms each output sums: nz = 100 here (fx's 1600 would give 2/16).
    g = DCGANGenerator()
    gan.initialize(g, "he_xavier", seed=0, example_input=torch.randn(2, 100, 1, 1))
    z = torch.randn(64, 100, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = g.convs[0](z)  # (64, 512, 4, 4)
    assert y.var().item() == pytest.approx(2.0, rel=0.05)


def test_without_an_example_input_a_conv_transpose_assumes_inputs_at_least_k_over_s_wide():
    # The documented limit of the symbolic trace: it knows no sizes, so the 1×1-input layer is
    # given in·(k/s)² = 1600; the feeds are the same.
    records = gan.initialize(DCGANGenerator(), "he_xavier", seed=0)
    first = next(r for r in records if r.layer == "convs.0")
    assert (first.activation, first.fan_in) == ("relu", 1600.0)


# --------------------------------------------------------------------------------------------
# torchvision's ResNet-18: conv → BN → ReLU, residual sums, 1×1 projection shortcuts
# --------------------------------------------------------------------------------------------


def resnet18_expected() -> dict[str, tuple[str, tuple[str, float]]]:
    """From the paper's table: a 7×7 stem, four stages of two basic blocks (two 3×3 convs),
    stages 2-4 opening with a strided block whose shortcut is a 1×1 conv; fc to 1000 logits."""
    expected = {"conv1": ("relu", he(3 * 49))}
    channels = [64, 64, 128, 256, 512]
    for stage in range(1, 5):
        c_in, c = channels[stage - 1], channels[stage]
        for block in range(2):
            first_in = c_in if block == 0 else c
            # Both convs reach a ReLU: conv1 directly, conv2 through the residual sum.
            expected[f"layer{stage}.{block}.conv1"] = ("relu", he(first_in * 9))
            expected[f"layer{stage}.{block}.conv2"] = ("relu", he(c * 9))
        if stage > 1:
            expected[f"layer{stage}.0.downsample.0"] = ("relu", he(c_in))
    expected["fc"] = ("softmax", xavier(512, 1000))  # declared: the softmax is in the loss
    return expected


@pytest.mark.parametrize("traced_by", ["fx", "running"])
def test_torchvision_resnet18(traced_by):
    model = torchvision.models.resnet18(weights=None)
    example = torch.randn(2, 3, 64, 64) if traced_by == "running" else None
    with pytest.raises(UserError, match=r"layer 'fc' \(Linear\) feeds no nonlinearity.*overrides"):
        gan.initialize(model, "he_xavier", seed=0, example_input=example)
    records = gan.initialize(
        model, "he_xavier", seed=0, example_input=example, overrides={"fc": "softmax"}
    )
    check(model, records, resnet18_expected())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 20 and all(torch.all(m.weight == 1) for m in norms)


# --------------------------------------------------------------------------------------------
# An SNGAN-style ResNet discriminator (Miyato et al. 2018): spectral norm on every layer, ReLU
# before each conv, average pooling, learnable 1×1 shortcuts, hinge loss (no sigmoid)
# --------------------------------------------------------------------------------------------


def sn(layer: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer)


class OptimizedDisBlock(nn.Module):
    def __init__(self, c_in, c):
        super().__init__()
        self.c1, self.c2 = sn(nn.Conv2d(c_in, c, 3, 1, 1)), sn(nn.Conv2d(c, c, 3, 1, 1))
        self.c_sc = sn(nn.Conv2d(c_in, c, 1, 1, 0))

    def forward(self, x):
        h = F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
        return h + self.c_sc(F.avg_pool2d(x, 2))


class DisBlock(nn.Module):
    def __init__(self, c_in, c, downsample):
        super().__init__()
        self.c1, self.c2 = sn(nn.Conv2d(c_in, c, 3, 1, 1)), sn(nn.Conv2d(c, c, 3, 1, 1))
        self.downsample = downsample
        self.learnable_sc = c_in != c or downsample
        if self.learnable_sc:
            self.c_sc = sn(nn.Conv2d(c_in, c, 1, 1, 0))

    def forward(self, x):
        h = self.c2(F.relu(self.c1(F.relu(x))))
        sc = self.c_sc(x) if self.learnable_sc else x
        if self.downsample:
            h, sc = F.avg_pool2d(h, 2), F.avg_pool2d(sc, 2)
        return h + sc


class SNResNetDiscriminator(nn.Module):
    def __init__(self, ch=128):
        super().__init__()
        self.block1 = OptimizedDisBlock(3, ch)
        self.block2 = DisBlock(ch, ch, downsample=True)
        self.block3 = DisBlock(ch, ch, downsample=False)
        self.l4 = sn(nn.Linear(ch, 1))

    def forward(self, x):
        h = self.block3(self.block2(self.block1(x)))
        return self.l4(F.relu(h).sum(dim=(2, 3)))


def test_sngan_resnet_blocks_under_spectral_norm():
    model = SNResNetDiscriminator()
    # Each block's output goes to the next block's ReLU and, for block2, to its 1×1 shortcut
    # too: a path that reaches a layer without a nonlinearity does not decide. The hinge loss
    # applies no nonlinearity to the logit: its rule is declared.
    records = gan.initialize(
        model,
        "he_xavier",
        seed=0,
        example_input=torch.randn(2, 3, 32, 32),
        overrides={"l4": "xavier_normal"},
    )
    relu = "relu"
    check(
        model,
        records,
        {
            "block1.c1": (relu, he(3 * 9)),
            "block1.c2": (relu, he(128 * 9)),
            "block1.c_sc": (relu, he(3)),
            "block2.c1": (relu, he(128 * 9)),
            "block2.c2": (relu, he(128 * 9)),
            "block2.c_sc": (relu, he(128)),
            "block3.c1": (relu, he(128 * 9)),
            "block3.c2": (relu, he(128 * 9)),
            "l4": (None, xavier(128, 1)),
        },
    )
    assert all(r.param == "parametrizations.weight.original" for r in records[::2])
    model.eval()  # the power iteration was rerun on the new draw: weight / sigma has norm 1
    with torch.no_grad():
        sigma = torch.linalg.matrix_norm(model.block2.c1.weight.flatten(1), 2).item()
    assert sigma == pytest.approx(1.0, abs=0.1)


# --------------------------------------------------------------------------------------------
# GELU and SiLU: the scheme's relu rule unless it states its own
# --------------------------------------------------------------------------------------------


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(256, 512), nn.Linear(512, 512)
        self.act = nn.GELU(approximate="tanh")
        self.fc3, self.out = nn.Linear(512, 256), nn.Linear(256, 40)
        self.loss = SoftmaxInLoss()

    def forward(self, x):
        h = self.fc3(F.silu(self.fc2(F.gelu(self.fc1(x)))))
        return self.loss(self.out(self.act(h)))


def test_gelu_and_silu_take_the_relu_rule_unless_the_scheme_states_theirs():
    model = GeluNet()
    records = gan.initialize(model, "he_xavier", seed=0, example_input=torch.randn(2, 256))
    check(
        model,
        records,
        {
            "fc1": ("gelu", he(256)),
            "fc2": ("silu", he(512)),
            "fc3": ("gelu", he(512)),
            "out": ("softmax", xavier(256, 40)),
        },
    )
    own = Scheme.parse(
        "own",
        {"weights": {"gelu": "lecun_normal", "silu": "kaiming_normal", "softmax": "zeros"}},
        "t",
    )
    records = gan.initialize(model, own, seed=0)  # and traced symbolically
    rules = {r.layer: (r.activation, r.rule, r.gain) for r in records if r.param == "weight"}
    assert rules["fc1"] == ("gelu", "lecun_normal", 1.0)
    assert rules["fc2"] == ("silu", "kaiming_normal", RELU_GAIN)
    assert model.fc1.weight.std().item() == pytest.approx(1 / 16, rel=std_tolerance(256 * 512))
    auto = Scheme.parse("auto", {"weights": {"rule": "xavier_normal", "gain": "auto"}}, "t")
    gains = {r.layer: r.gain for r in gan.initialize(model, auto, seed=0) if r.param == "weight"}
    assert gains == {"fc1": RELU_GAIN, "fc2": RELU_GAIN, "fc3": RELU_GAIN, "out": 1.0}


# --------------------------------------------------------------------------------------------
# The hard cases: one rule each, or a refusal that names the layer and the way to declare it
# --------------------------------------------------------------------------------------------


class TwoConsumers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(300, 300)

    def forward(self, x):
        h = self.fc(x)
        return torch.tanh(h) * torch.sigmoid(h)


class Gated(nn.Module):
    def __init__(self, act=None):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.a(x) * self.b(x))


class Shared(nn.Module):
    """One ReLU module used after two layers, one in place: ReLU for both."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU(inplace=True)
        self.out, self.sigmoid = nn.Linear(8, 1), SigmoidInLoss()

    def forward(self, x):
        h = self.act(self.fc2(self.act(self.fc1(x))))
        h = h.relu_()
        return self.sigmoid(self.out(h * 0.5))


@pytest.mark.parametrize("example", [None, torch.randn(2, 8)])
def test_one_activation_module_used_twice_and_in_place_calls(example):
    feeds = {path: str(f) for path, _, f in trace_feeds(Shared(), example)}
    assert feeds == {"fc1": "relu", "fc2": "relu", "out": "sigmoid"}


class CifarBlock(nn.Module):
    """The CIFAR ResNet layout: an empty nn.Sequential as the identity shortcut."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.shortcut = nn.Sequential()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 1), SigmoidInLoss())

    def forward(self, x):
        out = F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))
        return self.head(out)


@pytest.mark.parametrize("example", [None, torch.randn(2, 8, 4, 4)])
def test_an_empty_sequential_shortcut_is_traced_through(example):
    feeds = {path: str(f) for path, _, f in trace_feeds(CifarBlock(), example)}
    assert feeds == {"conv1": "relu", "conv2": "relu", "head.1": "sigmoid"}


class InPlace(nn.Module):
    """Functional in-place activations, each read back from the tensor it overwrote."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        h = F.leaky_relu_(self.a(x), 0.1)
        h = torch.relu_(self.b(h))
        h = F.relu(self.c(h), inplace=True)
        return self.d(h).tanh_()


@pytest.mark.parametrize("example", [None, torch.randn(2, 8)])
def test_in_place_functional_activations(example):
    feeds = {path: str(f) for path, _, f in trace_feeds(InPlace(), example)}
    assert feeds == {"a": "leaky_relu(0.1)", "b": "relu", "c": "relu", "d": "tanh"}


class Unread(nn.Module):
    """A nonlinearity whose result nothing reads, and one in place whose result is not assigned."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 1)
        self.act, self.sigmoid = nn.ReLU(inplace=True), SigmoidInLoss()

    def forward(self, x):
        h = self.a(x)
        unread = torch.tanh(h)  # noqa: F841 - computed, never used: it decides nothing
        h = F.leaky_relu(h, 0.2)
        g = self.b(h)
        self.act(g)  # in place: g is now its ReLU, although the result is not assigned
        return self.sigmoid(self.out(g))


@pytest.mark.parametrize("example", [None, torch.randn(2, 8)])
def test_an_unread_nonlinearity_decides_nothing_unless_it_works_in_place(example):
    feeds = {path: str(f) for path, _, f in trace_feeds(Unread(), example)}
    assert feeds == {"a": "leaky_relu(0.2)", "b": "relu", "out": "sigmoid"}


class Reciprocal(nn.Module):
    def __init__(self, scaled: bool):
        super().__init__()
        self.a, self.out, self.sigmoid = nn.Linear(8, 8), nn.Linear(8, 1), SigmoidInLoss()
        self.scaled = scaled

    def forward(self, x):
        h = self.a(x)
        h = h / 2.0 if self.scaled else 2.0 / h
        return self.sigmoid(self.out(torch.tanh(h)))


@pytest.mark.parametrize("example", [None, torch.randn(2, 8)])
def test_a_reciprocal_is_not_looked_past_as_a_scaling(example):
    feeds = {path: str(f) for path, _, f in trace_feeds(Reciprocal(scaled=True), example)}
    assert feeds == {"a": "tanh", "out": "sigmoid"}
    with pytest.raises(UserError, match=r"layer 'a' \(Linear\) feeds (truediv|rdiv)\(\)"):
        trace_feeds(Reciprocal(scaled=False), example)


class TwoSlopes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        return F.leaky_relu(h, 0.2) + F.leaky_relu(h, 0.1)


class AlsoOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        return h, torch.tanh(h)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.spare = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.fc(x))


REFUSED = [
    (
        TwoSlopes,
        (2, 8),
        r"feeds two different nonlinearities: leaky_relu\(0.2\).*leaky_relu\(0.1\)",
    ),
    (AlsoOutput, (2, 8), r"layer 'fc' \(Linear\) feeds tanh and is also the model's output"),
    (Unused, (2, 8), r"layer 'spare' \(Linear\) is not called by the forward"),
    (TwoConsumers, (2, 300), r"layer 'fc' \(Linear\) feeds two different nonlinearities: tanh"),
    (Gated, (2, 8), r"layer 'a' \(Linear\) feeds mul\(\) in the top-level forward, which is not"),
    (
        lambda: nn.Sequential(nn.Linear(8, 8), nn.ELU()),
        (2, 8),
        r"layer '0' \(Linear\) feeds '1' \(ELU\)",
    ),
    (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.ReLU()),
        (2, 3, 8, 8),
        r"layer '0' \(Conv2d\) feeds '1' \(MaxPool2d\)",
    ),
    (
        lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)),
        (2, 8),
        r"layer '2' \(Linear\) feeds no nonlinearity.*SigmoidInLoss",
    ),
]


@pytest.mark.parametrize(("make", "shape", "message"), REFUSED)
@pytest.mark.parametrize("traced_by", ["fx", "running"])
def test_what_no_rule_settles_is_refused_naming_the_layer_and_how_to_declare_it(
    make, shape, message, traced_by
):
    example = torch.randn(*shape) if traced_by == "running" else None
    with pytest.raises(UserError, match=message + r".*Declare what it feeds.*overrides=\{'"):
        gan.initialize(make(), "he_xavier", seed=0, example_input=example)


def test_a_declared_nonlinearity_or_rule_settles_a_refused_layer():
    model = TwoConsumers()
    (weight, _) = gan.initialize(model, "he_xavier", seed=0, overrides={"fc": "tanh"})
    assert (weight.activation, weight.rule) == ("tanh", "xavier_normal")
    assert weight.measured_std == pytest.approx(math.sqrt(2 / 600), rel=std_tolerance(90_000))
    (weight, _) = gan.initialize(model, "he_xavier", seed=0, overrides={"f*": "leaky_relu(0.1)"})
    assert (weight.activation, weight.gain) == ("leaky_relu(0.1)", math.sqrt(2 / 1.01))
    (weight, _) = gan.initialize(
        model, "he_xavier", seed=0, overrides={"fc": {"rule": "normal", "std": 0.1}}
    )
    assert (weight.activation, weight.rule) == (None, "normal(0, 0.1)")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fc": "kaiming_normal"}, r"layer 'fc': rule 'kaiming_normal' takes its gain from"),
        ({"fc": "leaky_relu"}, r"say leaky_relu's slope, e.g. 'leaky_relu\(0.2\)'"),
        ({"fc": "tanh", "nope": "relu"}, r"override pattern\(s\) \['nope'\] match no layer"),
        ({"fc": "kaiming"}, r"overrides\['fc'\]: unknown rule 'kaiming'"),
    ],
)
def test_a_declaration_that_cannot_apply_is_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        gan.initialize(TwoConsumers(), "he_xavier", seed=0, overrides=overrides)


class LayerScale(nn.Module):
    """A ConvNeXt-style block: a learned per-channel scale on the block itself."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gamma = nn.Parameter(torch.full((8,), 1e-6))

    def forward(self, x):
        return x + self.gamma * F.gelu(self.fc(x))


@pytest.mark.parametrize(
    ("model", "scheme", "message"),
    [
        (LayerScale(), "he_xavier", r"parameters not reached by the init rule: gamma"),
        (
            nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU()),
            Scheme.parse("relu only", {"weights": {"relu": "kaiming_normal"}}, "t"),
            r"no weight rule for layers feeding tanh \(layer '0'\)",
        ),
    ],
)
def test_a_refusal_leaves_the_model_as_it_was(model, scheme, message):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=message):
        gan.initialize(model, scheme, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_deprecated_spectral_norm_hook_is_refused_with_its_replacement():
    model = nn.Sequential(nn.utils.spectral_norm(nn.Linear(8, 8)), nn.ReLU())
    with pytest.raises(UserError, match=r"'0' \(Linear\) has parameter\(s\) \['weight_orig'\]"):
        gan.initialize(model, "he_xavier", seed=0)


def test_a_model_fx_cannot_trace_asks_for_an_example_input():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            h = self.fc(x)
            return torch.tanh(h) if h.sum() > 0 else torch.tanh(-h)

    with pytest.raises(UserError, match="cannot trace DataDependent.*example_input=x"):
        gan.initialize(DataDependent(), "he_xavier", seed=0)
    (weight, _) = gan.initialize(
        DataDependent(), "he_xavier", seed=0, example_input=torch.randn(2, 8)
    )
    assert weight.activation == "tanh"


def test_tracing_by_running_leaves_buffers_modes_and_the_rng_as_they_were():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU())
    model[1].running_mean.fill_(0.25)
    model.train()
    example = torch.randn(4, 8)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    gan.initialize(model, "dcgan", example_input=example, generator=torch.Generator())
    assert torch.rand(1) == before  # the global RNG did not move
    assert model.training and model[2].training
    assert torch.all(model[1].running_mean == 0.25)


# --------------------------------------------------------------------------------------------
# The one call, per-network schemes
# --------------------------------------------------------------------------------------------


def test_per_network_schemes_by_name_give_what_a_run_gives():
    cfg = preset(ModelConfig, "model", "mlp")
    torch.manual_seed(3)
    g, d = nets.build(cfg, (1, 8, 8))
    records = gan.initialize({"generator": g, "discriminator": d}, "g_he_xavier_d_default", seed=3)
    assert {r.network: r.scheme for r in records} == {
        "generator": "he_xavier",
        "discriminator": "default",
    }
    torch.manual_seed(3)
    g_run, d_run = nets.build(cfg, (1, 8, 8))
    for network, net in (("generator", g_run), ("discriminator", d_run)):
        scheme = resolve_scheme("g_he_xavier_d_default", network, CONF_DIR / "init", "x")
        stream = torch.Generator().manual_seed(derive_seed(3, f"init/{network}"))
        init_call.initialize(net, scheme, network=network, generator=stream)
    for a, b in ((g, g_run), (d, d_run)):
        assert all(
            torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values())
        )

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.generator, self.discriminator = nets.build(cfg, (1, 8, 8))

    pair = Pair()
    gan.initialize(pair, {"generator": "he_xavier", "discriminator": "default"}, seed=3)
    assert torch.equal(pair.generator.fc2.weight, g.fc2.weight)
    assert torch.equal(pair.discriminator.fc1.weight, d.fc1.weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overrides": {"fc1": "relu"}}, r"overrides is a mapping by network name.*keys \['fc1'\]"),
        ({"example_input": torch.zeros(2, 4)}, r"example_input is a mapping by network name"),
        ({"scheme": {"generator": "he_xavier"}}, r"schemes for \['generator'\] but networks"),
    ],
)
def test_with_several_networks_nothing_given_is_silently_ignored(kwargs, message):
    g = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    d = nn.Sequential(nn.Linear(4, 1), SigmoidInLoss())
    kwargs = {"scheme": "he_xavier", **kwargs}
    with pytest.raises(UserError, match=message):
        gan.initialize({"generator": g, "discriminator": d}, seed=0, **kwargs)


def test_a_name_whose_networks_differ_asks_which_on_a_single_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with pytest.raises(UserError, match="differs between generator and discriminator.*network="):
        gan.initialize(net, "g_he_xavier_d_default", seed=0)
    (weight, _) = gan.initialize(net, "g_he_xavier_d_default", seed=0, network="discriminator")
    assert (weight.network, weight.rule) == ("discriminator", "default")


# --------------------------------------------------------------------------------------------
# The project's networks: exactly today's records and weights
# --------------------------------------------------------------------------------------------


def registration_order_feeds(net: nn.Module) -> list[TracedLayer]:
    """The reader the rule used before it traced data flow (kept here as the reference): each
    leaf's next activation module in registration order, looking past norms, dropout, reshapes."""
    through = init_module.NORMS + (nn.Dropout, nn.Flatten, nn.Unflatten)
    kinds = {nn.LeakyReLU: "leaky_relu", nn.ReLU: "relu", nn.Tanh: "tanh", SigmoidInLoss: "sigmoid"}
    leaves = [
        (p, m)
        for p, m in net.named_modules()
        if not any(True for _ in m.children()) or isinstance(m, init_module.WEIGHTED_LAYERS)
    ]
    leaves = [(p, m) for p, m in leaves if ".parametrizations." not in p]
    traced = []
    for i, (path, module) in enumerate(leaves):
        if not isinstance(module, init_module.WEIGHTED_LAYERS + init_module.NORMS):
            continue
        feeds = None
        for later_path, later in leaves[i + 1 :]:
            kind = next((k for cls, k in kinds.items() if isinstance(later, cls)), None)
            if kind:
                slope = float(later.negative_slope) if kind == "leaky_relu" else None
                feeds = init_module.Feeds(kind, 0.0 if kind == "relu" else slope, later_path)
                break
            if not isinstance(later, through + (nn.Identity,)):
                break
        traced.append(TracedLayer(path, module, feeds))
    return traced


PROJECT_CASES = [
    pytest.param(model, g_norm, d_norm, id=f"{model}-g_{g_norm}-d_{d_norm}")
    for model in nets.MODELS
    for g_norm in G_NORMS
    for d_norm in D_NORMS
]
SCHEMES = ("he_xavier", "dcgan", "orthogonal", "default")


def build_and_init(model, norms, scheme_name, tracer, seed=3):
    cfg = preset(ModelConfig, "model", model, **norms)
    torch.manual_seed(seed)
    g, d = nets.build(cfg, (1, 8, 8))
    records = []
    for network, net in (("generator", g), ("discriminator", d)):
        scheme = resolve_scheme(scheme_name, network, CONF_DIR / "init", scheme_name)
        stream = torch.Generator().manual_seed(derive_seed(seed, f"init/{network}"))
        example = {"generator": torch.randn(2, cfg.z_dim), "discriminator": torch.randn(2, 1, 8, 8)}
        records += init_module.initialize_network(
            net, scheme, network, stream, example[network] if tracer == "running" else None
        )
    return records, {**g.state_dict(), **{f"d.{k}": v for k, v in d.state_dict().items()}}


@pytest.mark.parametrize(("model", "g_norm", "d_norm"), PROJECT_CASES)
def test_project_networks_give_exactly_the_records_and_weights_of_the_registration_order_reader(
    model, g_norm, d_norm, monkeypatch
):
    norms = {"g_norm": g_norm, "d_norm": d_norm}
    for scheme_name in SCHEMES:
        results = {}
        for tracer in ("fx", "running"):
            results[tracer] = build_and_init(model, norms, scheme_name, tracer)
        with monkeypatch.context() as patch:
            patch.setattr(
                init_module, "trace_layers", lambda net, example: registration_order_feeds(net)
            )
            results["reference"] = build_and_init(model, norms, scheme_name, "fx")
        reference_records, reference_state = results.pop("reference")
        for records, state in results.values():
            assert [r.to_dict() for r in records] == [r.to_dict() for r in reference_records]
            assert init_call.init_table(records) == init_call.init_table(reference_records)
            assert state.keys() == reference_state.keys()
            assert all(torch.equal(state[k], reference_state[k]) for k in state)


# sha256 (first 16 hex digits) of the records and weights, computed at the commit before the rule
# traced data flow (c9b76cc): runs' results must not change.
GOLDEN = [
    ("mlp", {}, "he_xavier", "fd2899e31bbb9669"),
    ("mlp", {"g_norm": "none", "d_norm": "spectral"}, "dcgan", "f6a25abca05bef29"),
    ("dcgan", {}, "he_xavier_uniform", "4ab8a995067aab4b"),
    ("dcgan", {"d_norm": "spectral"}, "he_xavier", "24821090a520d9ed"),
    ("mlp_deep", {}, "xavier", "d22196fbecc5725f"),
    ("dcgan", {"g_norm": "none", "d_norm": "none"}, "default", "9a10f4667a667a65"),
]


@pytest.mark.parametrize(("model", "norms", "scheme_name", "digest"), GOLDEN)
def test_project_networks_are_bit_identical_to_before(model, norms, scheme_name, digest):
    cfg = preset(ModelConfig, "model", model, **norms)
    torch.manual_seed(3)
    g, d = nets.build(cfg, (1, 8, 8))
    h = hashlib.sha256()
    for network, net in (("generator", g), ("discriminator", d)):
        scheme = resolve_scheme(scheme_name, network, CONF_DIR / "init", scheme_name)
        stream = torch.Generator().manual_seed(derive_seed(3, f"init/{network}"))
        records = init_call.initialize(net, scheme, network=network, generator=stream)
        h.update(json.dumps([r.to_dict() for r in records]).encode())
        for name, t in net.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().contiguous().numpy().tobytes())
    assert h.hexdigest()[:16] == digest


# --------------------------------------------------------------------------------------------
# The README's example
# --------------------------------------------------------------------------------------------

README_HEADING = "## Use the init rule in your own model"


def readme_example() -> str | None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if README_HEADING not in text:
        return None
    found = re.search(r"```python\n(.*?)```", text.split(README_HEADING, 1)[1], re.DOTALL)
    return found.group(1) if found else None


def test_the_guides_example_runs(capsys):
    text = (ROOT / "docs" / "init_any_model.md").read_text(encoding="utf-8")
    exec(re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1), {"__name__": "guide"})
    assert "leaky_relu(0.2)  he_xavier  kaiming_normal  1.387  0.1733" in capsys.readouterr().out


@pytest.mark.skipif(readme_example() is None, reason="README has no section " + README_HEADING)
def test_readme_example_runs(capsys):
    exec(readme_example(), {"__name__": "readme_example"})
    assert "kaiming_normal" in capsys.readouterr().out
