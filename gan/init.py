"""Activation-aware weight initialization: the one rule that decides every weight.

A weighted layer (Linear, Conv, ConvTranspose) is initialized for the nonlinearity its output
*feeds*, found by walking the network's leaf modules in registration order and looking past
normalization, dropout and reshapes. Networks must therefore be written so that registration order
is data-flow order (true for ``nn.Sequential``, which every network in ``gan.nets`` is), and must
declare every nonlinearity as a module, including a sigmoid that lives inside the loss
(``SigmoidInLoss``). Anything the rule cannot map is an error naming the layer, never a skip.

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

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softmax")
DISTRIBUTIONS = ("normal", "uniform", "trunc_normal")

# Std of a standard normal truncated to [-2, 2]: sqrt(1 - 4·φ(2) / (Φ(2) - Φ(-2))) ≈ 0.8796.
# trunc_normal draws with std/this so that the *resulting* std is the one the rule states.
_PHI2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
TRUNC_STD_FACTOR = math.sqrt(1 - 4 * _PHI2 / math.erf(2 / math.sqrt(2)))


class SigmoidInLoss(nn.Identity):
    """Declares that a sigmoid is applied to this point inside the loss (BCE-with-logits).

    Identity in forward. It exists so the init rule can see what the discriminator's last layer
    feeds, although the sigmoid itself is fused into the loss for numerical stability.
    """


class SoftmaxInLoss(nn.Identity):
    """Declares that a softmax is applied to this point inside the loss (cross-entropy)."""


WEIGHTED_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# Modules a layer's output passes through unchanged in kind: the init rule looks past them.
_TRANSPARENT = _NORMS + (nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten, nn.Identity)


# --------------------------------------------------------------------------------------------
# What each layer feeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feeds:
    """The nonlinearity a layer's output goes into."""

    kind: str  # one of ACTIVATIONS
    slope: float | None  # negative slope of a (leaky) ReLU; None for tanh/sigmoid
    via: str  # module path of the activation

    def __str__(self) -> str:
        return f"leaky_relu({self.slope:g})" if self.kind == "leaky_relu" else self.kind


def _activation(module: nn.Module) -> tuple[str, float | None] | None:
    # Order matters: SigmoidInLoss is an nn.Identity, which is otherwise transparent.
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return "relu", 0.0
    if isinstance(module, nn.Tanh):
        return "tanh", None
    if isinstance(module, (nn.Sigmoid, SigmoidInLoss)):
        return "sigmoid", None
    if isinstance(module, (nn.Softmax, SoftmaxInLoss)):
        return "softmax", None
    return None


