"""`python -m gan.report <multirun dir> [...]`: an ablation's statistics from its files alone.

Reads every run directory below the inputs (``summary.json`` + ``metrics.jsonl`` + the last sample
grid; no network, no W&B account) and writes into ``--out``: ``report.md`` and the same page as a
self-contained ``report.html`` (per-arm tables, pairwise tests with Holm's correction and
bootstrap intervals, a plain-words verdict), ``curves.png`` (mean and 95 % confidence band across
seeds per arm), ``samples.png`` (each arm's median-FCD seed), ``diagnostics.png`` (per-layer
statistics by arm at step 0 and the last diagnostic step) and ``summary.csv`` (one row per run).

Runs are grouped by setting (the resolved config minus the init arm, the seed, logging and paths;
``read_setting``) and never averaged across settings: runs of several settings get one such report
per setting, in a folder of its own, and the atlas of them all on top (``gan.atlas``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan import atlas, console, report_figures, report_html
from gan.config import not_setting, setting_name
from gan.errors import UserError, exits_on_user_error
from gan.report_figures import SamplePick, band  # noqa: F401 - band: part of this module's API
from gan.stats import (  # noqa: F401 - re-exported: the report's statistics, by their old names
    BOOTSTRAP_RESAMPLES,
    FEW_SEEDS,
    bootstrap_ci,
    clip_difference,
    clip_interval,
    compare,
    hedges_g,
    holm,
    mean_ci,
    t_half_width,
)
from gan.tracking import METRICS_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

# The training metrics worth a panel: the report's curves and the W&B dashboard's training section.
TRAINING_CURVES = (
    "train/loss_D",
    "train/loss_G",
    "train/acc_D",
    "train/acc_G",
    "train/D_x",
    "train/D_G_z",
)
CURVES = (
    *TRAINING_CURVES,
    "eval/fcd",
    "eval/kcd",
    "eval/class_kl",
)
# summary.csv's final-value columns: the first five in their original order, then the newer ones.
FINALS = ("train/loss_D", "train/loss_G", "train/acc_D", "train/acc_G", "eval/fcd")
MORE_FINALS = (
    "eval/kcd",
    "eval/kcd_std",
    "eval/class_kl",
    "eval/classes_covered",
    "train/D_x",
    "train/D_G_z",
)
PRIMARY = "eval/fcd"  # lower is better; the verdict is given on it when present
KCD = "eval/kcd"  # lower is better, unbiased: a second verdict beside FCD's
TRAIN_FINALS = ("train/acc_D", "train/acc_G", "train/loss_D", "train/loss_G")  # report.md's order
COVERAGE = ("eval/class_kl", "eval/classes_covered", "train/D_x", "train/D_G_z")
LABELS = {"train/D_x": "D(x)", "train/D_G_z": "D(G(z))", "eval/classes_covered": "classes covered"}
ALPHA = 0.05
# Series read from metrics.jsonl: these prefixes, as numbers. Keys the report relies on must be
# numbers (a string there makes the line invalid); other strings (eval/classifier) are labels.
SERIES_PREFIXES = ("train/", "eval/", "diag/")
NUMERIC = frozenset(CURVES + FINALS + MORE_FINALS)
NON_FINITE = ("NaN", "Infinity", "-Infinity")  # how the runs write non-finite numbers


@dataclass
class Run:
    path: Path
    arm: str
    seed: int
    model: str
    dataset: str
    status: str
    # key → (steps, values)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    diverged_step: int | None = None
    outcome: str | None = None  # trained | collapsed | stuck | diverged (gan.outcome); None: older
    setting: dict[str, str] = field(default_factory=dict)  # read_setting: key → JSON value
    setting_name: str | None = None  # the `setting=` override, if the run was started with one

    def last_sample(self) -> Path | None:
        """The run's last sample grid (``samples/step_NNNNNNN.png``), if any."""
        grids = sorted((self.path / "samples").glob("step_*.png"))
        return grids[-1] if grids else None

    def final(self, key: str) -> float | None:
        return float(self.curves[key][1][-1]) if key in self.curves else None

    def best(self, key: str) -> tuple[float, int] | None:
        if key not in self.curves:
            return None
        steps, values = self.curves[key]
        if np.isnan(values).all():
            return None
        i = int(np.nanargmin(values))
        return float(values[i]), int(steps[i])


