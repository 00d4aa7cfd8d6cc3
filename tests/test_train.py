"""A short training run on digits: what reaches W&B, metrics.jsonl and the run directory."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_config, wandb_records
from gan.run import run
from gan.trainer import METRIC_KEYS

SHORT = [
    "dataset=digits",
    "trainer.steps=60",
    "trainer.log_every=20",
    "trainer.sample_every=30",
    "trainer.diag_every=30",
]


@pytest.mark.slow
def test_short_run_logs_the_public_metrics_to_wandb_and_files(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    out = tmp_path / "run"
    summary = run(run_config(["init=he_xavier", *SHORT], out), progress=False)
    assert summary["status"] == "finished" and summary["steps"] == 60

    records = wandb_records(wandb_dir)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    metric_rows = [h for h in history if "train/loss_D" in h]
    hist_steps = [h["_step"] for h in history if any(k.startswith("hist/G/fc1/act") for k in h)]
    assert hist_steps == [0, 59]  # activation histograms at the start and the end
    assert [h["_step"] for h in metric_rows] == [20, 40, 60]
    for row in metric_rows:
        assert set(METRIC_KEYS) <= set(row)
        assert all(math.isfinite(row[k]) for k in METRIC_KEYS)
        assert all(0 <= row[k] <= 1 for k in METRIC_KEYS if "/acc_" in k or "/D_" in k)
    media = {
        key.split(".")[0] for h in history for key in h
    }  # media keys are flattened: samples._type
    assert {"samples", "init/report"} <= media
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    assert run_record["display_name"] == "he_xavier-mlp-digits-s0"
    # The group: its setting's overrides, then its arm.
    assert run_record["run_group"] == "dataset=digits,trainer.steps=60/he_xavier"
    assert run_record["job_type"] == "train"
    assert run_record["config"]["update"]["trainer"]["steps"] == 60  # the full resolved config
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]

    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "train/loss_D" in line]
    assert [line["step"] for line in train_lines] == [20, 40, 60]
    assert train_lines[-1] == {"step": 60, **{k: metric_rows[-1][k] for k in METRIC_KEYS}}
    assert [line["step"] for line in lines if "diag/G/fc1/act_std" in line] == [0, 30, 59]
    report = json.loads((out / "init_report.json").read_text())
    fields = {
        "network",
        "layer",
        "type",
        "shape",
        "activation",
        "scheme",
        "gain",
        "expected_std",
        "measured_std",
    }
    assert all(fields <= set(r) for r in report)
    assert {r["network"] for r in report} == {"generator", "discriminator"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step_0000030.png",
        "step_0000060.png",
    ]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_same_seed_gives_identical_curves(tmp_path):
    curves = []
    for name in ("a", "b"):
        run(
            run_config(
                ["init=he_xavier", "logger.mode=disabled", "seed=5", *SHORT], tmp_path / name
            ),
            progress=False,
        )
        curves.append((tmp_path / name / "metrics.jsonl").read_text())
    assert curves[0] == curves[1]
    run(
        run_config(["init=he_xavier", "logger.mode=disabled", "seed=6", *SHORT], tmp_path / "c"),
        progress=False,
    )
    assert (tmp_path / "c" / "metrics.jsonl").read_text() != curves[0]
