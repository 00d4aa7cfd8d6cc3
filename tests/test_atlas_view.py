"""The report's atlas view on synthetic runs of two named settings with a known answer."""

from __future__ import annotations

import csv
import json

import pytest
from scipy import stats
from test_report import make_run, with_config

from gan import report
from gan.report import atlas, figures

# setting → arm → (first-evaluation FCDs, final FCDs, outcomes), one entry per seed
SWEEP = {
    "mlp": {
        "default": ([30, 31, 33], [20, 21, 22], ["trained", "trained", "collapsed"]),
        "he_xavier": ([30, 31, 32], [10, 11, 12], ["trained"] * 3),
    },
    "mlp_g_none": {
        "default": ([50, 60, 70], [11, 13, 15], ["collapsed"] * 3),
        "he_xavier": ([20, 22, 24], [10, 12, 14], ["trained"] * 3),
    },
}
NORM = {"mlp": "batch", "mlp_g_none": "none"}  # how the two settings differ


@pytest.fixture
def sweep(tmp_path):
    for name, arms in SWEEP.items():
        for arm, (first, final, outcomes) in arms.items():
            for seed, (a, b, outcome) in enumerate(zip(first, final, outcomes)):
                run_dir = make_run(tmp_path / "sweep" / name, arm, seed, [a, b])
                with_config(run_dir, f"model: {{g_norm: {NORM[name]}}}\n")
                summary = json.loads((run_dir / "summary.json").read_text())
                summary |= {"outcome": outcome, "overrides": [f"setting={name}"]}
                (run_dir / "summary.json").write_text(json.dumps(summary))
    return tmp_path / "sweep"


def welch_p(a, b):
    return stats.ttest_ind(a, b, equal_var=False).pvalue


def test_the_atlas_has_one_row_per_setting_with_holm_across_the_table(sweep, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    rows = {r["setting"]: r for r in csv.DictReader((out / "atlas.csv").open())}
    assert list(rows) == ["mlp", "mlp_g_none"]
    # Holm over the four tests (final and first evaluation of both settings), by hand
    p = {
        ("mlp", "final"): welch_p([10, 11, 12], [20, 21, 22]),
        ("mlp", "first"): welch_p([30, 31, 32], [30, 31, 33]),
        ("mlp_g_none", "final"): welch_p([10, 12, 14], [11, 13, 15]),
        ("mlp_g_none", "first"): welch_p([20, 22, 24], [50, 60, 70]),
    }
    ordered = sorted(p, key=p.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(ordered):
        running = max(running, min(1.0, (4 - rank) * p[key]))
        adjusted[key] = running
    for (setting, which), expected in adjusted.items():
        assert float(rows[setting][f"{which}_p_holm"]) == pytest.approx(expected, rel=1e-9)
    assert float(rows["mlp"]["final_diff"]) == pytest.approx(-10.0)
    assert float(rows["mlp_g_none"]["first_diff"]) == pytest.approx(22 - 60)
    assert rows["mlp"]["first_eval_step"] == "100"
    assert rows["mlp"]["outcomes_control"] == "trained 2, collapsed 1"
    assert rows["mlp_g_none"]["outcomes_control"] == "collapsed 3"
    text = (out / "report.md").read_text()
    assert "| mlp | he_xavier − default | 3 vs 3 | **-10.00** [" in text
    assert "mlp_g_none: no significant difference in final FCD" in text
    assert (out / "atlas.png").stat().st_size > 10_000
    # the settings legend: a column per key in which the settings differ, here only G's norm
    assert "| setting | runs | report | `model.g_norm` |" in text
    assert "| mlp_g_none | 6 | `mlp_g_none/report.html` | none |" in text


def test_settings_are_reported_apart_never_averaged(sweep, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    mlp = (out / "mlp" / "report.md").read_text()
    assert mlp.startswith("# Init ablation: model=mlp, dataset=digits, setting mlp")
    assert "| default | 3 | 0 | 21.00 ± 2.48 |" in mlp  # its own three seeds, not six
    runs = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted({r["setting"] for r in runs}) == ["mlp", "mlp_g_none"] and len(runs) == 12


def test_the_forest_plot_draws_one_line_per_row_and_a_line_at_zero(sweep, tmp_path):
    runs, _ = report.load_runs([sweep])
    settings = {label: report.arms_of(group) for label, group in report.by_setting(runs).items()}
    rows = atlas.atlas_rows(settings)
    fig = figures.plot_forest(rows, tmp_path / "atlas.png")
    final, first = fig.axes
    labels = [t.get_text() for t in final.get_yticklabels()]
    assert labels == ["mlp: he_xavier − default", "mlp_g_none: he_xavier − default"]
    assert any(list(line.get_xdata()) == [0, 0] for line in final.lines)  # the line at 0
    assert first.get_xscale() == "symlog"  # a difference of 38 next to ones of 1
    assert final.get_xscale() == "linear"


def test_a_setting_without_a_second_seed_says_so(tmp_path):
    for name, steps in (("a", 100), ("b", 200)):
        for arm in ("default", "he_xavier"):
            run_dir = make_run(tmp_path / name, arm, 0, [5.0])
            with_config(run_dir, f"trainer: {{steps: {steps}}}\n")
            summary = json.loads((run_dir / "summary.json").read_text())
            (run_dir / "summary.json").write_text(
                json.dumps(summary | {"overrides": [f"setting={name}"]})
            )
    runs, _ = report.load_runs([tmp_path])
    text = report.write_reports(runs, [], tmp_path, None)
    assert text.count("needs ≥ 2 finished runs per arm") == 4  # final and first, two rows
    assert "a: he_xavier vs default: too few finished runs with spread to test." in text
    make_run(tmp_path / "c", "he_xavier", 0, [5.0])  # a third setting, with one arm only
    with_config(tmp_path / "c" / "he_xavier-0", "trainer: {steps: 300}\n")
    runs, _ = report.load_runs([tmp_path])
    text = report.write_reports(runs, [], tmp_path, None)
    assert "- trainer.steps=300: only he_xavier ran; nothing to compare." in text