def load_runs(inputs: Sequence[Path]) -> tuple[list[Run], list[Skipped]]:
    """Runs under ``inputs`` that have a summary; also the directories skipped as incomplete."""
    runs, incomplete = [], []
    seen: set[Path] = set()  # each run once, however the inputs overlap (twice, dir + subdir)
    for root in inputs:
        if not Path(root).is_dir():
            raise UserError(f"{root} is not a directory")
        for metrics in sorted(Path(root).rglob(METRICS_FILE)):
            if metrics.parent.resolve() in seen:
                continue
            seen.add(metrics.parent.resolve())
            try:
                run = read_run(metrics.parent)
            except UnreadableRun as err:
                log.warning("warning: skipping %s: %s", metrics.parent, err)
                incomplete.append(Skipped(metrics.parent, str(err)))
                continue
            if run is None:
                incomplete.append(Skipped(metrics.parent, "no finished summary"))
            else:
                runs.append(run)
    if not runs:
        raise UserError(
            f"no finished runs (directories with {SUMMARY_FILE} and {METRICS_FILE}) under "
            + ", ".join(map(str, inputs))
        )
    return runs, incomplete


class UnreadableRun(Exception):
    """A run whose files cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def read_run(run_dir: Path) -> Run | None:
    """The run in ``run_dir``; None while it has no finished (or diverged) summary."""
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError as err:
        raise UnreadableRun(f"{summary_path} is not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise UnreadableRun(f"{summary_path} holds no summary (a JSON object)")
    if summary.get("status") not in ("finished", "diverged"):
        return None
    try:
        run = Run(
            run_dir,
            str(summary["arm"]),
            int(summary["seed"]),
            summary["model"],
            summary["dataset"],
            summary["status"],
            diverged_step=summary.get("diverged_step"),
            outcome=summary.get("outcome"),
            setting=read_setting(run_dir, summary),
            setting_name=setting_name(summary.get("overrides", [])),
        )
    except (KeyError, ValueError, TypeError) as err:
        what = f"has no {err}" if isinstance(err, KeyError) else f"has a bad value ({err})"
        raise UnreadableRun(f"{summary_path} {what}") from None
    run.curves = _read_curves(run_dir / METRICS_FILE)
    return run


def _read_curves(metrics: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for number, line in enumerate(metrics.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            for key, value in record.items():
                if key.startswith(SERIES_PREFIXES) and (key in NUMERIC or _is_number(value)):
                    # non-finite values are written as "NaN" / "Infinity": float() reads them
                    series[key].append((int(record["step"]), float(value)))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise UnreadableRun(f"{metrics} line {number} is not a valid record ({err})") from None
    return {key: _by_step(pairs) for key, pairs in series.items()}


def _by_step(pairs: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) in step order; a step logged twice (lines re-made by a resume) keeps its
    last value, so runs align step by step."""
    last = dict(pairs)
    steps = sorted(last)
    return np.array(steps, dtype=int), np.array([last[s] for s in steps], dtype=float)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
        value in NON_FINITE
    )


# Keys of the resolved config that do not change what a run measures (the init arm, the seed,
# logging, paths, speed knobs), declared in gan.config.KEY_USES. trainer.precision gives way to the
# precision it resolved to on the run's machine (summary.json); trainer.default_lr to the resolved
# trainer.lr.
NOT_SETTING = not_setting()


def read_setting(run_dir: Path, summary: dict) -> dict[str, str]:
    """The run's setting: dotted key → value as JSON, from summary.json's model, dataset and
    resolved precision and, when present, the resolved .hydra/config.yaml minus NOT_SETTING."""
    setting = {
        "model.name": summary["model"],
        "dataset.name": summary["dataset"],
        "precision (resolved)": summary.get("precision", "fp32"),
    }
    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        setting.update(_flat(_resolved_config(path)))
    return {
        key: json.dumps(value, sort_keys=True)
        for key, value in sorted(setting.items())
        if not any(key == k or key.startswith(k + ".") for k in NOT_SETTING)
    }


