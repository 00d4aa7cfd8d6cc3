"""Init schemes as data: rules, the table of rule families, schemes (``gan.init`` applies them).

A *scheme* is data: for each activation kind, a ``Rule`` saying how to draw the weight; plus a rule
for biases, one for normalization layers, and optional per-layer overrides by module-path pattern.
A rule belongs to a *family* (He, Xavier, orthogonal…); what a family is (its rule names, options,
std formula, gain and draw) is one ``Family`` entry of the table ``FAMILIES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from gan.errors import UserError
from gan.trace import ACTIVATIONS, Feeds

DISTRIBUTIONS = ("normal", "uniform", "trunc_normal")

# Std of a standard normal truncated to [-2, 2]: sqrt(1 - 4·φ(2) / (Φ(2) - Φ(-2))) ≈ 0.8796.
# trunc_normal draws with std/this so that the *resulting* std is the one the rule states.
_PHI2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
TRUNC_STD_FACTOR = math.sqrt(1 - 4 * _PHI2 / math.erf(2 / math.sqrt(2)))


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
        # Raised, not asserted: a new entry must be refused under python -O too.
        rule_options = {f.name for f in fields(Rule)} - {"family", "dist"}
        if not self.options <= rule_options:
            raise ValueError(
                f"family {self.name!r}: options {sorted(self.options - rule_options)} are not "
                f"fields of Rule ({sorted(rule_options)}); add them there first"
            )
        if ("gain" in self.options) != (self.default_gain is not None):
            raise ValueError(
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


def rule_gain(rule: Rule, feeds: Feeds | None) -> float | None:
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

    ``weights`` maps each activation kind to the rule for layers feeding it (a layer feeding gelu
    or silu takes the relu rule when the scheme states none for them); ``bias`` is the rule
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
