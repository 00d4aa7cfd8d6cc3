"""Activation-aware weight initialization: the one rule that decides every weight.

A weighted layer (Linear, Conv, ConvTranspose) is initialized for the nonlinearity its output
*feeds*, found by following the data through the model's forward (``gan.trace``), looking past
normalization, dropout, reshaping and sums. A sigmoid that lives inside the loss is declared with
``SigmoidInLoss``. Anything the rule cannot decide is an error naming the layer and how to declare
it (``overrides``), never a guess. ``initialize(model, "he_xavier", seed=0)`` is the one call.

A *scheme* is data: for each activation kind, a ``Rule`` saying how to draw the weight; plus a rule
for biases, one for normalization layers, and optional per-layer overrides by module-path pattern.
A rule belongs to a *family* (He, Xavier, orthogonal…); what a family is (its rule names, options,
std formula, gain and draw) is one ``Family`` entry of the table ``FAMILIES``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from gan.errors import UserError
from gan.trace import (
    ACTIVATIONS,
    NORMS,
    WEIGHTED_LAYERS,
    Feeds,
    SigmoidInLoss,
    SoftmaxInLoss,
    TracedLayer,
    trace_feeds,
    trace_layers,
)

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "WEIGHTED_LAYERS",
    "Feeds",
    "InitRecord",
    "Rule",
    "Scheme",
    "SigmoidInLoss",
    "SoftmaxInLoss",
    "fans",
    "format_table",
    "init_table",
    "initialize",
    "trace_feeds",
    "trainable_weight",
]

DISTRIBUTIONS = ("normal", "uniform", "trunc_normal")

# Std of a standard normal truncated to [-2, 2]: sqrt(1 - 4·φ(2) / (Φ(2) - Φ(-2))) ≈ 0.8796.
# trunc_normal draws with std/this so that the *resulting* std is the one the rule states.
_PHI2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
TRUNC_STD_FACTOR = math.sqrt(1 - 4 * _PHI2 / math.erf(2 / math.sqrt(2)))


# --------------------------------------------------------------------------------------------
# What each layer feeds: gan.trace; the tensors of a layer
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


def torch_default_std(weight: torch.Tensor) -> float:
    """Std of PyTorch's own Linear/Conv init: U(±1/sqrt(fan_in)) with torch's fan_in.

    torch draws weights with kaiming_uniform(a=√5) and biases with U(±1/sqrt(fan_in)); both have
    bound 1/sqrt(fan_in), hence std 1/sqrt(3·fan_in). torch's fan_in is size(1)·receptive field.
    """
    return 1.0 / math.sqrt(3.0 * weight[0].numel())


# --------------------------------------------------------------------------------------------
# Rules: a family (an entry of FAMILIES) and its options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """How to draw one tensor: a family of ``FAMILIES``, the distribution, the options."""

    family: str  # a key of FAMILIES
    dist: str | None = None  # one of DISTRIBUTIONS for families that draw from one, else None
    # Options, each accepted only by the families whose entry lists it (Family.options):
    std: float | None = None
    mean: float = 0.0
    gain: float | str | None = None  # None: the family's own; "auto": torch's calculate_gain
    mode: str = "fan_in"  # fan_in | fan_out: which fan a std divides by

    @property
    def name(self) -> str:
        """The name the rule is written with, e.g. ``kaiming_normal``."""
        return FAMILIES[self.family].rule_name(self.dist)

    def describe(self) -> str:
        """The rule as init_report.json states it, e.g. ``normal(0, 0.02)``."""
        return FAMILIES[self.family].describe(self)

    @classmethod
    def parse(cls, spec: Any, where: str) -> Rule:
        """A rule from ``"kaiming_normal"`` or ``{rule: kaiming_normal, mode: fan_out, ...}``."""
        if isinstance(spec, str):
            spec = {"rule": spec}
        if not isinstance(spec, Mapping) or "rule" not in spec:
            raise UserError(f"{where}: expected a rule name or a mapping with 'rule', got {spec!r}")
        options = dict(spec)
        name = options.pop("rule")
        family, dist = find_rule(name, where)
        unknown = set(options) - family.options
        if unknown:
            raise UserError(
                f"{where}: rule '{name}' takes no option {sorted(unknown)}; "
                f"it takes {sorted(family.options) or 'no options'}"
            )
        rule = cls(family=family.name, dist=dist, **options)
        if rule.gain is not None and rule.gain != "auto" and not _positive(rule.gain):
            raise UserError(f"{where}: gain must be a number > 0 or 'auto', got {rule.gain!r}")
        family.check(rule, where)
        return rule


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _positive(x: Any) -> bool:
    return _is_number(x) and x > 0


@dataclass(frozen=True, eq=False)
class Target:
    """What a family's formulas read about the tensor they initialize."""

    tensor: torch.Tensor
    role: str  # weight | bias (of a Linear/Conv) | norm_weight | norm_bias
    matrix: torch.Tensor | None  # the Linear/Conv weight (a bias's too); None in a norm layer
    fan_in: float | None = None  # fans and gain: set for a Linear/Conv weight only
    fan_out: float | None = None
    gain: float | None = None  # None also where the family takes no gain


