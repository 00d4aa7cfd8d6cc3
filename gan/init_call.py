"""The init rule's one call, ``gan.initialize(model, scheme, seed=0)``, and its table.

A scheme by its init option's name (the YAML under ``conf/init``), one seeded stream per network,
several networks at once. The rule itself is ``gan.init``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gan import config
from gan.errors import UserError
from gan.init import InitRecord, Scheme, initialize_network
from gan.init_options import NETWORKS, resolve_scheme
from gan.runtime import derive_seed


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
    names = [name for name, _, _ in jobs]
    if several:
        example_input = _by_network(example_input, names, "example_input")
        overrides = _by_network(overrides, names, "overrides")
    records: list[InitRecord] = []
    for name, net, net_scheme in jobs:
        stream = generator if seed is None else _seeded_stream(seed, name)
        example, declared = (
            (example_input.get(name), overrides.get(name))
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
        if set(scheme) != set(nets):
            raise UserError(
                f"initialize: schemes for {sorted(scheme)} but networks {sorted(nets)}; give "
                "one scheme per network"
            )
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


def _by_network(value: Any, names: list[str], what: str) -> Mapping[str, Any]:
    """``value`` as a mapping network name → its value; refuses a key that names no network
    (it would be ignored)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or set(value) - set(names):
        got = f"keys {list(value)}" if isinstance(value, Mapping) else type(value).__name__
        raise UserError(
            f"initialize: with several networks, {what} is a mapping by network name "
            f"({', '.join(names)}), e.g. {{'{names[0]}': ...}}; got {got}"
        )
    return value


def _resolve(spec: str | Scheme, network: str | None) -> Scheme:
    """A scheme object, or the one an init option's name gives this network."""
    if isinstance(spec, Scheme):
        return spec
    if not isinstance(spec, str):
        raise UserError(f"initialize: a scheme is a name or a Scheme, got {spec!r}")
    scheme_dir = config.CONF_DIR / "init"
    if network in NETWORKS:
        return resolve_scheme(spec, network, scheme_dir, spec)
    sections = [resolve_scheme(spec, n, scheme_dir, spec) for n in NETWORKS]
    if any(s != sections[0] for s in sections):
        raise UserError(
            f"init option '{spec}' differs between {' and '.join(NETWORKS)}; say which "
            f"to use: initialize(..., network='{NETWORKS[0]}')"
        )
    return sections[0]


def _seeded_stream(seed: int, network: str) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise UserError(f"initialize: seed must be an integer in [0, 2**64), got {seed!r}")
    return torch.Generator().manual_seed(derive_seed(seed, f"init/{network}"))


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