def _leaves(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, in registration order. A parametrized layer (spectral norm) counts
    as a leaf: its only children are its parametrizations, which are not layers of the network."""
    inside = {
        id(sub)
        for m in net.modules()
        if parametrize.is_parametrized(m)
        for sub in m.parametrizations.modules()
    }
    return [
        (path, m)
        for path, m in net.named_modules()
        if id(m) not in inside and all(id(c) in inside for c in m.children())
    ]


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


def trace_feeds(net: nn.Module) -> list[tuple[str, nn.Module, Feeds | None]]:
    """Every parameterized leaf of ``net`` with the nonlinearity it feeds.

    Weighted layers must feed a known nonlinearity; normalization layers may feed nothing
    (``None``). Raises ``UserError`` naming the layer for anything else.
    """
    leaves = _leaves(net)
    traced: list[tuple[str, nn.Module, Feeds | None]] = []
    for i, (path, module) in enumerate(leaves):
        if not isinstance(module, WEIGHTED_LAYERS + _NORMS):
            if own_tensors(module):
                raise UserError(
                    f"layer '{path}' ({type(module).__name__}) has parameters the init rule does "
                    "not cover; it knows Linear, Conv*, ConvTranspose* and normalization layers"
                )
            continue
        feeds = None
        for later_path, later in leaves[i + 1 :]:
            found = _activation(later)
            if found:
                feeds = Feeds(*found, via=later_path)
                break
            if isinstance(later, _TRANSPARENT):
                continue
            if isinstance(module, _NORMS):
                break
            raise UserError(
                f"layer '{path}' ({type(module).__name__}) feeds '{later_path}' "
                f"({type(later).__name__}), which is not a nonlinearity the init rule knows "
                f"({', '.join(ACTIVATIONS)}) nor a module it can look past (normalization, "
                "dropout, reshape); declare activations as modules such as nn.LeakyReLU"
            )
        if feeds is None and not isinstance(module, _NORMS):
            raise UserError(
                f"layer '{path}' ({type(module).__name__}) feeds no nonlinearity: nothing follows "
                "it. If the loss applies a sigmoid (BCE-with-logits), end the network with "
                "gan.init.SigmoidInLoss() to declare it"
            )
        traced.append((path, module, feeds))
    return traced


# --------------------------------------------------------------------------------------------
# Fans
# --------------------------------------------------------------------------------------------


def fans(layer: nn.Module) -> tuple[float, float]:
    """(fan_in, fan_out): terms each output sums, outputs each input reaches (interior average).

    Linear and stride-1 Conv match torch.nn.init. Strides are counted where torch ignores them:
    a Conv with stride s reaches out·k/s outputs per input, and a ConvTranspose (weight
    (in, out/g, *k), from which torch takes fan_in = out·k, the *output* side) sums in·k/s terms
    into each output. Exact away from borders when the stride divides the kernel (k4 s2 here);
    for a 1×1 input, a ConvTranspose's true fan_in is in_channels, so project with a Linear.
    """
    if isinstance(layer, nn.Linear):
        return float(layer.in_features), float(layer.out_features)
    if isinstance(layer, nn.modules.conv._ConvNd):
        taps = math.prod(layer.kernel_size)
        stride = math.prod(layer.stride)
        fan_in_ch = layer.in_channels / layer.groups
        fan_out_ch = layer.out_channels / layer.groups
        if layer.transposed:
            return fan_in_ch * taps / stride, fan_out_ch * taps
        return fan_in_ch * taps, fan_out_ch * taps / stride
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
    default_gain: Callable[[Feeds], float] | None = None  # None: the family takes no gain
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


def _unit_gain(feeds: Feeds) -> float:
    return 1.0


def _he_gain(feeds: Feeds) -> float:
    # sqrt(2/(1+a²)) with the layer's actual slope; a layer feeding anything else (tanh,
    # sigmoid, softmax) gets the ReLU gain (a = 0), as torch's kaiming_* defaults do.
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


def _gain(rule: Rule, feeds: Feeds) -> float | None:
    default_gain = FAMILIES[rule.family].default_gain
    if default_gain is None:
        return None
    if rule.gain == "auto":  # torch knows no softmax gain: like sigmoid, it gets 1
        kind = "sigmoid" if feeds.kind == "softmax" else feeds.kind
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

    @property
    def role(self) -> str:
        """weight | bias (of a Linear/Conv) | norm_weight | norm_bias."""
        return f"norm_{self.kind}" if isinstance(self.module, _NORMS) else self.kind


_ZEROS = Rule("zeros")
# What a tensor without a weight matrix may use instead of a family that needs one.
_INSTEAD = {
    "bias": "use zeros, default or a fixed normal/uniform",
    "norm": "use ones, default or a fixed normal such as {rule: normal, mean: 1, std: 0.02}",
}


def _choose_rule(scheme: Scheme, slot: Slot) -> tuple[Rule, str | None]:
    """The rule for one tensor, and the override pattern that chose it (None: none did)."""
    if slot.role == "norm_bias" and scheme.norm.family != "default":
        return _ZEROS, None  # normalization shift starts at 0 under every non-default rule
    if slot.role.startswith("norm_"):
        return scheme.norm, None
    if slot.role == "bias":
        return scheme.bias, None
    for pattern, rule in scheme.overrides:
        if fnmatch.fnmatchcase(slot.path, pattern):
            return rule, pattern
    if slot.feeds.kind not in scheme.weights:
        raise UserError(
            f"scheme '{scheme.name}' has no weight rule for layers feeding {slot.feeds.kind} "
            f"(layer '{slot.path}'); add weights.{slot.feeds.kind}"
        )
    return scheme.weights[slot.feeds.kind], None


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
    fan_in, fan_out = fans(slot.module)
    return Target(slot.tensor, role, slot.tensor, fan_in, fan_out, _gain(rule, slot.feeds))


def _init_tensor(
    scheme: Scheme, network: str, slot: Slot, generator: torch.Generator
) -> tuple[InitRecord, str | None]:
    """Draws one tensor; its record, and the override pattern that chose its rule."""
    rule, pattern = _choose_rule(scheme, slot)
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
    return record, pattern


def initialize(
    net: nn.Module, scheme: Scheme, *, network: str, generator: torch.Generator
) -> list[InitRecord]:
    """Initializes every parameter of ``net`` by ``scheme``; returns one record per tensor.

    Draws from ``generator`` only, in layer order, so a network's weights do not depend on what
    was drawn before (e.g. the other network's scheme). ``default`` draws nothing.
    """
    traced = trace_feeds(net)
    slots = [
        Slot(path, module, param, kind, t, feeds)
        for path, module, feeds in traced
        for param, kind, t in own_tensors(module)
    ]
    done = [_init_tensor(scheme, network, slot, generator) for slot in slots]
    for slot, (record, _) in zip(slots, done):
        if slot.param != slot.kind and record.rule != "default":  # a redrawn original
            _resync_parametrization(slot.module, slot.kind)
    covered = {id(slot.tensor) for slot in slots}
    missed = [name for name, p in net.named_parameters() if id(p) not in covered]
    if missed:
        raise UserError(f"parameters not reached by the init rule: {', '.join(missed)}")
    used = {pattern for _, pattern in done}
    unused = [p for p, _ in scheme.overrides if p not in used]
    if unused:
        layers = ", ".join(path for path, *_ in traced)
        raise UserError(
            f"scheme '{scheme.name}': override pattern(s) {unused} match no layer of the "
            f"{network}; its layers are: {layers}"
        )
    return [record for record, _ in done]


def _resync_parametrization(module: nn.Module, kind: str) -> None:
    """After an original is redrawn, spectral norm's u and v still approximate the singular vectors
    of the draw they were registered on, so the first forward would divide by a stale sigma.
    Reruns the power iteration torch runs at registration (15 steps; no random draws) on the new
    original, as if it had been registered on it."""
    chain = module.parametrizations[kind]
    for p in chain:
        if isinstance(p, nn.utils.parametrizations._SpectralNorm):  # torch's own class
            p._power_method(p._reshape_weight_to_matrix(chain.original.detach()), 15)


def format_table(records: list[InitRecord]) -> str:
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