def _zero_mean(rule: Rule, target: Target) -> float:
    return 0.0


def _no_check(rule: Rule, where: str) -> None:
    pass


def _by_name(rule: Rule) -> str:
    return rule.name


@dataclass(frozen=True)
class Family:
    """Everything that makes one rule family: an entry of ``FAMILIES``.

    ``std`` and ``mean`` state what the drawn tensor must come out with (init_report.json's
    expected_std/mean); ``draw`` fills the tensor in place to match them, from the generator only.
    """

    name: str
    names: Mapping[str, str | None]  # rule name as written -> its distribution (None: draws none)
    std: Callable[[Rule, Target], float]
    draw: Callable[[Rule, Target, float, float, torch.Generator], None]  # (…, mean, std, gen)
    mean: Callable[[Rule, Target], float] = _zero_mean
    options: frozenset[str] = frozenset()  # accepted besides 'rule'; each a field of Rule
    needs_matrix: bool = False  # reads a Linear/Conv weight's fans or gain: not for bias or norm
    # None: the family takes no gain. Called with None for a layer that feeds no nonlinearity
    # (its rule declared): returns None where the gain depends on what it feeds.
    default_gain: Callable[[Feeds | None], float | None] | None = None
    check: Callable[[Rule, str], None] = _no_check  # raises UserError for a bad option value
    describe: Callable[[Rule], str] = _by_name  # the rule string in init_report.json

    def __post_init__(self) -> None:
        rule_options = {f.name for f in fields(Rule)} - {"family", "dist"}
        assert self.options <= rule_options, (
            f"family {self.name!r}: options {sorted(self.options - rule_options)} are not "
            f"fields of Rule ({sorted(rule_options)}); add them there first"
        )
        assert ("gain" in self.options) == (self.default_gain is not None), (
            f"family {self.name!r}: a family takes the option 'gain' iff it has a default_gain"
        )

    def rule_name(self, dist: str | None) -> str:
        return next(name for name, d in self.names.items() if d == dist)


# --------------------------------------------------------------------------------------------
# Rule families: the one table (FAMILIES) and the formulas its entries name
# --------------------------------------------------------------------------------------------


def _per_dist(prefix: str) -> dict[str, str]:
    return {f"{prefix}{dist}": dist for dist in DISTRIBUTIONS}


def _torch_mean(rule: Rule, target: Target) -> float:
    return 1.0 if target.role == "norm_weight" else 0.0  # torch starts a norm's scale at 1


def _torch_std(rule: Rule, target: Target) -> float:
    # Linear/Conv weight and bias: U(±1/sqrt(fan_in)); a norm layer starts at constants.
    return 0.0 if target.matrix is None else torch_default_std(target.matrix)


def _leave(rule: Rule, target: Target, mean: float, std: float, gen: torch.Generator) -> None:
    """Draws nothing: PyTorch's own init stays, bit-identical."""


