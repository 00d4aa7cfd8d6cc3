"""Generator and discriminator architectures: an MLP GAN and a DCGAN sized from the image shape.

Every network is an ``nn.Sequential`` with named stages and every nonlinearity is a module, so the
init rule (``gan.init``) can read which nonlinearity each layer feeds. The discriminator returns
logits; its sigmoid lives in the loss and is declared with ``SigmoidInLoss``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gan.config import ModelConfig
from gan.errors import UserError
from gan.init import SigmoidInLoss


class Generator(nn.Sequential):
    """z (B, z_dim) → image (B, C, H, W) in [-1, 1]."""

    def __init__(self, stages: OrderedDict[str, nn.Module], z_dim: int, image_shape: Sequence[int]):
        super().__init__(stages)
        self.z_dim = z_dim
        self.image_shape = tuple(image_shape)


class Discriminator(nn.Sequential):
    """image (B, C, H, W) → logit (B, 1); apply a sigmoid (or BCE-with-logits) outside."""

    def __init__(self, stages: OrderedDict[str, nn.Module], image_shape: Sequence[int]):
        super().__init__(stages)
        self.image_shape = tuple(image_shape)


def spectral(layer: nn.Module) -> nn.Module:
    """``layer`` with torch's spectral-norm parametrization: its weight is ``original / sigma``,
    sigma estimated by one power iteration per training forward pass. Registering it draws the
    power iteration's start vectors from the global RNG."""
    return nn.utils.parametrizations.spectral_norm(layer)


def _d_layer(layer: nn.Module, d_norm: str) -> nn.Module:
    return spectral(layer) if d_norm == "spectral" else layer


def mlp(
    image_shape: Sequence[int],
    z_dim: int,
    g_widths: Sequence[int],
    d_widths: Sequence[int],
    slope: float,
    *,
    g_norm: str,
    d_norm: str,
) -> tuple[Generator, Discriminator]:
    """The classic fully connected GAN.

    G: z → widths[0] → … → widths[-1] → C·H·W → tanh, Leaky ReLU between; with ``g_norm=batch``
    BatchNorm (default eps 1e-5, momentum 0.1) after every hidden Linear except the first, as
    customary. D: C·H·W → widths … → 1, Leaky ReLU between, sigmoid in the loss; ``d_norm``:
    ``none``, ``batch`` (after every hidden Linear but the first, as in G) or ``spectral`` (every
    Linear). conf/model/mlp.yaml holds every argument's default (``build`` with ``preset``).
    """
    pixels = math.prod(image_shape)
    g: OrderedDict[str, nn.Module] = OrderedDict()
    width_in = z_dim
    for i, width in enumerate(g_widths, start=1):
        g[f"fc{i}"] = nn.Linear(width_in, width)
        if i > 1 and g_norm == "batch":
            g[f"bn{i}"] = nn.BatchNorm1d(width)
        g[f"act{i}"] = nn.LeakyReLU(slope)
        width_in = width
    g["out"] = nn.Linear(width_in, pixels)
    g["tanh"] = nn.Tanh()
    g["reshape"] = nn.Unflatten(1, tuple(image_shape))

    d: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width_in = pixels
    for i, width in enumerate(d_widths, start=1):
        d[f"fc{i}"] = _d_layer(nn.Linear(width_in, width), d_norm)
        if i > 1 and d_norm == "batch":
            d[f"bn{i}"] = nn.BatchNorm1d(width)
        d[f"act{i}"] = nn.LeakyReLU(slope)
        width_in = width
    d["out"] = _d_layer(nn.Linear(width_in, 1), d_norm)
    d["sigmoid"] = SigmoidInLoss()
    return Generator(g, z_dim, image_shape), Discriminator(d, image_shape)


def dcgan(
    image_shape: Sequence[int],
    z_dim: int,
    g_widths: Sequence[int],
    d_widths: Sequence[int],
    slope: float,
    *,
    g_norm: str,
    d_norm: str,
) -> tuple[Generator, Discriminator]:
    """A DCGAN for small square images; each stage halves (D) or doubles (G) the side.

    G: Linear z → g_widths[0]×s×s (s = side / 2^len(g_widths)), BatchNorm, ReLU, then
    ConvTranspose(k4, s2, p1) stages with BatchNorm + ReLU, the last to C channels and tanh;
    ``g_norm=none`` drops every BatchNorm. A Linear projection (not a ConvTranspose on a 1×1
    input) keeps every ConvTranspose's interior fan-in in·k²/stride², the fan the init rule uses
    (on these small inputs the border outputs sum fewer terms: README, "Fans of transposed
    convolutions").
    D: Conv(k4, s2, p1) stages with Leaky ReLU, then Flatten and a Linear to one logit;
    ``d_norm``: ``batch`` (BatchNorm on all stages but the first), ``none`` or ``spectral`` (every
    Conv and the Linear). conf/model/dcgan.yaml holds every argument's default.
    """
    check_dcgan_side(image_shape, g_widths, d_widths)
    channels, height, _ = image_shape
    g = _dcgan_generator(channels, height, z_dim, g_widths, g_norm)  # first: global RNG order
    d = _dcgan_discriminator(channels, height, d_widths, slope, d_norm)
    return Generator(g, z_dim, image_shape), Discriminator(d, image_shape)


