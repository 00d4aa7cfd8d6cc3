"""`python train.py …` end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import conftest
from conftest import ROOT, wandb_records

pytestmark = pytest.mark.slow
QUICK = ["trainer.steps=20", "trainer.log_every=10", "trainer.sample_every=10"]


def train(*args: str, timeout: float = 180, data_dir=None) -> subprocess.CompletedProcess:
    data_dir = data_dir or conftest.DATA_DIR
    return subprocess.run(
        [sys.executable, "train.py", *args, f"data_dir={data_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_train_he_xavier_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = train("init=he_xavier", *QUICK, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "kaiming_normal" in proc.stdout and "xavier_normal" in proc.stdout  # the printed table
    assert "W&B offline (WANDB_MODE=offline): run saved in" in proc.stdout
    assert "done he_xavier-mlp-digits-s0: 20 steps" in proc.stdout
    for name in ("metrics.jsonl", "init_report.json", "summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_ablation_preset_makes_one_finished_wandb_run_per_job_and_a_report(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    sweep = tmp_path / "sweep"
    proc = train("-m", "experiment=init_ablation", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted((s["arm"], s["seed"]) for s in summaries) == [
        ("default", 0),
        ("default", 1),
        ("he_xavier", 0),
        ("he_xavier", 1),
    ]
    assert all(s["status"] == "finished" for s in summaries)
    assert len(list(sweep.glob("*/metrics.jsonl"))) == 4
    assert len({s["wandb"]["id"] for s in summaries}) == 4
    sweep_tags = set()
    for summary in summaries:
        records = wandb_records(wandb_dir / "wandb" / summary["wandb"]["dir"].rsplit("/", 1)[-1])
        assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_group"] == f"trainer.steps=20/{summary['arm']}"  # its setting, its arm
        assert "init_ablation" in run["tags"]
        sweep_tags |= {t for t in run["tags"] if t.startswith("sweep:")}
    assert len(sweep_tags) == 1  # one dashboard filter shows the whole ablation

    from gan import report

    assert report.main([str(sweep)]) == 0
    text = (sweep / "report" / "report.md").read_text()
    assert "| default | 2 | 0 |" in text and "| he_xavier | 2 | 0 |" in text


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1"],
        ["hydra/launcher=submitit_local"],
    ],
)
def test_parallel_launchers_run_every_job(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    proc = train(
        "-m",
        *launcher,
        "init=default,he_xavier",
        "logger.mode=disabled",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["arm"] for s in summaries) == ["default", "he_xavier"]
    assert all(s["status"] == "finished" for s in summaries)


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["init=he_xavir"], "Could not find 'init/he_xavir'\n\nAvailable options in 'init':", 1),
        (
            ["trainer.stpes=5"],
            "hint: trainer.stpes is not a key of this configuration; did you mean trainer.steps?",
            1,
        ),
        (["trainer.batch_size=0"], "error: trainer.batch_size must be > 0, got 0", 2),
        (["logger.mode=online"], "error: logger.mode=online but no W&B credentials were found", 2),
        (
            ["model=dcgan", "model.generator_widths=[8,8,8,8]"],
            "error: model=dcgan: the generator halves",
            2,
        ),
    ],
)
def test_bad_input_is_a_clear_message_and_writes_no_result(args, message, code, tmp_path):
    out, data_dir = tmp_path / "run", tmp_path / "data"
    proc = train(*args, f"hydra.run.dir={out}", timeout=180, data_dir=data_dir)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.jsonl").exists() and not (out / "summary.json").exists()
    # refused before any data is prepared: no feature classifier trained for a doomed run
    assert not (data_dir / "classifiers").exists()


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (
            ["trainer.stpes=5"],
            "trainer.stpes is not a key of this configuration; did you mean trainer.steps?",
        ),
        (
            ["-m", "init=xavier,he_xavier", "init.std=0.1"],
            "init.std is not a key of this configuration; "
            "this init scheme's parameters: dist, gain",
        ),
        (["-m", "trainer.lr=1e-3,2e-3", "seed=1"], None),  # a sweep that failed otherwise
        (["+trainer.step=5"], None),  # an added key: train.py's own check refuses it by name
    ],
)
def test_a_key_that_names_nothing_gets_a_hint_after_hydra_s_refusal(argv, hint):
    from gan.key_hint import unknown_key_hint

    assert unknown_key_hint(argv) == (hint and f"hint: {hint}")


def test_a_log_line_during_a_progress_bar_gets_its_own_line():
    # The console handlers (conf/config.yaml, console.setup) clear the bar before a line and
    # redraw it after; a plain StreamHandler would append the line to the bar's text.
    import io
    import logging

    from tqdm import tqdm

    from gan.console import ConsoleHandler

    terminal = io.StringIO()  # the bar and the line on one stream, as on a terminal
    bar = tqdm(total=10, desc="train", file=terminal)
    logger = logging.getLogger("gan.test_console")
    logger.addHandler(ConsoleHandler(terminal))
    try:
        logger.warning("warning: something to say")
    finally:
        logger.handlers.clear()
        bar.close()
    lines = [line.rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n")]
    assert "warning: something to say" in lines, terminal.getvalue()
