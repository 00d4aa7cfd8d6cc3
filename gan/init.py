"""Activation-aware weight initialization: the one rule that decides every weight.

A weighted layer (Linear, Conv, ConvTranspose) is initialized for the nonlinearity its output
*feeds*, found by following the data through the model's forward (``gan.trace``), looking past
normalization, dropout, reshaping and sums. A sigmoid that lives inside the loss is declared with
``SigmoidInLoss``. Anything the rule cannot decide is an error naming the layer and how to declare
it (``overrides``), never a guess. ``gan.initialize(model, "he_xavier", seed=0)``
(``gan.init_call``) is the one call.

A *scheme* (``gan.schemes``, re-exported here) is data: for each activation kind, a ``Rule``
saying how to draw the weight; plus a rule for biases, one for normalization layers, and optional
per-layer overrides. What each layer feeds is ``gan.trace``; this module reads a layer's tensors
and fans, draws each tensor by its rule and records it (``InitRecord``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from gan.errors import UserError
from gan.schemes import (
    DISTRIBUTIONS,
    FAMILIES,
    RULE_NAMES,
    TRUNC_STD_FACTOR,
    Family,
    Rule,
    Scheme,
    Target,
    draw_dist,
    find_rule,
    rule_gain,
    rule_names,
    torch_default_std,
)
from gan.trace import ACTIVATIONS, Feeds, TracedLayer, trace_feeds, trace_layers
from gan.trace_graph import NORMS, WEIGHTED_LAYERS, SigmoidInLoss, SoftmaxInLoss

__all__ = [
    "ACTIVATIONS",
    "DISTRIBUTIONS",
    "FAMILIES",
    "NORMS",
    "RULE_NAMES",
    "TRUNC_STD_FACTOR",
    "WEIGHTED_LAYERS",
    "Family",
    "Feeds",
    "InitRecord",
    "Rule",
    "Scheme",
    "SigmoidInLoss",
    "SoftmaxInLoss",
    "Target",
    "declared_feeds",
    "draw_dist",
    "fans",
    "find_rule",
    "initialize_network",
    "layer_type",
    "own_tensors",
    "parse_overrides",
    "rule_names",
    "torch_default_std",
    "trace_feeds",
    "trace_layers",
    "trainable_weight",
]


# --------------------------------------------------------------------------------------------
# The tensors of a layer
# --------------------------------------------------------------------------------------------


def trainable_weight(layer: nn.Module) -> torch.Tensor:
    """The weight tensor the optimizer trains and the init rule draws: ``layer.weight``, or under a
    parametrization (spectral norm) its ``original``, since ``layer.weight`` is then recomputed
    from it on every access (and, in training mode, advances the power iteration)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def own_tensors(module: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """``(name, kind, tensor)`` for each parameter of ``module`` itself, the weight first: ``name``
    is its path below the module (``weight``, or ``parametrizations.weight.original`` under a
    parametrization), ``kind`` what it is to the layer (``weight`` | ``bias``)."""
    found = []
    if parametrize.is_parametrized(module):
        for kind, chain in module.parametrizations.items():
            if not isinstance(getattr(chain, "original", None), nn.Parameter):
                raise UserError(
                    f"'{type(module).__name__}.{kind}' has a parametrization with several "
                    "originals, which the init rule does not cover"
                )
            found.append((f"parametrizations.{kind}.original", kind, chain.original))
    found += [(name, name, t) for name, t in module.named_parameters(recurse=False)]
    return found


def layer_type(module: nn.Module) -> str:
    """The class name, a parametrized layer's as it was before (``Linear``, not
    ``ParametrizedLinear``): the parameter's path says that it is parametrized."""
    cls = type(module)
    return cls.__bases__[0].__name__ if parametrize.is_parametrized(module) else cls.__name__


# --------------------------------------------------------------------------------------------
# Fans
# --------------------------------------------------------------------------------------------


def fans(
    layer: nn.Module, sizes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
) -> tuple[float, float]:
    """(fan_in, fan_out): terms each output sums, outputs each input reaches (interior average).

    Linear and stride-1 Conv match torch.nn.init. Strides are counted where torch ignores them:
    a Conv with stride s reaches out·k/s outputs per input, and a ConvTranspose (weight
    (in, out/g, *k), from which torch takes fan_in = out·k, the *output* side) sums in·k/s terms
    into each output. Exact away from borders when the stride divides the kernel (k4 s2 here).
    ``sizes`` (the spatial sizes in and out, known when the model was traced by running it) caps
    k/s per dimension at the size there: a ConvTranspose on a 1×1 input sums only in terms.
    Border outputs, which sum fewer terms, are not counted (torch's and He et al.'s convention).
    """
    if isinstance(layer, nn.Linear):
        return float(layer.in_features), float(layer.out_features)
    if isinstance(layer, nn.modules.conv._ConvNd):
        fan_in_ch = layer.in_channels / layer.groups
        fan_out_ch = layer.out_channels / layer.groups
        taps = math.prod(layer.kernel_size)
        # Per dimension, k/s positions on the strided side, at most as many as it has.
        side = None if sizes is None else sizes[0] if layer.transposed else sizes[1]
        per_dim = [k / s for k, s in zip(layer.kernel_size, layer.stride)]
        if side and len(side) == len(per_dim):
            per_dim = [min(r, n) for r, n in zip(per_dim, side)]
        strided = math.prod(per_dim)
        if layer.transposed:
            return fan_in_ch * strided, fan_out_ch * taps
        return fan_in_ch * taps, fan_out_ch * strided
    raise TypeError(f"no fans for {type(layer).__name__}")


# --------------------------------------------------------------------------------------------
# One tensor: its record, its rule, its draw
# --------------------------------------------------------------------------------------------


@dataclass
class InitRecord:
    """One initialized tensor, as written to init_report.json."""

    network: str  # generator | discriminator
    layer: str  # module path
    param: str  # weight | bias, or parametrizations.weight.original under spectral norm
    type: str  # module class (as it was before a parametrization)
    shape: list[int]
    activation: str | None  # what the layer feeds
    slope: float | None
    scheme: str
    rule: str
    gain: float | None
    fan_in: float | None
    fan_out: float | None
    expected_mean: float
    expected_std: float
    measured_std: float = field(default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Slot:
    """One parameter tensor of a traced layer."""

    path: str
    module: nn.Module
    param: str  # the tensor's path below the module (own_tensors' name)
    kind: str  # weight | bias
    tensor: torch.Tensor
    feeds: Feeds | None
    sizes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # spatial in, out (fans)
    declared: Rule | None = None  # a weight's rule, declared by an override
    pattern: str | None = None  # the override pattern that matched its layer

    @property
    def role(self) -> str:
        """weight | bias (of a Linear/Conv) | norm_weight | norm_bias."""
        return f"norm_{self.kind}" if isinstance(self.module, NORMS) else self.kind


_ZEROS = Rule("zeros")
# What a tensor without a weight matrix may use instead of a family that needs one.
_INSTEAD = {
    "bias": "use zeros, default or a fixed normal/uniform",
    "norm": "use ones, default or a fixed normal such as {rule: normal, mean: 1, std: 0.02}",
}
# A layer feeding one of these, under a scheme with no rule for it, gets the scheme's relu rule.
_LIKE_RELU = ("gelu", "silu")


def _choose_rule(scheme: Scheme, slot: Slot) -> Rule:
    """The rule for one tensor."""
    if slot.role == "norm_bias" and scheme.norm.family != "default":
        return _ZEROS  # normalization shift starts at 0 under every non-default rule
    if slot.role.startswith("norm_"):
        return scheme.norm
    if slot.role == "bias":
        return scheme.bias
    if slot.declared is not None:
        return slot.declared
    kind = slot.feeds.kind
    if kind not in scheme.weights and kind in _LIKE_RELU and "relu" in scheme.weights:
        kind = "relu"
    if kind not in scheme.weights:
        raise UserError(
            f"scheme '{scheme.name}' has no weight rule for layers feeding {slot.feeds.kind} "
            f"(layer '{slot.path}'); add weights.{slot.feeds.kind}"
        )
    return scheme.weights[kind]


def _target(scheme: Scheme, rule: Rule, slot: Slot) -> Target:
    """What ``rule``'s family formulas read about ``slot``; refuses a family that cannot apply."""
    family, role = FAMILIES[rule.family], slot.role
    if family.needs_matrix and role != "weight":
        where = "norm" if role.startswith("norm_") else "bias"
        raise UserError(
            f"scheme '{scheme.name}': {where} rule '{rule.name}' needs a weight matrix; "
            f"{_INSTEAD[where]}"
        )
    if role != "weight":
        matrix = None if role.startswith("norm_") else trainable_weight(slot.module)
        return Target(slot.tensor, role, matrix)
    gain = rule_gain(rule, slot.feeds)
    if gain is None and family.default_gain is not None:
        raise UserError(
            f"layer '{slot.path}': rule '{rule.name}' takes its gain from what the layer feeds, "
            f"and it feeds no nonlinearity the init rule knows; give the gain, e.g. "
            f"{{'rule': '{rule.name}', 'gain': 1.0}}, or declare what it feeds, e.g. "
            f"overrides={{'{slot.path}': 'relu'}}"
        )
    fan_in, fan_out = fans(slot.module, slot.sizes)
    return Target(slot.tensor, role, slot.tensor, fan_in, fan_out, gain)


@dataclass(frozen=True, eq=False)
class Draw:
    """One tensor's planned draw: its rule, what the rule reads, and the record it will have."""

    slot: Slot
    rule: Rule
    target: Target
    record: InitRecord

    def run(self, generator: torch.Generator | None) -> InitRecord:
        family, record = FAMILIES[self.rule.family], self.record
        with torch.no_grad():
            family.draw(
                self.rule, self.target, record.expected_mean, record.expected_std, generator
            )
        record.measured_std = float(self.slot.tensor.detach().float().std(correction=0))
        return record


def _plan(scheme: Scheme, network: str, slot: Slot) -> Draw:
    """How one tensor will be drawn; refuses (UserError) before anything is drawn."""
    rule = _choose_rule(scheme, slot)
    target = _target(scheme, rule, slot)
    family, feeds = FAMILIES[rule.family], slot.feeds
    record = InitRecord(
        network=network,
        layer=slot.path,
        param=slot.param,
        type=layer_type(slot.module),
        shape=list(slot.tensor.shape),
        activation=str(feeds) if feeds else None,
        slope=feeds.slope if feeds else None,
        scheme=scheme.name,
        rule=rule.describe(),
        gain=target.gain,
        fan_in=target.fan_in,
        fan_out=target.fan_out,
        expected_mean=float(family.mean(rule, target)),
        expected_std=float(family.std(rule, target)),
    )
    return Draw(slot, rule, target, record)


# --------------------------------------------------------------------------------------------
# Overrides: a layer's nonlinearity or rule, declared by module-path pattern
# --------------------------------------------------------------------------------------------


def declared_feeds(value: Any, where: str) -> Feeds | None:
    """``"relu"``, ``"leaky_relu(0.2)"``, ``"tanh"``… as what a layer feeds; None for a rule."""
    if not isinstance(value, str):
        return None
    name, paren, rest = value.partition("(")
    if name.strip() not in ACTIVATIONS:
        return None
    name, argument = name.strip(), rest.removesuffix(")").strip()
    if name == "leaky_relu":
        try:
            return Feeds(name, float(argument), via="declared")
        except ValueError:
            raise UserError(f"{where}: say leaky_relu's slope, e.g. 'leaky_relu(0.2)'") from None
    if paren:
        raise UserError(f"{where}: {name} takes no argument, got {value!r}")
    return Feeds(name, 0.0 if name == "relu" else None, via="declared")


def parse_overrides(overrides: Mapping[str, Any] | None) -> list[tuple[str, Rule | Feeds]]:
    """Module-path glob pattern → what the layer feeds (``"relu"``) or its weight rule."""
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise UserError(f"overrides: expected a mapping layer pattern -> rule, got {overrides!r}")
    parsed: list[tuple[str, Rule | Feeds]] = []
    for pattern, value in overrides.items():
        where = f"overrides[{pattern!r}]"
        parsed.append((str(pattern), declared_feeds(value, where) or Rule.parse(value, where)))
    return parsed


def _slots(layer: TracedLayer, overrides: list[tuple[str, Rule | Feeds]]) -> list[Slot]:
    """The tensors of one traced layer, under the first override matching it (weighted layers);
    a layer whose trace was refused needs one."""
    pattern, value = None, None
    if isinstance(layer.module, WEIGHTED_LAYERS):
        matches = ((p, v) for p, v in overrides if fnmatch.fnmatchcase(layer.path, p))
        pattern, value = next(matches, (None, None))
    if layer.problem and pattern is None:
        raise UserError(layer.problem)
    feeds = value if isinstance(value, Feeds) else None if layer.problem else layer.feeds
    rule = value if isinstance(value, Rule) else None
    tensors = own_tensors(layer.module)
    odd = [param for param, kind, _ in tensors if kind not in ("weight", "bias")]
    if odd:  # weight_orig: torch.nn.utils.spectral_norm's hook, which recomputes the weight
        raise UserError(
            f"layer '{layer.path}' ({type(layer.module).__name__}) has parameter(s) {odd}, "
            "which the init rule does not cover (the deprecated torch.nn.utils.spectral_norm or "
            "weight_norm hooks?); use torch.nn.utils.parametrizations.spectral_norm"
        )
    return [
        Slot(layer.path, layer.module, param, kind, t, feeds, layer.sizes, rule, pattern)
        for param, kind, t in tensors
    ]


# --------------------------------------------------------------------------------------------
# Applying a scheme to one network
# --------------------------------------------------------------------------------------------


def initialize_network(
    net: nn.Module,
    scheme: Scheme,
    network: str,
    generator: torch.Generator | None,
    example_input: Any = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[InitRecord]:
    """Initializes every parameter of ``net`` by ``scheme``; one record per tensor.

    Draws from ``generator`` only (None: torch's global RNG), in registration order whatever
    the trace found, so a network's weights do not depend on what was drawn before (e.g. the
    other network's scheme). ``default`` draws nothing. A refusal comes before any draw: the
    network is left as it was.
    """
    layers = trace_layers(net, example_input)
    declared = parse_overrides(overrides) + list(scheme.overrides)
    slots = [slot for layer in layers for slot in _slots(layer, declared)]
    covered = {id(slot.tensor) for slot in slots}
    missed = [name for name, p in net.named_parameters() if id(p) not in covered]
    if missed:
        raise UserError(f"parameters not reached by the init rule: {', '.join(missed)}")
    used = {slot.pattern for slot in slots}
    unused = [p for p, _ in declared if p not in used]
    if unused:
        paths = ", ".join(layer.path for layer in layers)
        raise UserError(
            f"scheme '{scheme.name}': override pattern(s) {unused} match no layer of the "
            f"{network}; its layers are: {paths}"
        )
    draws = [_plan(scheme, network, slot) for slot in slots]  # every refusal before any draw
    records = [draw.run(generator) for draw in draws]
    for slot, record in zip(slots, records):
        if slot.param != slot.kind and record.rule != "default":  # a redrawn original
            _resync_parametrization(slot.module, slot.kind)
    return records


def _resync_parametrization(module: nn.Module, kind: str) -> None:
    """After an original is redrawn, spectral norm's u and v still approximate the singular vectors
    of the draw they were registered on, so the first forward would divide by a stale sigma.
    Reruns the power iteration torch runs at registration (15 steps; no random draws) on the new
    original, as if it had been registered on it."""
    chain = module.parametrizations[kind]
    for p in chain:
        if isinstance(p, nn.utils.parametrizations._SpectralNorm):  # torch's own class
            p._power_method(p._reshape_weight_to_matrix(chain.original.detach()), 15)
