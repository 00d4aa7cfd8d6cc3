"""A hint after Hydra refused a command line: the override keys that name nothing in the config,
each with the valid key closest to it. Hydra's own message for such a typo suggests adding the
key with ``+``, which would add a key that nothing reads (and that ``train.py`` refuses)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from typing import Any

from gan.config import CONF_DIR
from gan.init_options import NETWORKS
from gan.sweep_plan import values_of


def unknown_key_hint(argv: Sequence[str]) -> str | None:
    """One line per override of ``argv`` whose key is not in the composed config; None when
    every key is there (Hydra refused something else) or the config cannot be composed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in argv if "=" in a and not a.startswith("-")]
        )
        choices = [
            f"{o.key_or_group}={values_of(o)[0]}"
            for o in parsed
            if _is_choice(o) and not o.key_or_group.startswith("hydra")
        ]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            composed = OmegaConf.to_container(compose("config", overrides=choices))
    except Exception:  # noqa: BLE001 - Hydra's own message stands alone
        return None
    keys = sorted(_paths(composed))
    lines = []
    for override in parsed:
        key = override.key_or_group
        added = override.is_add() or override.is_force_add() or override.is_delete()
        if added or _is_choice(override) or key.startswith("hydra") or key in keys:
            continue
        lines.append(f"hint: {key} is not a key of this configuration; {_nearest(key, keys)}")
    return "\n".join(lines) or None


def _nearest(key: str, keys: list[str]) -> str:
    """What the key was likely meant to be; an init scheme's parameters by name."""
    section, _, name = key.partition(".")
    if section == "init" and "." not in name:
        inits = [k.partition(".")[2] for k in keys if k.startswith("init.")]
        params = [p for p in inits if "." not in p and p not in NETWORKS]
        return f"this init scheme's parameters: {', '.join(params) or 'none'}"
    close = difflib.get_close_matches(key, keys, n=1)
    return f"did you mean {close[0]}?" if close else "see conf/ for the keys there are"


def _is_choice(override: Any) -> bool:
    """A config group's option (``init=he_xavier``, ``hydra/launcher=population``)."""
    return "/" in override.key_or_group or (CONF_DIR / override.key_or_group).is_dir()


def _paths(tree: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of a nested mapping, inner ones included (``trainer``, ``trainer.lr``)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            path = f"{prefix}{name}"
            yield path
            yield from _paths(value, f"{path}.")