def _fill(rule: Rule, target: Target, mean: float, std: float, gen: torch.Generator) -> None:
    target.tensor.fill_(mean)


def draw_dist(rule: Rule, target: Target, mean: float, std: float, gen: torch.Generator) -> None:
    """Draws from ``rule.dist`` at exactly ``mean`` and ``std``."""
    t = target.tensor
    if rule.dist == "normal":
        nn.init.normal_(t, mean, std, generator=gen)
    elif rule.dist == "uniform":  # bound sqrt(3)·std, as torch.nn.init's uniform variants
        bound = math.sqrt(3.0) * std
        nn.init.uniform_(t, mean - bound, mean + bound, generator=gen)
    else:  # truncated at ±2 of its own sigma, rescaled so the result has the stated std
        sigma = std / TRUNC_STD_FACTOR
        nn.init.trunc_normal_(t, mean, sigma, mean - 2 * sigma, mean + 2 * sigma, generator=gen)


def _draw_orthogonal(
    rule: Rule, target: Target, mean: float, std: float, gen: torch.Generator
) -> None:
    nn.init.orthogonal_(target.tensor, gain=target.gain, generator=gen)


def _orthogonal_std(rule: Rule, target: Target) -> float:
    # torch flattens to (size(0), rest); the shorter side's vectors are orthonormal.
    rows = target.tensor.shape[0]
    return target.gain / math.sqrt(max(rows, target.tensor.numel() // rows))


def _kaiming_std(rule: Rule, target: Target) -> float:
    return target.gain / math.sqrt(target.fan_in if rule.mode == "fan_in" else target.fan_out)


def _unit_gain(feeds: Feeds | None) -> float:
    return 1.0


def _he_gain(feeds: Feeds | None) -> float | None:
    # sqrt(2/(1+a²)) with the layer's actual slope; a layer feeding anything else (tanh,
    # sigmoid, softmax, gelu, silu) gets the ReLU gain (a = 0), as torch's kaiming_* defaults do.
    if feeds is None:
        return None
    slope = feeds.slope if feeds.kind in ("relu", "leaky_relu") else 0.0
    return math.sqrt(2.0 / (1.0 + slope**2))


def _check_explicit(rule: Rule, where: str) -> None:
    if not _positive(rule.std):
        raise UserError(f"{where}: rule '{rule.name}' needs std > 0, got {rule.std!r}")
    if not _is_number(rule.mean):
        raise UserError(f"{where}: mean must be a number, got {rule.mean!r}")


def _check_mode(rule: Rule, where: str) -> None:
    if rule.mode not in ("fan_in", "fan_out"):
        raise UserError(f"{where}: mode must be fan_in or fan_out, got {rule.mode!r}")


def _describe_kaiming(rule: Rule) -> str:
    return rule.name if rule.mode == "fan_in" else f"{rule.name}({rule.mode})"


# Every rule family, in the order the "valid rules" of an error message list their names.
# Adding a family: one entry here (its formulas above) and a test in tests/test_init_families.py.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("default", names={"default": None}, mean=_torch_mean, std=_torch_std, draw=_leave),
        Family("zeros", names={"zeros": None}, std=lambda rule, t: 0.0, draw=_fill),
        Family(
            "ones",
            names={"ones": None},
            mean=lambda rule, t: 1.0,
            std=lambda rule, t: 0.0,
            draw=_fill,
        ),
        Family(
            "orthogonal",
            names={"orthogonal": None},
            options=frozenset({"gain"}),
            needs_matrix=True,
            default_gain=_unit_gain,
            std=_orthogonal_std,
            draw=_draw_orthogonal,
        ),
        # The rules normal/uniform/trunc_normal: mean and std are stated in the rule itself.
        Family(
            "explicit",
            names=_per_dist(""),
            options=frozenset({"std", "mean"}),
            check=_check_explicit,
            mean=lambda rule, t: rule.mean,
            std=lambda rule, t: float(rule.std),
            draw=draw_dist,
            describe=lambda rule: f"{rule.dist}({rule.mean:g}, {rule.std:g})",
        ),
        Family(
            "xavier",
            names=_per_dist("xavier_"),
            options=frozenset({"gain"}),
            needs_matrix=True,
            default_gain=_unit_gain,
            std=lambda rule, t: t.gain * math.sqrt(2.0 / (t.fan_in + t.fan_out)),
            draw=draw_dist,
        ),
        Family(
            "kaiming",
            names=_per_dist("kaiming_"),
            options=frozenset({"gain", "mode"}),
            needs_matrix=True,
            default_gain=_he_gain,
            check=_check_mode,
            std=_kaiming_std,
            draw=draw_dist,
            describe=_describe_kaiming,
        ),
        Family(
            "lecun",
            names=_per_dist("lecun_"),
            options=frozenset({"gain"}),
            needs_matrix=True,
            default_gain=_unit_gain,
            std=lambda rule, t: t.gain / math.sqrt(t.fan_in),
            draw=draw_dist,
        ),
    )
}


