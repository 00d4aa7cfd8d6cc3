"""Runs grouped: by setting (never averaged across settings), then by init arm."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

from gan.report.runs import Run


def by_setting(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by setting, each under a label: its ``setting=`` name when every group has
    one of its own, else the keys in which it differs from the others ("k=v, …")."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        groups[tuple(r.setting.items())].append(r)
    names = [{r.setting_name for r in rs} for rs in groups.values()]
    named = all(len(n) == 1 and None not in n for n in names)
    named = named and len({next(iter(n)) for n in names}) == len(names)
    labels = [next(iter(n)) for n in names] if named else differences(list(groups))
    if len(set(labels)) < len(labels):  # "100" and 100 read alike: say them as JSON
        labels = differences(list(groups), plain=False)
    return dict(sorted(zip(labels, groups.values()), key=lambda kv: kv[0]))


def differences(settings: list[tuple], plain: bool = True) -> list[str]:
    """Each setting as the keys whose values differ between ``settings`` ("k=v, …")."""
    return [", ".join(f"{k}={v}" for k, v in d.items()) for d in varying_values(settings, plain)]


def varying_values(settings: list[tuple], plain: bool = True) -> list[dict[str, str]]:
    """Each setting's values of the keys that differ between them: as written in an override,
    or (``plain=False``) as JSON."""
    dicts = [dict(s) for s in settings]
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({d.get(k) for d in dicts}) > 1]
    say = _plain if plain else (lambda value: "–" if value is None else value)
    return [{k: say(d.get(k)) for k in varying} for d in dicts]


def _plain(value: str | None) -> str:
    """A setting's JSON value as written in an override: strings without quotes."""
    if value is None:
        return "–"
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else json.dumps(loaded, separators=(",", ":"))


def arms_of(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.seed):
        grouped[r.arm].append(r)
    # The control arm first, then alphabetical.
    return dict(sorted(grouped.items(), key=lambda kv: (kv[0] != "default", kv[0])))
