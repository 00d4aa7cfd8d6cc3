"""The table of rule families (gan.init.FAMILIES): every entry is reachable by name and draws the
std it claims, and adding a family takes one entry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import CONF_DIR
from gan.errors import UserError
from gan.init import (
    FAMILIES,
    RULE_NAMES,
    Family,
    Rule,
    Scheme,
    SigmoidInLoss,
    fans,
    rule_names,
)
from gan.init_call import initialize
from gan.init_options import resolve_scheme, scheme_names

N_IN, N_OUT = 400, 300  # 120k weights: a sample std within 1.0 % at 5 standard errors
# A value for every option a family may take; gain 1.7 and mode fan_out are not the defaults.
OPTION_VALUES = {"std": 0.3, "mean": 0.5, "gain": 1.7, "mode": "fan_out"}


def std_tolerance(n: int) -> float:
    """Relative tolerance for a sample std of n draws: 5 standard errors (1/sqrt(2n))."""
    return 5 / math.sqrt(2 * n)


def spec(name: str, family: Family) -> dict:
    return {"rule": name, **{k: v for k, v in OPTION_VALUES.items() if k in family.options}}


def check_drawn(t: torch.Tensor, mean: float, std: float) -> None:
    """``t`` has the stated mean and std: exactly for constants, else within 5 standard errors."""
    t, n = t.detach().double(), t.numel()
    if std == 0:
        assert torch.all(t == mean)
        return
    assert t.std(correction=0).item() == pytest.approx(std, rel=std_tolerance(n))
    assert abs(t.mean().item() - mean) < 5 * std / math.sqrt(n)


def all_rules() -> list[tuple[str, str]]:
    return [(family.name, name) for family in FAMILIES.values() for name in family.names]


def test_the_table_lists_every_rule_name_once_in_the_public_order():
    names = [name for _, name in all_rules()]
    assert len(names) == len(set(names)) and tuple(names) == RULE_NAMES == rule_names()
    # The order of "valid rules" in the unknown-rule error message.
    assert RULE_NAMES[:7] == (
        "default",
        "zeros",
        "ones",
        "orthogonal",
        "normal",
        "uniform",
        "trunc_normal",
    )


@pytest.mark.parametrize(("family_name", "name"), all_rules())
def test_every_family_is_reachable_by_name_and_draws_the_std_it_claims(family_name, name):
    family = FAMILIES[family_name]
    rule = Rule.parse(spec(name, family), "test")
    assert (rule.family, rule.name) == (family_name, name)
    torch.manual_seed(0)  # "default" keeps torch's own init, drawn from the global RNG here
    net = nn.Sequential(nn.Linear(N_IN, N_OUT), nn.ReLU())
    scheme = Scheme.parse("s", {"weights": spec(name, family)}, "test")
    weight, _ = initialize(
        net, scheme, network="generator", generator=torch.Generator().manual_seed(1)
    )
    assert weight.param == "weight" and weight.rule == rule.describe()
    assert weight.gain == (None if family.default_gain is None else OPTION_VALUES["gain"])
    check_drawn(net[0].weight, weight.expected_mean, weight.expected_std)
    assert weight.measured_std == pytest.approx(net[0].weight.std(correction=0).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("family_name", "name"), [(f, n) for f, n in all_rules() if not FAMILIES[f].needs_matrix]
)
def test_families_without_a_matrix_also_draw_a_norm_layer_as_they_claim(family_name, name):
    bn = nn.BatchNorm1d(20_000)  # a sample std within 2.5 % at 5 standard errors
    net = nn.Sequential(nn.Linear(3, 20_000), bn, nn.ReLU())
    scheme = Scheme.parse("s", {"weights": "zeros", "norm": spec(name, FAMILIES[family_name])}, "t")
    records = initialize(
        net, scheme, network="generator", generator=torch.Generator().manual_seed(2)
    )
    scale = next(r for r in records if (r.layer, r.param) == ("1", "weight"))
    check_drawn(bn.weight, scale.expected_mean, scale.expected_std)


def test_stated_stds_are_the_textbook_formulas():
    fan_in, fan_out = fans(nn.Linear(N_IN, N_OUT))
    expected = {  # rule -> std, for a layer feeding a ReLU, options as OPTION_VALUES
        "default": 1 / math.sqrt(3 * fan_in),
        "zeros": 0.0,
        "ones": 0.0,
        "normal": 0.3,
        "orthogonal": 1.7 / math.sqrt(max(N_IN, N_OUT)),
        "xavier_normal": 1.7 * math.sqrt(2 / (fan_in + fan_out)),
        "kaiming_normal": 1.7 / math.sqrt(fan_out),
        "lecun_normal": 1.7 / math.sqrt(fan_in),
    }
    assert {family for family, name in all_rules() if name in expected} == set(FAMILIES)
    for family, name in all_rules():
        if name in expected:
            net = nn.Sequential(nn.Linear(N_IN, N_OUT), nn.ReLU())
            scheme = Scheme.parse("s", {"weights": spec(name, FAMILIES[family])}, "test")
            (record, _) = initialize(net, scheme, network="g", generator=torch.Generator())
            assert record.expected_std == pytest.approx(expected[name], rel=1e-12), name


def half_lecun() -> Family:
    """A toy family as a new entry would be written: std = gain/sqrt(fan_in), gain 0.5."""

    def draw(rule, target, mean, std, gen):
        nn.init.normal_(target.tensor, mean, std, generator=gen)

    return Family(
        "half_lecun",
        names={"half_lecun_normal": "normal"},
        options=frozenset({"gain"}),
        needs_matrix=True,
        default_gain=lambda feeds: 0.5,
        draw=draw,
        std=lambda rule, t: t.gain / math.sqrt(t.fan_in),
    )


def test_adding_a_family_takes_one_entry_in_the_table(monkeypatch):
    monkeypatch.setitem(FAMILIES, "half_lecun", half_lecun())
    assert "half_lecun_normal" in rule_names()
    scheme = Scheme.parse("toy", {"weights": {"sigmoid": "half_lecun_normal"}}, "test")
    assert scheme.weights["sigmoid"] == Rule("half_lecun", "normal")
    net = nn.Sequential(nn.Linear(N_IN, N_OUT), SigmoidInLoss())
    weight, bias = initialize(
        net, scheme, network="discriminator", generator=torch.Generator().manual_seed(0)
    )
    assert (weight.rule, weight.gain, weight.fan_in) == ("half_lecun_normal", 0.5, N_IN)
    assert weight.expected_std == pytest.approx(0.5 / math.sqrt(N_IN), rel=1e-12)
    check_drawn(net[0].weight, 0.0, weight.expected_std)
    assert (bias.rule, bias.expected_std) == ("zeros", 0.0)
    # What the entry declares is enforced: its options, its gain, its need of a weight matrix.
    assert Rule.parse({"rule": "half_lecun_normal", "gain": 2}, "t").gain == 2
    with pytest.raises(UserError, match=r"takes no option \['std'\]; it takes \['gain'\]"):
        Rule.parse({"rule": "half_lecun_normal", "std": 1}, "t")
    bad_bias = Scheme.parse("toy", {"weights": "zeros", "bias": "half_lecun_normal"}, "test")
    with pytest.raises(UserError, match="bias rule 'half_lecun_normal' needs a weight matrix"):
        initialize(net, bad_bias, network="discriminator", generator=torch.Generator())


def test_an_inconsistent_entry_fails_at_definition():
    with pytest.raises(ValueError, match="'gain' iff it has a default_gain"):
        Family(
            "g",
            {"g": None},
            options=frozenset({"gain"}),
            std=lambda r, t: 0.0,
            draw=lambda *a: None,
        )
    with pytest.raises(ValueError, match=r"options \['sparsity'\] are not fields of Rule"):
        Family(
            "s",
            {"s": None},
            options=frozenset({"sparsity"}),
            std=lambda r, t: 0.0,
            draw=lambda *a: None,
        )


def test_unknown_rule_of_any_type_is_a_user_error():
    for name in ("kaiming", ["x"], 3, "fixed", "explicit"):
        with pytest.raises(UserError, match="unknown rule .*; valid rules: default, zeros"):
            Rule.parse({"rule": name}, "t")


@pytest.mark.parametrize("option", scheme_names(CONF_DIR / "init"))
def test_every_init_file_parses_for_both_networks(option):
    for network in ("generator", "discriminator"):
        scheme = resolve_scheme(option, network, CONF_DIR / "init", option)
        assert all(
            r.family in FAMILIES for r in (*scheme.weights.values(), scheme.bias, scheme.norm)
        )