def _resolved_config(path: Path) -> dict:
    """The config with interpolations resolved (trainer.lr is written as one); one that cannot be
    resolved outside its run stays as written."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml's and omegaconf's errors alike
        raise UnreadableRun(f"{path} is not a readable config ({err})") from None
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(cfg, resolve=False)


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    return dict(sorted(zip(labels, groups.values()), key=lambda kv: kv[0]))


def differences(settings: list[tuple]) -> list[str]:
    """Each setting as the keys whose values differ between ``settings`` ("k=v, …")."""
    return [", ".join(f"{k}={v}" for k, v in d.items()) for d in varying_values(settings)]


def varying_values(settings: list[tuple]) -> list[dict[str, str]]:
    """Each setting's values, as written in an override, of the keys that differ between them."""
    dicts = [dict(s) for s in settings]
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({d.get(k) for d in dicts}) > 1]
    return [{k: _plain(d.get(k)) for k in varying} for d in dicts]


def _plain(value: str | None) -> str:
    """A setting's JSON value as written in an override: strings without quotes."""
    if value is None:
        return "–"
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else json.dumps(loaded, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Runs by arm, per-run rows
# --------------------------------------------------------------------------------------------


def arms_of(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.seed):
        grouped[r.arm].append(r)
    # The control arm first, then alphabetical.
    return dict(sorted(grouped.items(), key=lambda kv: (kv[0] != "default", kv[0])))


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _digits(key: str) -> int:
    return 2 if key.startswith("eval/") else 3


def _cell(values: Sequence[float | None], key: str, digits: int | None = None) -> str:
    """Mean ± the t half-width; where that interval reaches past what ``key`` can take (few
    seeds), the mean and the interval clipped to the metric's range, as ``mean [low, high]``."""
    digits = _digits(key) if digits is None else digits
    mean, half, _ = mean_ci(values)
    if math.isnan(mean) or math.isnan(half):
        return _fmt(mean, half, digits)
    low, high = clip_interval(mean - half, mean + half, key)
    if (low, high) == (mean - half, mean + half):
        return _fmt(mean, half, digits)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def few_seeds_warning(arms: dict[str, list[Run]], console: bool = True) -> list[str]:
    """A warning block when an arm has fewer than FEW_SEEDS finished runs; also on the console
    unless ``console`` is False (a setting's page under an atlas, whose page warns once)."""
    counts = {arm: sum(r.status == "finished" for r in rs) for arm, rs in arms.items()}
    few = {arm: n for arm, n in counts.items() if n < FEW_SEEDS}
    if not few:
        return []
    which = ", ".join(f"{arm}: {n}" for arm, n in few.items())
    text = (
        f"Warning: fewer than {FEW_SEEDS} finished seeds per arm ({which}). Intervals from so "
        "few runs are wide (shown clipped to what each metric can take) and the tests have little "
        "power: read this report as a demonstration, not as evidence."
    )
    if console:
        log.warning("warning: %s", text.removeprefix("Warning: "))
    return [f"> **{text}**", ""]


def run_row(r: Run, threshold: float | None) -> dict[str, object]:
    row: dict[str, object] = {
        "arm": r.arm,
        "seed": r.seed,
        "model": r.model,
        "dataset": r.dataset,
        "status": r.status,
        "diverged_step": r.diverged_step,
        "path": str(r.path),
    }
    for key in FINALS:
        row[f"final {key}"] = r.final(key)
    best = r.best(PRIMARY)
    row[f"best {PRIMARY}"], row[f"best {PRIMARY} step"] = best if best else (None, None)
    if threshold is not None:
        row[f"steps to {PRIMARY} ≤ {threshold:g}"] = steps_to(r, threshold)
    for key in MORE_FINALS:
        row[f"final {key}"] = r.final(key)
    return row


def steps_to(r: Run, threshold: float) -> int | None:
    if PRIMARY not in r.curves:
        return None
    steps, values = r.curves[PRIMARY]
    hit = np.nonzero(values <= threshold)[0]
    return int(steps[hit[0]]) if len(hit) else None


def sample_picks(arms: dict[str, list[Run]]) -> list[SamplePick]:
    """Per arm, the last grid of the finished seed with the median final FCD (the lower of the
    two middle ones for an even count), or of its first finished seed when it has no FCD."""
    picks = []
    for arm, runs in arms.items():
        ok = [r for r in runs if r.status == "finished" and r.last_sample()]
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
        step = int(grid.stem.removeprefix("step_"))
        picks.append(SamplePick(arm, f"{arm}\n{why}, step {step}", grid))
    return picks


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def write_reports(
    runs: list[Run], incomplete: list[Skipped], out: Path, threshold: float | None
) -> str:
    """The report of ``runs``: of one setting, as ``write_report``; of several, one report per
    setting in its own folder under ``out`` and the atlas (``gan.atlas``) in ``out`` itself, its
    report.md / report.html, atlas.png, atlas.csv and a summary.csv of every run. Returns the
    top report.md's text."""
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
    names = [re.sub(r"[^A-Za-z0-9_.=,-]+", "_", label)[:80] or "setting" for label in settings]
    repeated = {n for n in names if names.count(n) > 1}
    return [f"{i}_{n}" if n in repeated else n for i, n in enumerate(names)]


def _write_page(lines: list[str], out: Path) -> str:
    """report.md and report.html from the page's Markdown lines; returns report.md's text."""
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    page = report_html.render(text, out, title=lines[0].lstrip("# "))
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
    finished = {arm: [r for r in rs if r.status == "finished"] for arm, rs in arms.items()}
    write_csv([run_row(r, threshold) for rs in arms.values() for r in rs], out / "summary.csv")
    report_figures.plot_curves(arms, CURVES, out / "curves.png")
    logged = {key for r in runs for key in r.curves}
    quality = [k for k in (PRIMARY, KCD) if k in logged]
    metrics = quality + (["eval/class_kl"] if "eval/class_kl" in logged else [])
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


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    """One row per run, the columns of the first row."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def intro(runs: list[Run], arms: dict[str, list[Run]], setting: str | None = None) -> list[str]:
    named = f", setting {setting}" if setting else ""
    return [
        f"# Init ablation: model={runs[0].model}, dataset={runs[0].dataset}{named}",
        "",
        f"{len(runs)} runs in {len(arms)} arms; mean ± 95 % confidence interval (Student t) "
        "across seeds, or mean [low, high] where that interval is clipped to what the metric "
        "can take; final = the last logging window or evaluation. Diverged runs are counted "
        "but left out of the statistics. FCD: Fréchet distance in the dataset classifier's "
        "features (biased upwards at small sample sizes); KCD: the unbiased kernel distance in "
        "the same features (0 for the real distribution, so it can be slightly negative).",
        "",
        "![curves](curves.png)",
        "",
    ]


def arm_table(
    arms: dict[str, list[Run]],
    finished: dict[str, list[Run]],
    has_fcd: bool,
    has_kcd: bool,
    threshold: float | None,
) -> list[str]:
    """The per-arm table: runs, divergences and the mean ± CI of each final value."""
    header = ["arm", "n", "diverged"]
    if has_fcd:
        header += ["final FCD", "best FCD"]
        header += [f"steps to FCD ≤ {threshold:g}"] if threshold is not None else []
    header += ["final KCD"] if has_kcd else []
    header += [f"final {key.split('/')[1]}" for key in TRAIN_FINALS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, rs in arms.items():
        ok = finished[arm]
        cells = [arm, str(len(ok)), str(sum(r.status == "diverged" for r in rs))]
        if has_fcd:
            cells += _fcd_cells(ok, threshold)
        if has_kcd:
            cells.append(_cell([r.final(KCD) for r in ok], KCD))
        cells += [_cell([r.final(key) for r in ok], key, 3) for key in TRAIN_FINALS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fcd_cells(ok: list[Run], threshold: float | None) -> list[str]:
    cells = [
        _cell([r.final(PRIMARY) for r in ok], PRIMARY),
        _cell([b[0] for r in ok if (b := r.best(PRIMARY))], PRIMARY),
    ]
    if threshold is not None:
        reached = [s for r in ok if (s := steps_to(r, threshold)) is not None]
        steps = _cell(reached, "steps", 0)
        cells.append(f"{steps} ({len(reached)}/{len(ok)} reached)")
    return cells


def coverage_table(finished: dict[str, list[Run]], keys: list[str]) -> list[str]:
    """Class coverage and D's mean outputs on reals and fakes (final, mean ± CI per arm)."""
    if not keys:
        return []
    header = ["arm", "n", *(f"final {LABELS.get(k, k.split('/')[1])}" for k in keys)]
    lines = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, ok in finished.items():
        cells = [_cell([r.final(k) for r in ok], k) for k in keys]
        lines.append("| " + " | ".join([arm, str(len(ok)), *cells]) + " |")
    return [
        *lines,
        "",
        "class_kl: KL(predicted-class histogram ‖ uniform), 0 when balanced, ln 10 = 2.30 when one "
        "class takes all; classes covered: classes with at least half their fair share; D(x), "
        'D(G(z)): D\'s mean probability of "real" on reals and on fakes (0.5: D cannot tell).',
    ]


def samples_section(arms: dict[str, list[Run]], out: Path) -> list[str]:
    picks = sample_picks(arms)
    report_figures.plot_samples(picks, out / "samples.png")
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
    if report_figures.plot_diagnostics(arms, out / "diagnostics.png") is None:
        (out / "diagnostics.png").unlink(missing_ok=True)  # an earlier report's would mislead
        return [*lines, "No run recorded per-layer diagnostics (trainer.diag_every=0)."]
    last = report_figures.last_diag_step(arms)
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


# --------------------------------------------------------------------------------------------
# Pairwise tests and the verdict
# --------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """One cell group of the pairwise tables: arms ``a`` and ``b`` on final ``key``."""

    key: str
    a: str
    b: str
    va: list[float]
    vb: list[float]
    tests: dict[str, float] | None = None  # None: fewer than 2 finished runs in an arm
    bootstrap: tuple[float, float] = (math.nan, math.nan)
    holm: float = math.nan  # Welch's p adjusted over every test of the tables

    @property
    def tested(self) -> bool:
        return self.tests is not None and not math.isnan(self.tests["p_welch"])


def _finite_finals(runs: list[Run], key: str) -> list[float]:
    return [x for r in runs if (x := r.final(key)) is not None and math.isfinite(x)]


def pairwise(
    finished: dict[str, list[Run]], pairs: list[tuple[str, str]], metrics: list[str]
) -> list[Comparison]:
    """Every pair of arms on every metric, Welch's p Holm-adjusted across all of them."""
    comparisons = []
    for key in metrics:
        for a, b in pairs:
            c = Comparison(
                key, a, b, _finite_finals(finished[a], key), _finite_finals(finished[b], key)
            )
            if len(c.va) >= 2 and len(c.vb) >= 2:
                c.tests = compare(c.va, c.vb)
                if c.tested:
                    low, high = clip_difference(c.tests["ci_low"], c.tests["ci_high"], key)
                    c.tests.update(ci_low=low, ci_high=high)
                    c.bootstrap = bootstrap_ci(c.va, c.vb)
            comparisons.append(c)
    adjusted = holm([c.tests["p_welch"] if c.tested else math.nan for c in comparisons])
    for c, p in zip(comparisons, adjusted):
        c.holm = p
    return comparisons


def pairwise_tables(comparisons: list[Comparison], metrics: list[str]) -> list[str]:
    """One table per metric: each pair of arms, their difference and its tests."""
    if not comparisons:
        return ["", "## Pairwise tests", "", "A single arm: there is no pair to compare.", ""]
    family = sum(c.tested for c in comparisons)
    lines = [
        "",
        "## Pairwise tests",
        "",
        "Mean difference A − B of the final values with two 95 % intervals: Welch's t and a "
        f"percentile bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples per arm, seeded; with few "
        "seeds it is narrower than the t interval, as a resample never leaves the observed "
        f"values). Holm p: Welch's p adjusted by Holm's method over all {family} tests below.",
        "",
    ]
    for key in metrics:
        lines += [
            f"**final {key}**",
            "",
            "| A | B | mean A − B | t 95 % CI | bootstrap 95 % CI | Welch p | Holm p "
            "| Mann–Whitney p | Hedges' g |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_test_row(c) for c in comparisons if c.key == key]
        lines.append("")
    return lines


def _test_row(c: Comparison) -> str:
    if c.tests is None:
        return f"| {c.a} | {c.b} | – | needs ≥ 2 runs per arm | | | | | |"
    diff = f"{np.mean(c.va) - np.mean(c.vb):+.3f}"
    if not c.tested:
        return f"| {c.a} | {c.b} | {diff} | – (no variance) | – | – | – | – | – |"
    t = c.tests
    return (
        f"| {c.a} | {c.b} | {diff} | [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | "
        f"[{c.bootstrap[0]:+.3f}, {c.bootstrap[1]:+.3f}] | {t['p_welch']:.3g} | {c.holm:.3g} | "
        f"{t['p_mannwhitney']:.3g} | {t['hedges_g']:+.2f} |"
    )


def verdicts(comparisons: list[Comparison], key: str, lower_is_better: bool) -> list[str]:
    """A sentence per pair of arms with ≥ 2 finished runs each, on final ``key``."""
    said = []
    for c in comparisons:
        if c.key != key or c.tests is None:
            continue
        if c.tested:
            said.append(verdict(c, lower_is_better))
        else:
            said.append(
                f"{c.a} and {c.b}: final {key} has no spread across seeds; no test is possible."
            )
    return said


def verdict(c: Comparison, lower_is_better: bool) -> str:
    """Significant means Holm-adjusted p < ALPHA; the raw p is stated beside it."""
    ma, mb = float(np.mean(c.va)), float(np.mean(c.vb))
    significant = c.holm < ALPHA
    strength = (
        f"Welch p = {c.tests['p_welch']:.3g}, Holm p = {c.holm:.3g}, "
        f"Hedges' g = {c.tests['hedges_g']:+.2f}, n = {len(c.va)} vs {len(c.vb)}"
    )
    if not lower_is_better:  # no quality metric: say whether they differ, not which is better
        word = "differ significantly" if significant else "do not differ significantly"
        return (
            f"{c.a} and {c.b} {word} in final {c.key} ({ma:.3f} vs {mb:.3f}; {strength}). "
            "Losses and accuracies do not rank GANs: add a quality metric (eval/fcd) to say which "
            "is better."
        )
    better, worse = (c.a, c.b) if ma < mb else (c.b, c.a)
    lo, hi = min(ma, mb), max(ma, mb)
    if significant:
        return (
            f"**{better}** is better than {worse} on final {c.key} "
            f"({lo:.2f} vs {hi:.2f}; {strength})."
        )
    return (
        f"{better} has the lower final {c.key} ({lo:.2f} vs {hi:.2f}), but the difference is not "
        f"significant at {ALPHA} after Holm's correction ({strength})."
    )


def verdict_section(
    comparisons: list[Comparison], keys: list[str], lower_is_better: bool, n_pairs: int
) -> list[str]:
    said = [s for key in keys for s in verdicts(comparisons, key, lower_is_better)]
    fallback = ["Fewer than two arms with ≥ 2 finished runs: no comparison possible."]
    lines = ["## Verdict", "", *[f"- {v}" for v in said or fallback], ""]
    family = sum(c.tested for c in comparisons)
    if family > 1:
        lines.append(
            f"Significance is judged on Holm-adjusted p-values over all {family} tests of the "
            f"pairwise tables ({n_pairs} pair(s) of arms × metrics), so testing more metrics or "
            "arms makes each verdict stricter."
        )
    return lines


def skipped(incomplete: list[Skipped]) -> list[str]:
    if not incomplete:
        return []
    return [
        "",
        f"Skipped {len(incomplete)} incomplete run(s): " + ", ".join(map(str, incomplete)),
    ]


OUTPUTS = (
    "report.md",
    "report.html",
    "curves.png",
    "samples.png",
    "diagnostics.png",
    "summary.csv",
    "atlas.png",
    "atlas.csv",
)


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    installed = Path(sys.argv[0]).name == "gan-report"  # the entry point of an installed package
    parser = argparse.ArgumentParser(
        prog="gan-report" if installed else "python -m gan.report",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="multirun (or run) directories")
    parser.add_argument("--out", type=Path, help="output directory (default: <first input>/report)")
    parser.add_argument(
        "--fcd-threshold",
        type=float,
        default=None,
        help="report the steps each run needs to reach eval/fcd ≤ this value",
    )
    args = parser.parse_args(argv)
    console.setup()
    runs, incomplete = load_runs(args.inputs)
    out = args.out or args.inputs[0] / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        text = write_reports(runs, incomplete, out, args.fcd_threshold)
    except OSError as err:
        raise UserError(
            f"--out {out}: the report cannot be written there ({err.strerror or err}); give a "
            "writable directory"
        ) from None
    print(text)
    written = [str(out / name) for name in OUTPUTS if (out / name).is_file()]
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
