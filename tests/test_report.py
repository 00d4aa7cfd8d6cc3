"""The report's statistics on synthetic runs with a known answer."""

from __future__ import annotations

import csv
import json
import math

import pytest

from gan import report


def make_run(root, arm, seed, fcd_curve, dataset="digits", status="finished", acc_d=0.6):
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
            **({"eval/fcd": v} if v is not None else {}),
        }
        for i, v in enumerate(fcd_curve)
    ]
    lines.insert(0, {"step": 0, "diag/G/fc1/act_std": 1.0})  # other records are ignored
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
    mean, half, n = report.mean_ci([10, 11, 12])
    assert (mean, n) == (11, 3) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    c = report.compare([10, 11, 12], [20, 21, 22])
    assert c["t"] == pytest.approx(-10 / math.sqrt(2 / 3))  # Welch t = -12.247
    assert c["p_welch"] == pytest.approx(2.55e-4, rel=0.01)  # df = 4
    assert c["p_mannwhitney"] == pytest.approx(0.1)  # exact: 2 of 20 orderings as extreme
    assert c["hedges_g"] == pytest.approx(-10 * (1 - 3 / 15))  # d = -10, small-sample factor 0.8


def test_report_on_a_known_ablation(ablation, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(ablation), "--out", str(out), "--fcd-threshold", "15"]) == 0
    text = (out / "report.md").read_text()
    assert "| default | 3 | 1 | 21.00 ± 2.48 | 21.00 ± 2.48 | – (0/3 reached) |" in text
    assert "| he_xavier | 3 | 0 | 11.00 ± 2.48 | 11.00 ± 2.48 | 200 ± 0 (3/3 reached) |" in text
    verdict = "**he_xavier** is better than default on final eval/fcd (11.00 vs 21.00; Welch p = "
    assert verdict + "0.000255" in text
    assert "Skipped 1 incomplete run(s)" in text
    # acc_D is the same in every run: no test is possible
    assert "| default | he_xavier | +0.000 | – (no variance) | – | – |" in text
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


def test_runs_of_different_datasets_are_refused(tmp_path):
    make_run(tmp_path, "default", 0, [1.0])
    make_run(tmp_path, "he_xavier", 0, [1.0], dataset="mnist")
    with pytest.raises(report.UserError, match="different models/datasets cannot be averaged"):
        report.load_runs([tmp_path])
    assert report.main([str(tmp_path)]) == 2


def test_runs_with_different_training_settings_are_refused(tmp_path):
    for seed, lr in enumerate([0.0002, 0.001]):
        run_dir = make_run(tmp_path, "default", seed, [1.0])
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(f"trainer:\n  steps: 100\n  lr: {lr}\n")
    with pytest.raises(report.UserError, match=r"trainer.lr takes 0.0002, 0.001"):
        report.load_runs([tmp_path])
