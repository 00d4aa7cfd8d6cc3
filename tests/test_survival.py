"""Runs that survive: divergence as a result, exact resume, preemption, atomic checkpoints,
bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import conftest
from conftest import ROOT, data_source, run_config
from gan import checkpoint, data, files
from gan.errors import UserError
from gan.run import run

FAST = [
    "trainer.eval_every=0",
    "trainer.log_every=10",
    "trainer.sample_every=1000",
    "trainer.diag_every=15",
]


def train_lines(metrics: Path) -> list[tuple[int, dict]]:
    """The ``train/`` lines of a run's metrics.jsonl as (step, line); a last line cut by a
    process stopped while it wrote is left out."""
    found = []
    for text in metrics.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if any(key.startswith("train/") for key in line):
            found.append((line["step"], line))
    return found


def train(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args, f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def test_divergence_is_a_result_not_a_crash(tmp_path):
    summary = run(
        run_config(
            [
                "init=normal_large",
                "trainer.lr=1e30",
                "trainer.steps=100",
                "logger.mode=disabled",
                *FAST,
            ],
            tmp_path,
        ),
        progress=False,
    )
    assert summary["status"] == "diverged" and summary["diverged"] is True
    assert (
        1 <= summary["diverged_step"] <= 10 and summary["steps"] == 10
    )  # stopped at the first window
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1] == {"step": 10, "diverged": True, "diverged_step": summary["diverged_step"]}
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_a_diverging_job_does_not_stop_the_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train(
        "-m",
        "trainer.lr=1e30,2e-4",
        "init=normal_large",
        "trainer.steps=20",
        "logger.mode=disabled",
        *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json"))
    assert statuses == ["diverged", "finished"]


@pytest.mark.slow
def test_resume_continues_bit_identically_and_in_the_same_wandb_run(tmp_path):
    common = [
        "init=he_xavier",
        "trainer.log_every=10",
        "trainer.diag_every=15",
        "trainer.eval_every=20",
        "trainer.ckpt_every=20",
        "trainer.sample_every=20",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(*common, "trainer.steps=40", f"hydra.run.dir={straight}").returncode == 0
    assert train(*common, "trainer.steps=20", f"hydra.run.dir={split}").returncode == 0
    first_id = json.loads((split / "summary.json").read_text())["wandb"]["id"]
    proc = train(f"resume={split}", "trainer.steps=40", f"hydra.run.dir={tmp_path / 'resume-call'}")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 20" in proc.stdout
    # Identical line for line, but for the diagnostics the first part recorded at its own end
    # (step 19): every run records its end state.
    split_lines = (split / "metrics.jsonl").read_text().splitlines(keepends=True)
    end_of_part = [x for x in split_lines if x.startswith('{"step": 19, "diag/')]
    assert len(end_of_part) == 1
    split_lines.remove(end_of_part[0])
    assert "".join(split_lines) == (straight / "metrics.jsonl").read_text()
    a, b = (checkpoint.load(d)["trainer"] for d in (straight, split))
    assert a["step"] == b["step"] == 40
    for net in ("generator", "discriminator"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    resumed = json.loads((split / "summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["wandb"]["id"] == first_id


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_then_resume_finishes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "init=he_xavier",
            "trainer.steps=100000",
            "trainer.threads=1",
            *FAST,
            f"data_dir={conftest.DATA_DIR}",
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (
        (out / "metrics.jsonl").is_file() and "train/" in (out / "metrics.jsonl").read_text()
    ):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never trained"
        time.sleep(0.2)
    # Stopped while the signal comes: the last step it logged then bounds where it must stop.
    proc.send_signal(signal.SIGSTOP)
    try:
        last = max(step for step, _ in train_lines(out / "metrics.jsonl"))
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "preempted: SIGTERM at step" in stderr and f"resume={out}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "preempted"
    stopped_at = summary["steps"]
    assert last <= stopped_at <= last + 10  # at the step in progress (log_every=10): promptly
    assert checkpoint.load(out)["trainer"]["step"] == stopped_at
    done = train(
        f"resume={out}",
        f"trainer.steps={stopped_at + 30}",
        f"hydra.run.dir={tmp_path / 'resume-call'}",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert checkpoint.load(out)["trainer"]["step"] == stopped_at + 30


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_readable(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"trainer": {"step": 1}})

    class HalfWrite:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda *a, **k: HalfWrite(real_fdopen(*a, **k)))
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, {"trainer": {"step": 2}, "payload": torch.zeros(100_000)})
    monkeypatch.undo()
    assert checkpoint.load(tmp_path)["trainer"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_a_failing_checkpoint_does_not_stop_training(tmp_path, monkeypatch, caplog):
    calls = []
    real_save = checkpoint.save

    def flaky(run_dir, blob):
        calls.append(blob["trainer"]["step"])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(run_dir, blob)

    monkeypatch.setattr(checkpoint, "save", flaky)
    summary = run(
        run_config(
            ["trainer.steps=30", "trainer.ckpt_every=10", "logger.mode=disabled", *FAST], tmp_path
        ),
        progress=False,
    )
    assert summary["status"] == "finished" and calls == [10, 20, 30]
    assert "checkpoint at step 20 not written" in caplog.text  # a logged warning
    assert checkpoint.load(tmp_path)["trainer"]["step"] == 30


@pytest.mark.slow
def test_resume_refuses_a_corrupt_checkpoint_and_keeps_it(tmp_path):
    out = tmp_path / "run"
    assert train("trainer.steps=10", *FAST, f"hydra.run.dir={out}").returncode == 0
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    damaged = ckpt.read_bytes()
    proc = train(f"resume={out}", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'again'}")
    assert proc.returncode == 2 and "is corrupt and cannot be read" in proc.stderr
    assert "Traceback" not in proc.stderr and ckpt.read_bytes() == damaged


@pytest.mark.slow
def test_resume_refuses_a_different_experiment(tmp_path):
    out = tmp_path / "run"
    assert (
        train("init=he_xavier", "trainer.steps=10", *FAST, f"hydra.run.dir={out}").returncode == 0
    )
    proc = train(
        f"resume={out}", "init=default", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'again'}"
    )
    assert proc.returncode == 2 and "init differ(s) from the checkpoint's" in proc.stderr


def test_data_dir_problems_are_clear(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist, nor does its parent"):
        data.ensure_dir(tmp_path / "no" / "such" / "dir")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is not a directory"):
        data.ensure_dir(tmp_path / "file")
    assert data.ensure_dir(tmp_path / "new").is_dir()  # a missing leaf is created
    monkeypatch.setattr(
        os, "access", lambda *a: False
    )  # tests run as root, which chmod cannot stop
    with pytest.raises(UserError, match="is not writable"):
        data.ensure_dir(tmp_path / "new")


def test_a_truncated_dataset_file_is_named(tmp_path):
    from test_data import write_idx

    offline = tmp_path / "debian"
    offline.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(offline / f"{prefix}-images-idx3-ubyte.gz", torch.zeros(5, 28, 28), 0x803)
        write_idx(offline / f"{prefix}-labels-idx1-ubyte.gz", torch.zeros(5), 0x801)
    data.load(data_source("fashion_mnist", tmp_path / "data", offline_dir=offline), train=True)
    images = tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"{images} is truncated or corrupted .*delete it"):
        data.load(data_source("fashion_mnist", tmp_path / "data", offline_dir=offline), train=True)


@pytest.mark.slow
def test_an_override_pattern_matching_no_layer_is_refused_by_the_cli(tmp_path):
    proc = train(
        "init=he_xavier", "+init.generator.overrides={fc9: zeros}", f"hydra.run.dir={tmp_path}"
    )
    assert (
        proc.returncode == 2
        and "override pattern(s) ['fc9'] match no layer of the generator" in proc.stderr
    )


def test_resuming_cuts_metrics_back_and_reports_the_cut_length(tmp_path):
    import dataclasses

    from gan.config import LoggerConfig, preset
    from gan.tracking import RunIdentity, RunLogger

    section = preset(LoggerConfig, "logger")
    run = RunIdentity(out_dir=tmp_path, name="n", group="g", tags=(), config={})
    with RunLogger(section, run, mode="disabled") as logger:
        logger.log(10, {"a": 1.0})
        offset = logger.metrics_offset()
        logger.log(20, {"a": 2.0})  # written after the checkpoint, before a crash
    resumed = dataclasses.replace(run, metrics_offset=offset)
    with RunLogger(section, resumed, mode="disabled") as logger:
        assert logger.metrics_offset() == offset  # a checkpoint taken now must store the cut length
        logger.log(20, {"a": 3.0})
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 10, "a": 1.0}, {"step": 20, "a": 3.0}]


def test_the_offset_a_checkpoint_stores_is_on_disk(tmp_path, monkeypatch):
    # The checkpoint is fsynced; after a machine crash its offset must not exceed metrics.jsonl.
    from gan import tracking
    from gan.config import LoggerConfig, preset

    run = tracking.RunIdentity(out_dir=tmp_path, name="n", group="g", tags=(), config={})
    with tracking.RunLogger(preset(LoggerConfig, "logger"), run, mode="disabled") as logger:
        logger.log(10, {"a": 1.0})
        synced = []
        monkeypatch.setattr(tracking.os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size))
        offset = logger.metrics_offset()
        monkeypatch.undo()
    assert synced == [offset]  # metrics.jsonl itself, with every byte the offset counts


def test_resume_on_another_device_type_is_refused(tmp_path):
    import dataclasses

    cfg = run_config(["trainer.steps=10", "logger.mode=disabled", *FAST], tmp_path)
    run(cfg, progress=False)
    blob = checkpoint.load(tmp_path)
    blob["trainer"]["device"] = "cuda"
    checkpoint.save(tmp_path, blob)
    resumed = dataclasses.replace(
        cfg, resume=True, trainer=dataclasses.replace(cfg.trainer, steps=20, device="cpu")
    )
    with pytest.raises(UserError, match="the run trained on cuda, this machine would use cpu"):
        run(resumed, progress=False)


def test_resume_refuses_another_resolved_precision(tmp_path):
    common = ["logger.mode=disabled", *FAST]
    summary = run(
        run_config(["trainer.steps=5", "trainer.precision=fp32", *common], tmp_path), progress=False
    )
    assert summary["precision"] == "fp32"
    resume_in_bf16 = ["trainer.steps=10", "trainer.precision=bf16", "resume=x", *common]
    with pytest.raises(
        UserError,
        match="the run trained in fp32, and trainer.precision=bf16 "
        "resolves to bf16 here; resume it with trainer.precision=fp32",
    ):
        run(run_config(resume_in_bf16, tmp_path), progress=False)


def test_resuming_a_run_that_never_checkpointed_says_so_before_its_overrides_are_read(tmp_path):
    from gan.cli import resumed_config

    with pytest.raises(UserError, match="no such run directory"):
        resumed_config(str(tmp_path / "nowhere"), hydra_cfg=None)
    # A job refused as invalid: its overrides would fail again, and are not the point.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- trainer.steps=abc\n")
    with pytest.raises(UserError, match="holds no checkpoint.pt"):
        resumed_config(str(tmp_path), hydra_cfg=None)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_written_whole_follow_the_umask_as_any_file_of_the_run(tmp_path, umask):
    # A shared project folder: summary.json, checkpoints and claims readable as metrics.jsonl is.
    before = os.umask(umask)
    try:
        with files.atomic_file(tmp_path / "summary.json") as f:
            f.write(b"{}")
        assert files.create_whole(tmp_path / ".claim", "{}")
    finally:
        os.umask(before)
    for name in ("summary.json", ".claim"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
