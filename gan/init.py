"""Activation-aware weight initialization: the one rule that decides every weight.

A weighted layer (Linear, Conv, ConvTranspose) is initialized for the nonlinearity its output
*feeds*, found by walking the network's leaf modules in registration order and looking past
normalization, dropout and reshapes. Networks must therefore be written so that registration order
is data-flow order (true for ``nn.Sequential``, which every network in ``gan.nets`` is), and must
declare every nonlinearity as a module, including a sigmoid that lives inside the loss
(``SigmoidInLoss``). Anything the rule cannot map is an error naming the layer, never a skip.

A *scheme* is data: for each activation kind, a ``Rule`` saying how to draw the weight; plus a rule
for biases, one for normalization layers, and optional per-layer overrides by module-path pattern.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

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
    return [(path, m) for path, m in net.named_modules() if next(m.children(), None) is None]


def trace_feeds(net: nn.Module) -> list[tuple[str, nn.Module, Feeds | None]]:
    """Every parameterized leaf of ``net`` with the nonlinearity it feeds.

    Weighted layers must feed a known nonlinearity; normalization layers may feed nothing
    (``None``). Raises ``UserError`` naming the layer for anything else.
    """
    leaves = _leaves(net)
    traced: list[tuple[str, nn.Module, Feeds | None]] = []
    for i, (path, module) in enumerate(leaves):
        if not isinstance(module, WEIGHTED_LAYERS + _NORMS):
            if any(True for _ in module.parameters(recurse=False)):
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
# Rules and schemes (data, parsed from plain mappings such as YAML)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """How to draw one tensor."""

    family: str  # default | zeros | ones | fixed | xavier | kaiming | lecun | orthogonal
    dist: str = "normal"  # one of DISTRIBUTIONS (for families that draw)
    std: float | None = None  # family "fixed" only
    mean: float = 0.0  # family "fixed" only
    gain: float | str | None = None  # None: the family's own; "auto": torch's calculate_gain
    mode: str = "fan_in"  # kaiming only

    @property
    def name(self) -> str:
        if self.family in ("default", "zeros", "ones", "orthogonal"):
            return self.family
        if self.family == "fixed":
            return self.dist
        return f"{self.family}_{self.dist}"

    def describe(self) -> str:
        if self.family == "fixed":
            return f"{self.dist}({self.mean:g}, {self.std:g})"
        if self.family == "kaiming" and self.mode != "fan_in":
            return f"{self.name}({self.mode})"
        return self.name

    @classmethod
    def parse(cls, spec: Any, where: str) -> Rule:
        """A rule from ``"kaiming_normal"`` or ``{rule: kaiming_normal, mode: fan_out, ...}``."""
        if isinstance(spec, str):
            spec = {"rule": spec}
        if not isinstance(spec, Mapping) or "rule" not in spec:
            raise UserError(f"{where}: expected a rule name or a mapping with 'rule', got {spec!r}")
        options = dict(spec)
        name = options.pop("rule")
        family, dist = _split_rule_name(name, where)
        allowed = {
            "default": set(), "zeros": set(), "ones": set(),
            "fixed": {"std", "mean"}, "xavier": {"gain"}, "kaiming": {"gain", "mode"},
            "lecun": {"gain"}, "orthogonal": {"gain"},
        }[family]
        unknown = set(options) - allowed
        if unknown:
            raise UserError(
                f"{where}: rule '{name}' takes no option {sorted(unknown)}; "
                f"it takes {sorted(allowed) or 'no options'}"
            )
        rule = cls(family=family, dist=dist, **options)
        rule._validate(where)
        return rule

    def _validate(self, where: str) -> None:
        if self.family == "fixed":
            if not isinstance(self.std, (int, float)) or isinstance(self.std, bool) or self.std <= 0:
                raise UserError(f"{where}: rule '{self.name}' needs std > 0, got {self.std!r}")
            if not isinstance(self.mean, (int, float)) or isinstance(self.mean, bool):
                raise UserError(f"{where}: mean must be a number, got {self.mean!r}")
        if self.gain is not None and self.gain != "auto":
            if not isinstance(self.gain, (int, float)) or isinstance(self.gain, bool) or self.gain <= 0:
                raise UserError(f"{where}: gain must be a number > 0 or 'auto', got {self.gain!r}")
        if self.mode not in ("fan_in", "fan_out"):
            raise UserError(f"{where}: mode must be fan_in or fan_out, got {self.mode!r}")


_PLAIN_RULES = {
    "default": ("default", "normal"), "zeros": ("zeros", "normal"), "ones": ("ones", "normal"),
    "orthogonal": ("orthogonal", "normal"),
    "normal": ("fixed", "normal"), "uniform": ("fixed", "uniform"),
    "trunc_normal": ("fixed", "trunc_normal"),
}
RULE_NAMES = tuple(_PLAIN_RULES) + tuple(
    f"{family}_{dist}" for family in ("xavier", "kaiming", "lecun") for dist in DISTRIBUTIONS
)


def _split_rule_name(name: Any, where: str) -> tuple[str, str]:
    if name in _PLAIN_RULES:
        return _PLAIN_RULES[name]
    if name in RULE_NAMES:
        family, dist = name.split("_", 1)
        return family, dist
    raise UserError(f"{where}: unknown rule {name!r}; valid rules: {', '.join(RULE_NAMES)}")


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
        weights_spec = spec["weights"]
        if isinstance(weights_spec, str) or (
            isinstance(weights_spec, Mapping) and "rule" in weights_spec
        ):  # one rule, whatever the layer feeds
            rule = Rule.parse(weights_spec, f"{where}.weights")
            weights = {kind: rule for kind in ACTIVATIONS}
        elif isinstance(weights_spec, Mapping):
            bad = set(weights_spec) - set(ACTIVATIONS)
            if bad:
                raise UserError(
                    f"{where}.weights: unknown activation(s) {sorted(bad)}; "
                    f"valid: {', '.join(ACTIVATIONS)}"
                )
            weights = {
                kind: Rule.parse(r, f"{where}.weights.{kind}") for kind, r in weights_spec.items()
            }
        else:
            raise UserError(f"{where}.weights: expected a rule or a mapping, got {weights_spec!r}")
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


# --------------------------------------------------------------------------------------------
# Applying a scheme
# --------------------------------------------------------------------------------------------


@dataclass
class InitRecord:
    """One initialized tensor, as written to init_report.json."""

    network: str  # generator | discriminator
    layer: str  # module path
    param: str  # weight | bias
    type: str  # module class
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


def _gain(rule: Rule, feeds: Feeds) -> float:
    if rule.gain == "auto":  # torch knows no softmax gain: like sigmoid, it gets 1
        kind = "sigmoid" if feeds.kind == "softmax" else feeds.kind
        return nn.init.calculate_gain(kind, feeds.slope if kind == "leaky_relu" else None)
    if rule.gain is not None:
        return float(rule.gain)
    if rule.family == "kaiming":
        # He: sqrt(2/(1+a²)) with the layer's actual slope; a layer feeding anything else
        # (tanh, sigmoid, softmax) gets the ReLU gain (a = 0), as torch's kaiming_* defaults do.
        slope = feeds.slope if feeds.kind in ("relu", "leaky_relu") else 0.0
        return math.sqrt(2.0 / (1.0 + slope**2))
    return 1.0


def _target_std(rule: Rule, weight: torch.Tensor, fan_in: float, fan_out: float, gain: float) -> float:
    if rule.family == "xavier":
        return gain * math.sqrt(2.0 / (fan_in + fan_out))
    if rule.family == "kaiming":
        return gain / math.sqrt(fan_in if rule.mode == "fan_in" else fan_out)
    if rule.family == "lecun":
        return gain / math.sqrt(fan_in)
    if rule.family == "orthogonal":
        # torch flattens to (size(0), rest); the shorter side's vectors are orthonormal.
        rows = weight.shape[0]
        return gain / math.sqrt(max(rows, weight.numel() // rows))
    raise AssertionError(rule.family)


def _draw(rule: Rule, t: torch.Tensor, mean: float, std: float, gain: float | None,
          gen: torch.Generator) -> None:
    """Draws ``t`` in place so that it has the stated mean and std."""
    with torch.no_grad():
        if rule.family == "default":
            return  # PyTorch's own init, left bit-identical
        if rule.family in ("zeros", "ones"):
            t.fill_(mean)
        elif rule.family == "orthogonal":
            nn.init.orthogonal_(t, gain=gain, generator=gen)
        elif rule.dist == "normal":
            nn.init.normal_(t, mean, std, generator=gen)
        elif rule.dist == "uniform":  # bound sqrt(3)·std, as torch.nn.init's uniform variants
            bound = math.sqrt(3.0) * std
            nn.init.uniform_(t, mean - bound, mean + bound, generator=gen)
        else:  # truncated at ±2 of its own sigma, rescaled so the result has the stated std
            sigma = std / TRUNC_STD_FACTOR
            nn.init.trunc_normal_(t, mean, sigma, mean - 2 * sigma, mean + 2 * sigma, generator=gen)


def _weight_rule(scheme: Scheme, path: str, feeds: Feeds, used: set[str]) -> Rule:
    for pattern, rule in scheme.overrides:
        if fnmatch.fnmatchcase(path, pattern):
            used.add(pattern)
            return rule
    if feeds.kind not in scheme.weights:
        raise UserError(
            f"scheme '{scheme.name}' has no weight rule for layers feeding {feeds.kind} "
            f"(layer '{path}'); add weights.{feeds.kind}"
        )
    return scheme.weights[feeds.kind]


_ZERO_ONE = {"zeros": 0.0, "ones": 1.0}


def _plan(
    scheme: Scheme, network: str, path: str, module: nn.Module, param: str, t: torch.Tensor,
    feeds: Feeds | None, used: set[str],
) -> tuple[InitRecord, Rule]:
    """Which rule a tensor gets and the mean/std it must come out with (measured_std unset)."""
    fan_in = fan_out = gain = None
    if isinstance(module, _NORMS):
        rule = scheme.norm
        if param == "bias" and rule.family != "default":
            rule = Rule("zeros")  # normalization shift starts at 0 under every non-default rule
        mean = {"weight": 1.0, "bias": 0.0}[param] if rule.family == "default" else rule.mean
        std = rule.std if rule.family == "fixed" else 0.0
        if rule.family in _ZERO_ONE:
            mean = _ZERO_ONE[rule.family]
        elif rule.family != "fixed" and rule.family != "default":
            raise UserError(
                f"scheme '{scheme.name}': norm rule '{rule.name}' needs a weight matrix; "
                "use ones, default or a fixed normal such as {rule: normal, mean: 1, std: 0.02}"
            )
    elif param == "weight":
        rule = _weight_rule(scheme, path, feeds, used)
        fan_in, fan_out = fans(module)
        mean, std = (rule.mean if rule.family == "fixed" else 0.0), 0.0
        if rule.family == "default":
            std = torch_default_std(t)
        elif rule.family in _ZERO_ONE:
            mean = _ZERO_ONE[rule.family]
        elif rule.family == "fixed":
            std = float(rule.std)
        else:
            gain = _gain(rule, feeds)
            std = _target_std(rule, t, fan_in, fan_out, gain)
    else:  # bias of a weighted layer
        rule = scheme.bias
        if rule.family in ("xavier", "kaiming", "lecun", "orthogonal"):
            raise UserError(
                f"scheme '{scheme.name}': bias rule '{rule.name}' needs a weight matrix; "
                "use zeros, default or a fixed normal/uniform"
            )
        mean = _ZERO_ONE.get(rule.family, rule.mean if rule.family == "fixed" else 0.0)
        std = {"default": torch_default_std(module.weight), "fixed": rule.std}.get(rule.family, 0.0)
    return InitRecord(
        network=network, layer=path, param=param, type=type(module).__name__, shape=list(t.shape),
        activation=str(feeds) if feeds else None, slope=feeds.slope if feeds else None,
        scheme=scheme.name, rule=rule.describe(), gain=gain, fan_in=fan_in, fan_out=fan_out,
        expected_mean=float(mean), expected_std=float(std),
    ), rule


def initialize(
    net: nn.Module, scheme: Scheme, *, network: str, generator: torch.Generator
) -> list[InitRecord]:
    """Initializes every parameter of ``net`` by ``scheme``; returns one record per tensor.

    Draws from ``generator`` only, in layer order, so a network's weights do not depend on what
    was drawn before (e.g. the other network's scheme). ``default`` draws nothing.
    """
    records: list[InitRecord] = []
    covered: set[int] = set()
    used_patterns: set[str] = set()
    traced = trace_feeds(net)
    for path, module, feeds in traced:
        for param, t in module.named_parameters(recurse=False):
            covered.add(id(t))
            record, rule = _plan(scheme, network, path, module, param, t, feeds, used_patterns)
            _draw(rule, t, record.expected_mean, record.expected_std, record.gain, generator)
            record.measured_std = float(t.detach().float().std(correction=0))
            records.append(record)
    missed = [name for name, p in net.named_parameters() if id(p) not in covered]
    if missed:
        raise UserError(f"parameters not reached by the init rule: {', '.join(missed)}")
    unused = [p for p, _ in scheme.overrides if p not in used_patterns]
    if unused:
        layers = ", ".join(path for path, *_ in traced)
        raise UserError(
            f"scheme '{scheme.name}': override pattern(s) {unused} match no layer of the "
            f"{network}; its layers are: {layers}"
        )
    return records


def format_table(records: list[InitRecord]) -> str:
    """The assignment as a fixed-width table, one row per tensor."""
    header = ("network", "tensor", "type", "shape", "feeds", "scheme", "rule", "gain", "expected", "measured")
    rows = [
        (
            r.network, f"{r.layer}.{r.param}", r.type, "×".join(map(str, r.shape)),
            r.activation or "-", r.scheme, r.rule, "-" if r.gain is None else f"{r.gain:.3f}",
            f"{r.expected_std:.4f}", f"{r.measured_std:.4f}",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
