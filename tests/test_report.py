"""The report's statistics on synthetic runs with a known answer."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from gan import report
from gan.report import grouping
from gan.report import stats as report_stats


def make_run(
    root,
    arm,
    seed,
    fcd_curve,
    dataset="digits",
    status="finished",
    acc_d=0.6,
    evals=None,
    diag=None,
):
    """A run directory as train.py leaves it. ``evals``: more eval/* values, logged with each FCD;
    ``diag``: {step: {"G/fc1/act_std": value, ...}} diagnostic records (default: one at step 0)."""
    run_dir = root / f"{arm}-{seed}"
    run_dir.mkdir(parents=True)
    summary = {"status": status, "arm": arm, "seed": seed, "model": "mlp", "dataset": dataset}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lines = [
        {
            "step": 100 * (i + 1),
            "train/loss_D": 0.6,
            "train/loss_G": 0.9,
            "train/acc_D": acc_d,
            "train/acc_G": 0.3,
            **(
                {"eval/fcd": v, "eval/classifier": "digits-v1-abc", **(evals or {})}
                if v is not None
                else {}
            ),
        }
        for i, v in enumerate(fcd_curve)
    ]
    diag = {0: {"G/fc1/act_std": 1.0}} if diag is None else diag
    lines[:0] = [
        {"step": step, **{f"diag/{k}": v for k, v in d.items()}} for step, d in diag.items()
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return run_dir


@pytest.fixture
def ablation(tmp_path):
    for seed, v in enumerate([10, 11, 12]):
        make_run(tmp_path / "sweep", "he_xavier", seed, [30, 14, v])
    for seed, v in enumerate([20, 21, 22]):
        make_run(tmp_path / "sweep", "default", seed, [30, 25, v])
    make_run(tmp_path / "sweep", "default", 9, [float("nan")] * 2, status="diverged")
    (tmp_path / "sweep" / "crashed").mkdir()
    (tmp_path / "sweep" / "crashed" / "metrics.jsonl").write_text("")  # no summary: incomplete
    return tmp_path / "sweep"


def test_mean_ci_and_tests_match_hand_computed_values():
    mean, half, n = report_stats.mean_ci([10, 11, 12])
    assert (mean, n) == (11, 3) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    c = report_stats.compare([10, 11, 12], [20, 21, 22])
    assert c["t"] == pytest.approx(-10 / math.sqrt(2 / 3))  # Welch t = -12.247
    assert c["p_welch"] == pytest.approx(2.55e-4, rel=0.01)  # df = 4
    assert c["p_mannwhitney"] == pytest.approx(0.1)  # exact: 2 of 20 orderings as extreme
    assert c["hedges_g"] == pytest.approx(-10 * (1 - 3 / 15))  # d = -10, small-sample factor 0.8


# ln 10 is a collapsed run's class_kl: two arms of 12 collapsed seeds, as in the atlas.
@pytest.mark.parametrize(("value", "n"), [(0.1, 3), (math.log(10), 12)])
def test_arms_without_spread_are_untested_even_where_their_variance_rounds_above_zero(value, n):
    assert np.var([value] * n) > 0  # rounding residue: the guard must not ask the variance
    for other in ([value * 2] * n, [value] * n):
        c = report_stats.compare([value] * n, other)
        assert all(math.isnan(v) for v in c.values()), c  # not a test with p or g


def test_arms_with_equal_means_are_said_to_be_equal_not_one_lower(tmp_path):
    for seed, v in enumerate([10, 12, 14]):
        make_run(tmp_path, "a", seed, [30, 20, v])
    for seed, v in enumerate([11, 12, 13]):
        make_run(tmp_path, "b", seed, [30, 20, v])
    runs, _ = report.load_runs([tmp_path])
    text = report.write_report(runs, [], tmp_path, None)
    assert "a and b have the same mean final eval/fcd, 12.00 (Welch p = 1," in text
    assert "has the lower final eval/fcd" not in text


def test_report_on_a_known_ablation(ablation, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(ablation), "--out", str(out), "--fcd-threshold", "15"]) == 0
    text = (out / "report.md").read_text()
    assert "| default | 3 | 1 | 21.00 ± 2.48 | 21.00 ± 2.48 | – (0/3 reached) |" in text
    assert "| he_xavier | 3 | 0 | 11.00 ± 2.48 | 11.00 ± 2.48 | 200 ± 0 (3/3 reached) |" in text
    verdict = "**he_xavier** is better than default on final eval/fcd (11.00 vs 21.00; Welch p = "
    assert verdict + "0.000255" in text
    assert "Skipped 1 run(s), unfinished or unreadable" in text
    # acc_D is the same in every run: no test is possible
    assert "| default | he_xavier | +0.000 | – (no variance) | – | – | – | – | – |" in text
    assert "Holm p = 0.000255" in text  # one test with spread: Holm changes nothing
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"finished", "diverged"}
    assert (out / "curves.png").stat().st_size > 20_000


def test_not_significant_and_no_quality_metric_are_said_plainly(tmp_path):
    for seed in range(3):
        make_run(tmp_path, "a", seed, [None] * 3, acc_d=0.5 + 0.01 * seed)  # no eval/fcd logged
        make_run(tmp_path, "b", seed, [None] * 3, acc_d=0.505 + 0.01 * seed)
    runs, _ = report.load_runs([tmp_path])
    text = report.write_report(runs, [], tmp_path, None)
    assert "a and b do not differ significantly in final train/acc_D" in text
    assert "add a quality metric (eval/fcd)" in text


def with_config(run_dir, text):
    """Gives a run directory the .hydra/config.yaml a Hydra job leaves."""
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(text)
    return run_dir


def test_runs_of_different_datasets_are_reported_apart(tmp_path):
    for dataset, shift in (("digits", 0.0), ("mnist", 100.0)):
        for seed in range(3):
            make_run(tmp_path / "runs" / dataset, "default", seed, [shift + 20 + seed], dataset)
            make_run(tmp_path / "runs" / dataset, "he_xavier", seed, [shift + 10 + seed], dataset)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    for dataset in ("digits", "mnist"):  # one report per setting, three seeds per arm each
        text = (tmp_path / "out" / f"dataset.name={dataset}" / "report.md").read_text()
        assert "| default | 3 | 0 |" in text and "| he_xavier | 3 | 0 |" in text
    atlas = (tmp_path / "out" / "report.md").read_text()
    assert atlas.startswith("# Init atlas: 2 settings, 12 runs")
    assert "| dataset.name=digits | he_xavier − default | 3 vs 3 | **-10.00** [" in atlas
    assert "| dataset.name=mnist | he_xavier − default | 3 vs 3 | **-10.00** [" in atlas


def test_settings_come_from_the_resolved_config_minus_seed_logging_and_paths(tmp_path):
    lr = "${oc.select:trainer.default_lr.${trainer.optimizer},${trainer.default_lr.adam}}"
    for seed, optimizer in enumerate(["adam", "adam", "sgd", "sgd"]):
        with_config(
            make_run(tmp_path, "default", seed, [1.0 + seed]),
            f"seed: {seed}\ndata_dir: /data/{seed}\nlogger: {{mode: m{seed}}}\n"
            f"trainer:\n  threads: {seed}\n  optimizer: {optimizer}\n  lr: '{lr}'\n"
            "  default_lr: {adam: 0.0002, sgd: 0.05}\n",
        )
    runs, _ = report.load_runs([tmp_path])
    assert {k: v for k, v in runs[2].setting.items() if k.startswith("trainer")} == {
        "trainer.lr": "0.05",  # the interpolation resolved, default_lr left out
        "trainer.optimizer": '"sgd"',
    }
    settings = report.by_setting(runs)
    assert list(settings) == [
        "trainer.lr=0.0002, trainer.optimizer=adam",
        "trainer.lr=0.05, trainer.optimizer=sgd",
    ]
    assert [[r.seed for r in group] for group in settings.values()] == [[0, 1], [2, 3]]


def test_runs_started_with_a_named_setting_are_labelled_by_it(tmp_path):
    for seed in range(2):
        for name, norm in (("mlp", "batch"), ("mlp_g_none", "none")):
            run_dir = with_config(
                make_run(tmp_path / name, "default", seed, [1.0]), f"model: {{g_norm: {norm}}}\n"
            )
            summary = json.loads((run_dir / "summary.json").read_text())
            summary["overrides"] = [f"setting={name}", f"seed={seed}"]
            (run_dir / "summary.json").write_text(json.dumps(summary))
    runs, _ = report.load_runs([tmp_path])
    settings = report.by_setting(runs)
    assert {k: len(v) for k, v in settings.items()} == {"mlp": 2, "mlp_g_none": 2}
    assert grouping.differences([tuple(g[0].setting.items()) for g in settings.values()]) == [
        "model.g_norm=batch",
        "model.g_norm=none",
    ]


# --- statistics: Holm, bootstrap, Welch's interval ------------------------------------------


def test_holm_matches_hand_computed_values():
    # sorted 0.005, 0.01, 0.03, 0.04 → × 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → monotone: 0.06
    assert report_stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = report_stats.holm([0.5, math.nan, 0.01])  # an untested row is not part of the family
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)
    assert report_stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1


def test_bootstrap_interval_is_seeded_and_agrees_with_t_for_many_seeds():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    first = report_stats.bootstrap_ci(a, b)
    assert first == report_stats.bootstrap_ci(a, b)  # deterministic: the report does not change
    low, high = first
    assert low < a.mean() - b.mean() < high
    t = report_stats.compare(a, b)
    assert low == pytest.approx(t["ci_low"], abs=0.03) and high == pytest.approx(
        t["ci_high"], abs=0.03
    )
    assert report_stats.bootstrap_ci([3.0, 3.0], [1.0, 1.0]) == (2.0, 2.0)  # no spread: the point


def test_welch_interval_matches_scipy():
    from scipy import stats

    a, b = [10.0, 11.5, 12.0, 9.0], [20.0, 21.0, 25.0]
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    c = report_stats.compare(a, b)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((expected.low, expected.high))


# --- the tables: Holm across the whole table, bootstrap beside t, coverage, KCD -------------


@pytest.fixture
def three_arms(tmp_path):
    """Three arms × 3 seeds with spread in FCD, KCD, class coverage, acc_D and D's outputs."""
    finals = {"a": [10, 12, 14], "b": [20, 23, 21], "c": [11, 15, 13]}
    for arm, values in finals.items():
        for seed, v in enumerate(values):
            evals = {
                "eval/kcd": v / 10,
                "eval/kcd_std": 0.1,
                "eval/class_kl": 0.01 * v,
                "eval/classes_covered": 10 - seed,
                "eval/confidence": 0.9,
            }
            lines = make_run(tmp_path, arm, seed, [40, v], acc_d=0.5 + v / 100, evals=evals)
            extra = {"step": 200, "train/D_x": 0.5 + v / 100, "train/D_G_z": 0.5 - seed / 100}
            with (lines / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(extra) + "\n")
    return tmp_path


def test_pairwise_p_values_are_holm_adjusted_over_the_whole_table(three_arms):
    runs, _ = report.load_runs([three_arms])
    text = report.write_report(runs, [], three_arms, None)
    rows = [line for line in text.splitlines() if line.startswith("| ") and " p " not in line]
    tested = [r.split(" | ") for r in rows if r.count("[") == 2]  # rows with both intervals
    assert len(tested) == 3 * 4  # 3 pairs × (fcd, kcd, class_kl, acc_D); the rest: no spread
    raw = [float(cells[5]) for cells in tested]
    assert [float(cells[6]) for cells in tested] == pytest.approx(report_stats.holm(raw), rel=1e-2)
    assert "over all 12 tests below" in text
    assert "| a | b | -9.333 | [" in text  # mean difference, then the t and bootstrap intervals
    # Verdicts on both quality metrics, judged on Holm's p.
    assert "on final eval/fcd" in text and "final eval/kcd" in text and "Holm p = " in text


def test_class_coverage_kcd_and_d_outputs_are_in_the_tables(three_arms):
    assert report.main([str(three_arms), "--out", str(three_arms / "out")]) == 0
    text = (three_arms / "out" / "report.md").read_text()
    assert "| arm | n | diverged | final FCD | best FCD | final KCD | final acc_D |" in text
    assert "| a | 3 | 0 | 12.00 ± 4.97 | 12.00 ± 4.97 | 1.20 ± 0.50 | 0.620 ± 0.050 |" in text
    header = "| arm | n | final class_kl | final classes covered | final D(x) | final D(G(z)) |"
    assert header in text
    # 9.00 ± 2.48 would reach 11.48 of 10 classes: clipped (issue 22).
    assert "| b | 3 | 0.21 ± 0.04 | 9.00 [6.52, 10.00] | 0.713 ± 0.038 | 0.490 ± 0.025 |" in text
    rows = list(csv.DictReader((three_arms / "out" / "summary.csv").open()))
    columns = list(rows[0])
    assert columns[:12] == [
        "arm", "seed", "model", "dataset", "status", "diverged_step", "path",
        "final train/loss_D", "final train/loss_G", "final train/acc_D", "final train/acc_G",
        "final eval/fcd",
    ]  # fmt: skip
    assert {"final eval/kcd", "final eval/class_kl", "final train/D_G_z"} <= set(columns)
    assert rows[0]["final eval/kcd"] == "1.0"


def test_a_step_logged_twice_keeps_its_last_value(tmp_path):
    # A resume may re-make lines of the step it continued from; runs must still align by step.
    for seed in range(2):
        run_dir = make_run(tmp_path, "default", seed, [30.0, 20.0])
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 200, "train/loss_D": 0.6, "eval/fcd": 10.0 + seed}) + "\n")
    runs, _ = report.load_runs([tmp_path])
    steps, values = runs[0].curves["eval/fcd"]
    assert list(steps) == [100, 200] and list(values) == [30.0, 10.0]
    assert "| default | 2 | 0 | 10.50 ± 6.35 |" in report.write_report(runs, [], tmp_path, None)


def test_runs_of_different_optimizers_or_resolved_precisions_are_not_averaged(tmp_path):
    for i, (optimizer, precision) in enumerate(
        [("adam", "fp32"), ("sgd", "fp32"), ("adam", "bf16")]
    ):
        run_dir = tmp_path / "runs" / str(i)
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text(f"trainer:\n  optimizer: {optimizer}\n")
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "status": "finished",
                    "arm": "default",
                    "seed": i,
                    "model": "mlp",
                    "dataset": "digits",
                    "precision": precision,
                }
            )
        )
        (run_dir / "metrics.jsonl").write_text('{"step": 5, "train/loss_D": 0.5}\n')
    runs, _ = report.load_runs([tmp_path / "runs"])
    assert list(report.by_setting(runs)) == [
        "precision (resolved)=bf16, trainer.optimizer=adam",
        "precision (resolved)=fp32, trainer.optimizer=adam",
        "precision (resolved)=fp32, trainer.optimizer=sgd",
    ]


@pytest.mark.parametrize("threshold", ["-5", "0", "nan", "inf", "low"])
def test_an_fcd_threshold_that_no_run_could_reach_is_refused(tmp_path, capsys, threshold):
    with pytest.raises(SystemExit) as stopped:
        report.main([str(tmp_path), "--fcd-threshold", threshold])
    assert stopped.value.code == 2 and "--fcd-threshold" in capsys.readouterr().err


def test_a_whole_number_read_as_int_or_float_is_one_setting(tmp_path):
    # trainer.momentum=0 on the command line is saved as 0; its default as 0.0.
    for seed, momentum in enumerate(["0", "0.0", "0", "0.0"]):
        with_config(
            make_run(tmp_path, "default", seed, [1.0]), f"trainer: {{momentum: {momentum}}}\n"
        )
    runs, _ = report.load_runs([tmp_path])
    assert [len(group) for group in report.by_setting(runs).values()] == [4]


def test_one_interpolation_that_cannot_resolve_leaves_the_others_resolved(tmp_path):
    # ${hydra:…} has no meaning outside its run: data_dir (no setting) stays as written.
    for seed, lr in enumerate(["'${trainer.default_lr}'", "0.0002"]):
        config = f"trainer: {{default_lr: 0.0002, lr: {lr}}}\n"
        with_config(
            make_run(tmp_path, "default", seed, [1.0]),
            "data_dir: ${hydra:runtime.cwd}/data\n" + config,
        )
    runs, _ = report.load_runs([tmp_path])
    assert runs[0].setting["trainer.lr"] == runs[1].setting["trainer.lr"] == "0.0002"
    assert [len(group) for group in report.by_setting(runs).values()] == [2]


def test_settings_that_read_alike_keep_labels_of_their_own(tmp_path):
    # steps "100" (a string) and 100: two settings, never pooled under one label.
    for seed, steps in enumerate(["'100'", "100"]):
        with_config(make_run(tmp_path, "default", seed, [1.0]), f"trainer: {{steps: {steps}}}\n")
    runs, _ = report.load_runs([tmp_path])
    assert list(report.by_setting(runs)) == ['trainer.steps="100"', "trainer.steps=100"]


def test_a_copy_of_a_run_counts_once(tmp_path):
    import shutil

    make_run(tmp_path / "sweep", "default", 0, [1.0])
    shutil.copytree(tmp_path / "sweep", tmp_path / "backup")
    runs, skipped = report.load_runs([tmp_path / "sweep", tmp_path / "backup"])
    assert len(runs) == 1 and "same setting, arm and seed as" in skipped[0].reason


def test_the_report_names_the_files_it_wrote_not_an_earlier_report_s(tmp_path, capsys):
    make_run(tmp_path / "sweep", "default", 0, [1.0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "atlas.csv").write_text("an earlier atlas's\n")
    assert report.main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    (wrote,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert "report.md" in wrote and "atlas.csv" not in wrote


def test_a_value_that_some_runs_lack_says_how_many_it_comes_from(tmp_path):
    for seed, final in enumerate([10.0, 12.0, float("nan")]):
        make_run(tmp_path / "sweep", "default", seed, [30.0, final])
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| default | 3 | 0 | 11.00 [0.00, 23.71] (2 of 3) | 17.33 [0.00, 44.70] |" in text


def test_a_run_without_its_metrics_is_listed_as_skipped(tmp_path):
    make_run(tmp_path, "default", 0, [1.0])
    (make_run(tmp_path, "default", 1, [1.0]) / "metrics.jsonl").unlink()
    runs, skipped = report.load_runs([tmp_path])
    assert len(runs) == 1 and [s.reason for s in skipped] == ["finished, no metrics.jsonl"]
