"""Init schemes by name: the ``init=`` options (``conf/init/NAME.yaml``), read and resolved into
each network's ``Scheme``; a section may name another option, and names may chain."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan.errors import UserError
from gan.init import DISTRIBUTIONS, Scheme

NETWORKS = ("generator", "discriminator")  # the sections of an init option, one per network


def scheme_names(scheme_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(scheme_dir).glob("*.yaml"))


def load_init_file(name: str, scheme_dir: Path) -> dict[str, Any]:
    """The mapping in ``<scheme_dir>/<name>.yaml`` (one ``init=`` option), its own parameters
    (such as ``dist``, used as ``${init.dist}``) resolved."""
    path = Path(scheme_dir) / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        raise UserError(
            f"unknown init scheme {name!r}; valid: {', '.join(scheme_names(scheme_dir))} "
            f"(files in {scheme_dir})"
        )
    try:
        scheme = OmegaConf.create({"init": OmegaConf.load(path)})
        return OmegaConf.to_container(scheme, resolve=True)["init"]
    except OmegaConfBaseException as err:
        raise UserError(f"cannot read init option {name!r} ({path}): {err}") from None


def check_parameters(init_cfg: Mapping[str, Any], choice: str, scheme_dir: Path) -> None:
    """Refuses a scalar under init that the chosen option does not declare (``+init.std=0.1`` on
    a scheme without ``std``): it would change nothing, yet the run would look like another arm.
    A ``dist`` must name a distribution (else it surfaces as an unknown rule it is part of)."""
    declared = {k for k in load_init_file(choice, scheme_dir) if k not in NETWORKS}
    unknown = sorted(k for k in init_cfg if k not in NETWORKS and k not in declared)
    if unknown:
        takes = ", ".join(sorted(declared)) or "none"
        raise UserError(
            f"init={choice} has no parameter {', '.join(unknown)} (its parameters: {takes}); "
            "choose a scheme that has it, or override a rule directly, e.g. "
            "init.generator.weights.tanh.gain=1.5"
        )
    # Refused by the names given, not by the rules they reach (init.generator.weights…).
    if "dist" in init_cfg and init_cfg["dist"] not in DISTRIBUTIONS:
        raise UserError(
            f"init.dist must be one of {', '.join(DISTRIBUTIONS)}, got {init_cfg['dist']!r}"
        )
    if "std" in init_cfg and not _positive(init_cfg["std"]):
        raise UserError(f"init.std must be a number > 0, got {init_cfg['std']!r}")
    if "gain" in init_cfg and not (init_cfg["gain"] == "auto" or _positive(init_cfg["gain"])):
        raise UserError(f"init.gain must be a number > 0 or 'auto', got {init_cfg['gain']!r}")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def resolve_scheme(spec: Any, network: str, scheme_dir: Path, name: str) -> Scheme:
    """A network's scheme from its config entry: inline rules, or the name of another init option.

    ``init.discriminator=default`` names the option ``default``; its ``discriminator`` section is
    used. Names may chain; a cycle is an error.
    """
    seen = []
    while isinstance(spec, str):
        if spec in seen:
            raise UserError(f"init.{network}: names form a cycle: {' -> '.join(seen + [spec])}")
        seen.append(spec)
        name = spec
        spec = load_init_file(spec, scheme_dir).get(network)
        if spec is None:
            raise UserError(f"init option {name!r} has no '{network}' section")
    return Scheme.parse(name, spec, f"init.{network}")
