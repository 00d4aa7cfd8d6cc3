"""The atlas: where does init matter? Every init arm against the control, setting by setting.

A sweep over several settings (``experiment=atlas``) is reported by ``gan.report`` as one report
per setting plus this view: one row per setting × arm with the difference in final FCD (arm −
control) and in FCD at the first evaluation, each with Welch's 95 % interval, Hedges' g, and a
p-value Holm-corrected across every test of the table; the outcome counts of both arms; and
``atlas.png``, a forest plot of the differences. Runs of different settings are never pooled: each
row compares runs of one setting only.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gan.record import Outcome, Status
from gan.report import figures
from gan.report.columns import ALPHA, PRIMARY
from gan.report.effects import AtlasRow, Effect, effect
from gan.report.stats import holm

if TYPE_CHECKING:
    from gan.report.runs import Run

CONTROL = "default"  # PyTorch's own init: what every other arm is measured against


def _finished(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.status == Status.finished]


def final_fcds(runs: Sequence[Run]) -> list[float]:
    return [x for r in _finished(runs) if (x := r.final(PRIMARY)) is not None and math.isfinite(x)]


def first_eval_step(runs: Sequence[Run]) -> int | None:
    """The earliest step at which any of ``runs`` evaluated FCD."""
    steps = [int(r.curves[PRIMARY][0][0]) for r in runs if PRIMARY in r.curves]
    return min(steps) if steps else None


def fcds_at(runs: Sequence[Run], step: int) -> list[float]:
    """Finished runs' FCD at ``step`` (runs that did not evaluate there are left out)."""
    values = []
    for r in _finished(runs):
        if PRIMARY in r.curves:
            steps, fcd = r.curves[PRIMARY]
            hit = np.nonzero(steps == step)[0]
            if len(hit) and math.isfinite(fcd[hit[0]]):
                values.append(float(fcd[hit[0]]))
    return values


def outcome_counts(runs: Sequence[Run]) -> Counter:
    """Runs by outcome; a diverged run whose summary predates outcomes counts as diverged."""
    return Counter(
        r.outcome or (Outcome.diverged if r.status == Status.diverged else "unknown") for r in runs
    )


def atlas_rows(settings: dict[str, dict[str, list[Run]]]) -> list[AtlasRow]:
    """One row per setting × non-control arm (``settings``: setting → arm → runs), the control
    being ``CONTROL`` where the setting has it, else its first arm; Holm over the whole table."""
    rows = []
    for setting, arms in settings.items():
        control = CONTROL if CONTROL in arms else next(iter(arms))
        step = first_eval_step([r for runs in arms.values() for r in runs])
        for arm, runs in arms.items():
            if arm == control:
                continue
            ctl = arms[control]
            first = effect(fcds_at(runs, step), fcds_at(ctl, step)) if step is not None else None
            rows.append(
                AtlasRow(
                    setting,
                    arm,
                    control,
                    effect(final_fcds(runs), final_fcds(ctl)),
                    first,
                    step,
                    {arm: outcome_counts(runs), control: outcome_counts(ctl)},
                )
            )
    tests = [e for row in rows for e in (row.final, row.first) if e and not math.isnan(e.p)]
    for e, p in zip(tests, holm([e.p for e in tests])):
        e.holm = p
    return rows


# --------------------------------------------------------------------------------------------
# The atlas page
# --------------------------------------------------------------------------------------------


def _effect_cells(e: Effect | None) -> list[str]:
    if e is None:
        return ["needs ≥ 2 finished runs per arm", "–", "–"]
    if math.isnan(e.p):
        return [f"{e.diff:+.2f} (no spread)", "–", "–"]
    mark = "**" if e.significant else ""
    diff = f"{mark}{e.diff:+.2f}{mark} [{e.low:+.2f}, {e.high:+.2f}]"
    return [diff, f"{e.holm:.3g}", f"{e.g:+.2f}"]


def _outcome_cell(counts: Counter) -> str:
    order = [*Outcome, *sorted(set(counts) - set(Outcome))]
    return ", ".join(f"{name} {counts[name]}" for name in order if counts[name])


