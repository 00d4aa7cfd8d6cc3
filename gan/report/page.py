"""Writes a report: one setting's page and figures, or one per setting and the atlas above them."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

from gan.quality import CLASS_KL, KCD
from gan.record import Status, sample_step
from gan.report import atlas, figures, html_page
from gan.report.columns import COVERAGE, CURVES, PRIMARY, TRAIN_FINALS
from gan.report.comparisons import pairwise, pairwise_tables, verdict_section
from gan.report.figures import SamplePick
from gan.report.grouping import arms_of, by_setting, varying_values
from gan.report.runs import Run, Skipped
from gan.report.tables import (
    arm_table,
    coverage_table,
    few_seeds_warning,
    intro,
    run_row,
    skipped,
    write_csv,
)


def write_reports(
    runs: list[Run], incomplete: list[Skipped], out: Path, threshold: float | None
) -> str:
    """The report of ``runs``: of one setting, as ``write_report``; of several, one report per
    setting in its own folder under ``out`` and the atlas (``gan.report.atlas``) in ``out``
    itself, its report.md / report.html, atlas.png, atlas.csv and a summary.csv of every run.
    Returns the top report.md's text."""
    settings = by_setting(runs)
    if len(settings) == 1:
        return write_report(runs, incomplete, out, threshold)
    info, rows = {}, []
    values = varying_values([tuple(group[0].setting.items()) for group in settings.values()])
    for (label, group), folder, differs in zip(settings.items(), _folders(settings), values):
        (out / folder).mkdir(parents=True, exist_ok=True)
        write_report(group, [], out / folder, threshold, setting=label, console=False)
        info[label] = atlas.SettingInfo(len(group), folder, differs)
        rows += [{"setting": label, **run_row(r, threshold)} for r in group]
    write_csv(rows, out / "summary.csv")
    arms = {label: arms_of(group) for label, group in settings.items()}
    lines = atlas.write_atlas(arms, info, out)
    every_arm = {f"{label}/{arm}": rs for label, a in arms.items() for arm, rs in a.items()}
    lines = [*lines[:2], *few_seeds_warning(every_arm), *lines[2:], *skipped(incomplete)]
    return _write_page(lines, out)


def _folders(settings: dict[str, list[Run]]) -> list[str]:
    """A folder name per setting label: its characters safe in a path, numbered when needed."""
    names = [re.sub(r"[^A-Za-z0-9_.=,-]+", "_", label)[:80] for label in settings]
    names = [n if n.strip(".") else "setting" for n in names]  # "." or "..": not a folder
    repeated = {n for n in names if names.count(n) > 1}
    return [f"{i}_{n}" if n in repeated else n for i, n in enumerate(names)]


def _write_page(lines: list[str], out: Path) -> str:
    """report.md and report.html from the page's Markdown lines; returns report.md's text."""
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    page = html_page.render(text, out, title=lines[0].lstrip("# "))
    (out / "report.html").write_text(page)
    return text


def write_report(
    runs: list[Run],
    incomplete: list[Skipped],
    out: Path,
    threshold: float | None,
    setting: str | None = None,
    console: bool = True,
) -> str:
    """Writes summary.csv, the figures, report.md and report.html into ``out`` for runs of one
    setting (named in the title when given); returns report.md's text. ``console``: whether a
    small-n warning also goes to the console."""
    arms = arms_of(runs)
    finished = {arm: [r for r in rs if r.status == Status.finished] for arm, rs in arms.items()}
    write_csv([run_row(r, threshold) for rs in arms.values() for r in rs], out / "summary.csv")
    figures.plot_curves(arms, CURVES, out / "curves.png")
    logged = {key for r in runs for key in r.curves}
    quality = [k for k in (PRIMARY, KCD) if k in logged]
    metrics = quality + ([CLASS_KL] if CLASS_KL in logged else [])
    metrics += list(TRAIN_FINALS)
    pairs = list(itertools.combinations(finished, 2))
    comparisons = pairwise(finished, pairs, metrics)
    head = intro(runs, arms, setting)
    lines = [
        *head[:2],  # the title; the warning comes before anything it qualifies
        *few_seeds_warning(arms, console),
        *head[2:],
        *arm_table(arms, finished, PRIMARY in logged, KCD in logged, threshold),
        *coverage_table(finished, [k for k in COVERAGE if k in logged]),
        *samples_section(arms, out),
        *diagnostics_section(arms, out),
        *pairwise_tables(comparisons, metrics),
        *verdict_section(comparisons, quality or metrics[:1], bool(quality), len(pairs)),
        *skipped(incomplete),
    ]
    return _write_page(lines, out)


def samples_section(arms: dict[str, list[Run]], out: Path) -> list[str]:
    picks = sample_picks(arms)
    figures.plot_samples(picks, out / "samples.png")
    return [
        "",
        "## Samples",
        "",
        "![samples](samples.png)",
        "",
        "Each arm's last sample grid, from its finished seed with the median final FCD (the "
        "lower middle one for an even count; the first seed when no FCD was logged).",
    ]


def diagnostics_section(arms: dict[str, list[Run]], out: Path) -> list[str]:
    lines = ["", "## Per-layer diagnostics", ""]
    if figures.plot_diagnostics(arms, out / "diagnostics.png") is None:
        (out / "diagnostics.png").unlink(missing_ok=True)  # an earlier report's would mislead
        return [*lines, "No run recorded per-layer diagnostics (trainer.diag_every=0)."]
    last = figures.last_diag_step(arms)
    when = (
        f"at step 0 (dashed, open markers; every run) and at step {last}, the last diagnostic "
        "step (solid; finished runs)"
        if last
        else "at step 0 only: no later diagnostic step was recorded (runs shorter than "
        "trainer.diag_every)"
    )
    return [
        *lines,
        "![diagnostics](diagnostics.png)",
        "",
        f"Mean across seeds per arm, layer by layer, {when}. Activation std, gradient norm and "
        "weight std on log axes (▼ at a panel's bottom: exactly 0). Dead: the share of a ReLU's "
        "outputs at 0 or a Leaky ReLU's below 0; saturated: of tanh outputs with |y| > 0.99, of "
        "sigmoid outputs below 0.01 or above 0.99.",
    ]


def sample_picks(arms: dict[str, list[Run]]) -> list[SamplePick]:
    """Per arm, the last grid of the finished seed with the median final FCD (the lower of the
    two middle ones for an even count), or of its first finished seed when it has no FCD."""
    picks = []
    for arm, runs in arms.items():
        ok = [r for r in runs if r.status == Status.finished and r.last_sample()]
        scored = sorted(
            (r for r in ok if math.isfinite(r.final(PRIMARY) or math.nan)),
            key=lambda r: r.final(PRIMARY),
        )
        if scored:
            run = scored[(len(scored) - 1) // 2]
            why = f"seed {run.seed}: median final FCD {run.final(PRIMARY):.2f}"
        elif ok:
            run, why = ok[0], f"seed {ok[0].seed} (no FCD)"
        else:
            picks.append(SamplePick(arm, f"{arm}\nno finished run with samples", None))
            continue
        grid = run.last_sample()
        step = sample_step(grid)
        picks.append(SamplePick(arm, f"{arm}\n{why}, step {step}", grid))
    return picks