def check_dcgan_side(
    image_shape: Sequence[int], g_widths: Sequence[int], d_widths: Sequence[int]
) -> None:
    """Each stage halves (D) or doubles (G) the side: square, and divisible by 2^stages."""
    _, height, width = image_shape
    for name, widths in (("generator", g_widths), ("discriminator", d_widths)):
        factor = 2 ** len(widths)
        if height != width or height % factor:
            raise UserError(
                f"model=dcgan: the {name} halves the image side {len(widths)} times, so it needs "
                f"a square image whose side is divisible by {factor}; got {height}×{width}. "
                "Change model.generator_widths/discriminator_widths or use model=mlp"
            )


def _dcgan_generator(
    channels: int, side: int, z_dim: int, widths: Sequence[int], norm: str
) -> OrderedDict[str, nn.Module]:
    start = side // 2 ** len(widths)  # the projection's side, doubled by each stage
    g: OrderedDict[str, nn.Module] = OrderedDict()
    g["project"] = nn.Linear(z_dim, widths[0] * start * start)
    g["reshape"] = nn.Unflatten(1, (widths[0], start, start))
    if norm == "batch":
        g["bn0"] = nn.BatchNorm2d(widths[0])
    g["act0"] = nn.ReLU()
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:]), start=1):
        g[f"up{i}"] = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
        if norm == "batch":
            g[f"bn{i}"] = nn.BatchNorm2d(c_out)
        g[f"act{i}"] = nn.ReLU()
    g["out"] = nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1)
    g["tanh"] = nn.Tanh()
    return g


def _dcgan_discriminator(
    channels: int, side: int, widths: Sequence[int], slope: float, norm: str
) -> OrderedDict[str, nn.Module]:
    d: OrderedDict[str, nn.Module] = OrderedDict()
    c_in = channels
    for i, c_out in enumerate(widths, start=1):
        d[f"conv{i}"] = _d_layer(nn.Conv2d(c_in, c_out, 4, 2, 1), norm)
        if i > 1 and norm == "batch":
            d[f"bn{i}"] = nn.BatchNorm2d(c_out)
        d[f"act{i}"] = nn.LeakyReLU(slope)
        c_in = c_out
    d["flatten"] = nn.Flatten()
    end = side // 2 ** len(widths)  # the side after the last stage
    d["out"] = _d_layer(nn.Linear(c_in * end * end, 1), norm)
    d["sigmoid"] = SigmoidInLoss()
    return d


def _dcgan_fits(model: ModelConfig, image_shape: Sequence[int]) -> None:
    check_dcgan_side(image_shape, model.generator_widths, model.discriminator_widths)


def _any_shape(model: ModelConfig, image_shape: Sequence[int]) -> None:
    """A flat MLP takes any image shape."""


@dataclass(frozen=True)
class Architecture:
    """What ``model.name=NAME`` builds, and what the rest of the package asks of it."""

    builder: Callable[..., tuple[Generator, Discriminator]]  # as mlp and dcgan: see build()
    convolutional: bool  # trainer.channels_last=auto turns channels_last on for it
    fits: Callable[[ModelConfig, Sequence[int]], None] = _any_shape  # UserError if it cannot be
    # built for an image shape: called before any data is loaded


# Every model=NAME (conf/model/NAME.yaml names it). mlp_deep is a preset: the mlp builder with
# other widths and norms.
ARCHITECTURES = {
    "mlp": Architecture(mlp, convolutional=False),
    "dcgan": Architecture(dcgan, convolutional=True, fits=_dcgan_fits),
    "mlp_deep": Architecture(mlp, convolutional=False),
}
MODELS = tuple(ARCHITECTURES)


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def check(model: ModelConfig, image_shape: Sequence[int]) -> None:
    """Raises a UserError for a model that cannot be built for ``image_shape``, building nothing
    (so a run refuses it before its data and feature classifier are prepared)."""
    architecture(model.name).fits(model, image_shape)


def build(model: ModelConfig, image_shape: Sequence[int]) -> tuple[Generator, Discriminator]:
    """Builds (G, D) on the CPU with PyTorch's default init, drawing from the global RNG. A
    model=NAME as the YAML sets it: ``build(preset(ModelConfig, "model", NAME), image_shape)``."""
    check(model, image_shape)
    return ARCHITECTURES[model.name].builder(
        image_shape,
        model.z_dim,
        model.generator_widths,
        model.discriminator_widths,
        model.slope,
        g_norm=model.g_norm,
        d_norm=model.d_norm,
    )


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def model_parameters(model: ModelConfig, image_shape: Sequence[int]) -> int:
    """G's and D's parameters together, counted on the meta device: nothing is allocated, and
    the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        g, d = build(model, image_shape)
    return count_parameters(g) + count_parameters(d)


@torch.no_grad()
def generate(g: Generator, z: torch.Tensor) -> torch.Tensor:
    """Samples in eval mode (BatchNorm running statistics), restoring the previous mode."""
    was_training = g.training
    g.eval()
    images = g(z)
    g.train(was_training)
    return images


def wants_channels_last(model: str, setting: str) -> bool:
    """channels_last memory format: ``auto`` turns it on for a convolutional model, whose
    convolutions run faster in it on CPU (README, Speed)."""
    return setting == "on" or (setting == "auto" and architecture(model).convolutional)


def to_channels_last(
    g: nn.Module, d: nn.Module, images: torch.Tensor
) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """G, D and the images in channels_last memory format (same values, faster convolutions)."""
    fmt = torch.channels_last
    return g.to(memory_format=fmt), d.to(memory_format=fmt), images.contiguous(memory_format=fmt)
