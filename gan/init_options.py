"""Init schemes by name: the ``init=`` options (``conf/init/NAME.yaml``), read and resolved into
each network's ``Scheme``; a section may name another option, and names may chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan.errors import UserError
from gan.init import Scheme


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
