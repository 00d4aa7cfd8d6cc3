"""A plain mapping (Hydra's resolved config, a YAML file) as a typed dataclass: unknown and
missing keys refused, every value's type checked, with messages naming the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gan.errors import UserError

# Scalar field type → (accepted YAML values, how the error names it); bools are handled apart,
# since isinstance(True, int) holds.
_SCALARS = {
    int: (int, "an integer"),
    float: ((int, float), "a number"),
    str: (str, "a string"),
    Path: ((str, Path), "a path"),
}


def coerce(value: Any, kind: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return coerce(value, kind, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        if args[-1] is Ellipsis:
            item_kinds = (args[0],) * len(value)
        elif len(value) == len(args):
            item_kinds = args
        else:
            raise UserError(f"{where} must have {len(args)} items, got {list(value)}")
        return tuple(
            coerce(v, k, f"{where}[{i}]") for i, (v, k) in enumerate(zip(value, item_kinds))
        )
    if kind is str and isinstance(value, bool):  # trainer.cuda_graph=false, or off in a YAML file
        raise UserError(
            f"{where} must be a word, got the boolean {value!r} (Hydra reads true and false as "
            "booleans, and a YAML file also on, off, yes and no: quote the word there)"
        )
    if kind is bool or isinstance(value, bool):
        if kind is not bool or not isinstance(value, bool):
            raise UserError(f"{where} must be {kind.__name__}, got {value!r}")
        return value
    accepted, noun = _SCALARS[kind]
    if not isinstance(value, accepted):
        raise UserError(f"{where} must be {noun}, got {value!r}")
    return kind(value)


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Constructs dataclass ``cls`` from ``data``, checking unknown keys and every type."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown key(s) in {where}: {sorted(unknown)}; valid: {sorted(names)}")
    missing = names - set(data)
    if missing:  # the YAML holds every default: a key it lacks was deleted or misspelt there
        raise UserError(f"missing key(s) in {where}: {sorted(missing)}; set them in conf/")
    return cls(**{k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})