def rule_names() -> tuple[str, ...]:
    """Every rule name a scheme may use, family by family as FAMILIES lists them."""
    return tuple(name for family in FAMILIES.values() for name in family.names)


RULE_NAMES = rule_names()  # as loaded; a family registered later shows in rule_names() only


def find_rule(name: Any, where: str) -> tuple[Family, str | None]:
    """The family a rule name belongs to, and the distribution it names."""
    for family in FAMILIES.values():
        if isinstance(name, str) and name in family.names:
            return family, family.names[name]
    raise UserError(f"{where}: unknown rule {name!r}; valid rules: {', '.join(rule_names())}")


# torch.nn.init.calculate_gain knows no softmax (like sigmoid: 1) nor gelu/silu (like relu: √2).
_AUTO_GAIN_AS = {"softmax": "sigmoid", "gelu": "relu", "silu": "relu"}


def _gain(rule: Rule, feeds: Feeds | None) -> float | None:
    """The gain a rule uses; None where the family takes none, or where it depends on what the
    layer feeds and the layer feeds nothing known (``_target`` refuses that)."""
    default_gain = FAMILIES[rule.family].default_gain
    if default_gain is None:
        return None
    if rule.gain == "auto":
        if feeds is None:
            return None
        kind = _AUTO_GAIN_AS.get(feeds.kind, feeds.kind)
        return nn.init.calculate_gain(kind, feeds.slope if kind == "leaky_relu" else None)
    if rule.gain is not None:
        return float(rule.gain)
    return default_gain(feeds)