def atlas_table(rows: list[AtlasRow]) -> list[str]:
    header = [
        "setting",
        "arm − control",
        "n",
        "Δ final FCD [95 % CI]",
        "Holm p",
        "Hedges' g",
        "Δ FCD at first eval [95 % CI]",
        "Holm p",
        "Hedges' g",
        "outcomes (arm)",
        "outcomes (control)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        n = f"{row.final.n[0]} vs {row.final.n[1]}" if row.final else "–"
        first = _effect_cells(row.first)
        if row.first_step is not None:
            first[0] += f" @ {row.first_step}"
        cells = [
            row.setting,
            f"{row.arm} − {row.control}",
            n,
            *_effect_cells(row.final),
            *first,
            _outcome_cell(row.outcomes[row.arm]),
            _outcome_cell(row.outcomes[row.control]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def in_plain_words(rows: list[AtlasRow]) -> list[str]:
    """One sentence per row on final FCD: which arm is better where the test says so."""
    said = []
    for row in rows:
        e, pair = row.final, f"{row.arm} vs {row.control}"
        if e is None or math.isnan(e.p):
            said.append(f"{row.setting}: {pair}: too few finished runs with spread to test.")
        elif e.significant:
            better, worse = (row.arm, row.control) if e.diff < 0 else (row.control, row.arm)
            said.append(
                f"**{row.setting}**: {better} ends with lower FCD than {worse} by "
                f"{abs(e.diff):.2f} (95 % CI of arm − control [{e.low:+.2f}, {e.high:+.2f}], "
                f"Holm p = {e.holm:.3g}, g = {e.g:+.2f}, n = {e.n[0]} vs {e.n[1]})."
            )
        else:
            said.append(
                f"{row.setting}: no significant difference in final FCD ({pair}: "
                f"{e.diff:+.2f} [{e.low:+.2f}, {e.high:+.2f}], Holm p = {e.holm:.3g})."
            )
    return said


@dataclass(frozen=True)
class SettingInfo:
    """A setting as the atlas page lists it: its runs, report folder and how it differs."""

    runs: int
    folder: str
    differs: dict[str, str]  # key → value, for the keys in which the settings differ


def write_atlas(
    settings: dict[str, dict[str, list[Run]]], info: dict[str, SettingInfo], out: Path
) -> list[str]:
    """Writes atlas.png and atlas.csv into ``out``; returns the atlas page's Markdown lines."""
    rows = atlas_rows(settings)
    single = {setting: arms for setting, arms in settings.items() if len(arms) == 1}
    figures.plot_forest(rows, out / "atlas.png")
    write_atlas_csv(rows, out / "atlas.csv")
    family = sum(e is not None and not math.isnan(e.p) for r in rows for e in (r.final, r.first))
    n_runs = sum(i.runs for i in info.values())
    return [
        f"# Init atlas: {len(settings)} settings, {n_runs} runs",
        "",
        "Each row compares one init arm with the control (PyTorch's `default` where the setting "
        "has it) within one setting; runs of different settings are never pooled. Δ = mean(arm) "
        "− mean(control) over finished runs (negative: the arm's samples are closer to the data), "
        "with Welch's 95 % interval; Hedges' g the standardized difference. Holm p: Welch's p "
        f"adjusted over all {family} tests of the table (final and first-evaluation FCD), "
        f"significant (bold) below {ALPHA}. Outcomes count every run, diverged ones included.",
        "",
        "![atlas](atlas.png)",
        "",
        *atlas_table(rows),
        "",
        "## In plain words",
        "",
        *[f"- {s}" for s in in_plain_words(rows)],
        *[f"- {s}: only {next(iter(a))} ran; nothing to compare." for s, a in single.items()],
        "",
        "## Settings",
        "",
        *settings_table(info),
    ]


def settings_table(info: dict[str, SettingInfo]) -> list[str]:
    """The settings legend: a column per key in which the settings differ, a row per setting."""
    keys = list(dict.fromkeys(k for i in info.values() for k in i.differs))
    return [
        "| setting | runs | report | " + " | ".join(f"`{k}`" for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
        *[
            f"| {s} | {i.runs} | `{i.folder}/report.html` | "
            + " | ".join(i.differs.get(k, "–") for k in keys)
            + " |"
            for s, i in info.items()
        ],
    ]


def write_atlas_csv(rows: list[AtlasRow], path: Path) -> None:
    """One line per atlas row, the numbers unrounded."""
    fields = ["setting", "arm", "control", "first_eval_step"]
    for which in ("final", "first"):
        fields += [f"{which}_{k}" for k in ("diff", "ci_low", "ci_high", "p_welch", "p_holm", "g")]
        fields += [f"{which}_n_arm", f"{which}_n_control"]
    fields += ["outcomes_arm", "outcomes_control"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            line = {"setting": row.setting, "arm": row.arm, "control": row.control}
            line["first_eval_step"] = row.first_step
            for which, e in (("final", row.final), ("first", row.first)):
                if e is not None:
                    values = (e.diff, e.low, e.high, e.p, e.holm, e.g, *e.n)
                    keys = ("diff", "ci_low", "ci_high", "p_welch", "p_holm", "g")
                    keys += ("n_arm", "n_control")
                    line.update({f"{which}_{k}": v for k, v in zip(keys, values)})
            line["outcomes_arm"] = _outcome_cell(row.outcomes[row.arm])
            line["outcomes_control"] = _outcome_cell(row.outcomes[row.control])
            writer.writerow(line)