# --------------------------------------------------------------------------------------------
# Schemes (data, parsed from plain mappings such as YAML)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """How one network is initialized.

    ``weights`` maps each activation kind to the rule for layers feeding it; ``bias`` is the rule
    for their biases; ``norm`` for normalization weights (their biases go to zero unless
    ``norm`` is ``default``); ``overrides`` maps module-path glob patterns to weight rules.
    """

    name: str
    weights: Mapping[str, Rule]
    bias: Rule
    norm: Rule
    overrides: tuple[tuple[str, Rule], ...] = ()

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any], where: str) -> Scheme:
        if not isinstance(spec, Mapping):
            raise UserError(f"{where}: expected a mapping with 'weights', got {spec!r}")
        unknown = set(spec) - {"weights", "bias", "norm", "overrides"}
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {sorted(unknown)}; a scheme has weights, bias, norm, "
                "overrides"
            )
        if "weights" not in spec:
            raise UserError(f"{where}: a scheme needs 'weights'")
        weights = _parse_weights(spec["weights"], f"{where}.weights")
        overrides_spec = spec.get("overrides") or {}
        if not isinstance(overrides_spec, Mapping):
            raise UserError(f"{where}.overrides: expected a mapping pattern -> rule")
        overrides = tuple(
            (str(pattern), Rule.parse(r, f"{where}.overrides[{pattern!r}]"))
            for pattern, r in overrides_spec.items()
        )
        return cls(
            name=name,
            weights=weights,
            bias=Rule.parse(spec.get("bias", "zeros"), f"{where}.bias"),
            norm=Rule.parse(spec.get("norm", "ones"), f"{where}.norm"),
            overrides=overrides,
        )


def _parse_weights(spec: Any, where: str) -> dict[str, Rule]:
    """One rule whatever the layer feeds, or a mapping activation kind -> rule."""
    if isinstance(spec, str) or (isinstance(spec, Mapping) and "rule" in spec):
        rule = Rule.parse(spec, where)
        return {kind: rule for kind in ACTIVATIONS}
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}: expected a rule or a mapping, got {spec!r}")
    bad = set(spec) - set(ACTIVATIONS)
    if bad:
        raise UserError(
            f"{where}: unknown activation(s) {sorted(bad)}; valid: {', '.join(ACTIVATIONS)}"
        )
    return {kind: Rule.parse(r, f"{where}.{kind}") for kind, r in spec.items()}


# --------------------------------------------------------------------------------------------
# Applying a scheme
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
    gain = _gain(rule, slot.feeds)
    if gain is None and family.default_gain is not None:
        raise UserError(
            f"layer '{slot.path}': rule '{rule.name}' takes its gain from what the layer feeds, "
            f"and it feeds no nonlinearity the init rule knows; give the gain, e.g. "
            f"{{'rule': '{rule.name}', 'gain': 1.0}}, or declare what it feeds, e.g. "
            f"overrides={{'{slot.path}': 'relu'}}"
        )
    fan_in, fan_out = fans(slot.module, slot.sizes)
    return Target(slot.tensor, role, slot.tensor, fan_in, fan_out, gain)


def _init_tensor(
    scheme: Scheme, network: str, slot: Slot, generator: torch.Generator | None
) -> InitRecord:
    """Draws one tensor; its record."""
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
    with torch.no_grad():
        family.draw(rule, target, record.expected_mean, record.expected_std, generator)
    record.measured_std = float(slot.tensor.detach().float().std(correction=0))
    return record


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
    return [
        Slot(layer.path, layer.module, param, kind, t, feeds, layer.sizes, rule, pattern)
        for param, kind, t in own_tensors(layer.module)
    ]


# --------------------------------------------------------------------------------------------
# Applying a scheme: one network, then the public call
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
    other network's scheme). ``default`` draws nothing.
    """
    layers = trace_layers(net, example_input)
    declared = parse_overrides(overrides) + list(scheme.overrides)
    slots = [slot for layer in layers for slot in _slots(layer, declared)]
    records = [_init_tensor(scheme, network, slot, generator) for slot in slots]
    for slot, record in zip(slots, records):
        if slot.param != slot.kind and record.rule != "default":  # a redrawn original
            _resync_parametrization(slot.module, slot.kind)
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
    return records


def initialize(
    model: nn.Module | Mapping[str, nn.Module],
    scheme: str | Scheme | Mapping[str, str | Scheme],
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    network: str | None = None,
    example_input: Any = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[InitRecord]:
    """Initializes every parameter of ``model`` for what each layer feeds; one record per tensor
    (what init_report.json holds; print them with ``init_table``).

    ``scheme``: an init option's name (``gan.config.CONF_DIR / "init" / NAME.yaml``), a
    ``Scheme``, or a mapping network name → either; ``model`` is then a mapping of networks or
    a module with submodules of those names. ``seed``: each network draws from its own stream,
    seeded by ``seed`` and its name as a run seeds it (``generator``: from that generator;
    neither: torch's global RNG). ``network`` names a single model (default ``model``) and picks
    the section of a name. ``example_input``: trace by running the model on it (else torch.fx).
    ``overrides``: layer-path pattern → what it feeds (``"relu"``, ``"leaky_relu(0.2)"``) or its
    rule (``"xavier_normal"``, ``{"rule": ..., "gain": ...}``). With several networks,
    ``example_input`` and ``overrides`` are mappings by network name.
    """
    if seed is not None and generator is not None:
        raise UserError("initialize: give a seed or a generator, not both")
    jobs, several = _networks(model, scheme, network)
    records: list[InitRecord] = []
    for name, net, net_scheme in jobs:
        stream = generator if seed is None else _seeded_stream(seed, name)
        example, declared = (
            (_by_network(example_input, name), _by_network(overrides, name))
            if several
            else (example_input, overrides)
        )
        records += initialize_network(net, net_scheme, name, stream, example, declared)
    return records


def _networks(
    model: nn.Module | Mapping[str, nn.Module],
    scheme: str | Scheme | Mapping[str, str | Scheme],
    network: str | None,
) -> tuple[list[tuple[str, nn.Module, Scheme]], bool]:
    """(network name, module, its scheme) for each network; whether there are several."""
    if isinstance(scheme, Mapping):
        nets = model if isinstance(model, Mapping) else {n: _submodule(model, n) for n in scheme}
        missing = [n for n in scheme if n not in nets]
        if missing:
            raise UserError(f"initialize: a scheme for {missing}, but no such network in the model")
        return [(n, nets[n], _resolve(scheme[n], n)) for n in scheme], True
    if isinstance(model, Mapping):
        return [(n, net, _resolve(scheme, n)) for n, net in model.items()], True
    return [(network or "model", model, _resolve(scheme, network))], False


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise UserError(
            f"initialize: the model has no submodule '{name}' (its children: {children})"
        ) from None


def _by_network(value: Any, name: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UserError(
            "initialize: with several networks, example_input and overrides are mappings by "
            f"network name, e.g. {{'{name}': ...}}"
        )
    return value.get(name)


def _resolve(spec: str | Scheme, network: str | None) -> Scheme:
    """A scheme object, or the one an init option's name gives this network."""
    if isinstance(spec, Scheme):
        return spec
    from gan import config  # config imports this module

    if not isinstance(spec, str):
        raise UserError(f"initialize: a scheme is a name or a Scheme, got {spec!r}")
    scheme_dir = config.CONF_DIR / "init"
    if network in config.NETWORKS:
        return config.resolve_scheme(spec, network, scheme_dir, spec)
    sections = [config.resolve_scheme(spec, n, scheme_dir, spec) for n in config.NETWORKS]
    if any(s != sections[0] for s in sections):
        raise UserError(
            f"init option '{spec}' differs between {' and '.join(config.NETWORKS)}; say which "
            f"to use: initialize(..., network='{config.NETWORKS[0]}')"
        )
    return sections[0]


def _seeded_stream(seed: int, network: str) -> torch.Generator:
    from gan.trainer import derive_seed  # trainer imports config, which imports this module

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise UserError(f"initialize: seed must be an integer in [0, 2**64), got {seed!r}")
    return torch.Generator().manual_seed(derive_seed(seed, f"init/{network}"))


def _resync_parametrization(module: nn.Module, kind: str) -> None:
    """After an original is redrawn, spectral norm's u and v still approximate the singular vectors
    of the draw they were registered on, so the first forward would divide by a stale sigma.
    Reruns the power iteration torch runs at registration (15 steps; no random draws) on the new
    original, as if it had been registered on it."""
    chain = module.parametrizations[kind]
    for p in chain:
        if isinstance(p, nn.utils.parametrizations._SpectralNorm):  # torch's own class
            p._power_method(p._reshape_weight_to_matrix(chain.original.detach()), 15)


def init_table(records: list[InitRecord]) -> str:
    """The assignment as a fixed-width table, one row per tensor."""
    header = (
        "network",
        "tensor",
        "type",
        "shape",
        "feeds",
        "scheme",
        "rule",
        "gain",
        "expected",
        "measured",
    )
    rows = [
        (
            r.network,
            f"{r.layer}.{r.param}",
            r.type,
            "×".join(map(str, r.shape)),
            r.activation or "-",
            r.scheme,
            r.rule,
            "-" if r.gain is None else f"{r.gain:.3f}",
            f"{r.expected_std:.4f}",
            f"{r.measured_std:.4f}",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


format_table = init_table  # the name gan.run uses
