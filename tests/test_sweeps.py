"""Sweeps that never lose a job: a bad value, a diverging arm with W&B on, two launches at once,
an override outside the arm's name, resume that records what it applies, true statuses, valid
files and the last bad inputs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import conftest
from conftest import ROOT, run_config, torch_threads
from gan import faults, files, report, signals, sweep_outcomes
from gan.config import arm_name
from gan.errors import UserError
from gan.run import prepare, run
from gan.runtime import resolve_device
from gan.trainer import GANTrainer

QUICK = [
    "trainer.log_every=5",
    "trainer.sample_every=100",
    "trainer.diag_every=0",
    "trainer.eval_every=0",
    "trainer.ckpt_every=5",
]


def train(*args: str, cwd: Path = ROOT, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"data_dir={conftest.DATA_DIR}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        **popen,
    )


def strict_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed strictly (NaN / Infinity tokens are errors)."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def statuses(sweep: Path) -> dict[str, dict]:
    return {
        d.name.split("_", 1)[0]: json.loads((d / "summary.json").read_text())
        for d in sorted(sweep.iterdir())
        if (d / ".hydra").is_dir()
    }


# --- 1. one invalid value ------------------------------------------------------------------


@pytest.mark.slow
def test_one_invalid_value_does_not_abort_the_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train(
        "-m",
        "trainer.steps=10",
        "trainer.lr=2e-4,-1,1e-3",
        "logger.mode=disabled",
        *QUICK,
        f"hydra.sweep.dir={sweep}",
    )
    jobs = statuses(sweep)
    assert [jobs[n]["status"] for n in "012"] == ["finished", "invalid", "finished"]
    assert "trainer.lr must be > 0" in jobs["1"]["error"]
    assert proc.returncode == 1  # an invalid job fails the sweep, after every job ran
    assert "sweep: 3 jobs: 2 finished, 1 invalid" in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("  invalid   1_")]
    assert "trainer.lr=-1" in line and line.endswith("trainer.lr must be > 0, got -1.0")
    assert "Traceback" not in proc.stderr


DISK_FILLS_AT_STEP_5 = """
import gan.tracking
from gan.errors import UserError

log = gan.tracking.RunLogger.log


def full_disk(self, step, metrics):  # as RunLogger.log says a full disk
    if step >= 5:
        raise UserError(f"{self.out_dir}/metrics.jsonl cannot be written (the disk is full)")
    return log(self, step, metrics)


gan.tracking.RunLogger.log = full_disk
"""


def test_a_job_that_fails_once_training_started_is_failed_not_invalid(tmp_path):
    # Its run records "failed", which the sweep keeps: "invalid" is for input refused before.
    (tmp_path / "patch" / "sitecustomize.py").parent.mkdir()
    (tmp_path / "patch" / "sitecustomize.py").write_text(DISK_FILLS_AT_STEP_5)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "patch")}
    args = ["-m", "seed=0", "trainer.steps=10", "logger.mode=disabled", *QUICK]
    proc = train(*args, f"hydra.sweep.dir={sweep}", env=env)
    assert statuses(sweep)["0"]["status"] == "failed"
    assert "the disk is full" in proc.stderr and "sweep: 1 jobs: 1 failed" in proc.stderr
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_the_sweep_summary_lists_every_job_that_did_not_finish(tmp_path):
    def job(name: str, summary: dict | None) -> None:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))

    job("0_seed=0", {"status": "finished"})
    job("1_seed=1", {"status": "diverged", "diverged_step": 7})
    job("2_seed=2", None)  # killed before writing anything of its own
    (tmp_path / "2_seed=2" / "init_report.json").write_text("{}")
    job("3_seed=3", {"status": "running"})  # killed while running
    job("4_seed=4", None)  # Hydra's files only: its worker ended as Hydra set the job up
    (tmp_path / "4_seed=4" / "train.log").write_text("")
    job("5_seed=5", None)  # ended as Hydra wrote its overrides
    (tmp_path / "5_seed=5" / ".hydra" / "overrides.yaml").write_text("- 'seed=5")
    lines, failed = sweep_outcomes.summarize(sweep_outcomes.job_outcomes(tmp_path))
    assert lines[0] == "sweep: 6 jobs: 1 finished, 1 diverged, 2 failed, 2 not started"
    assert lines[1] == "  diverged  1_seed=1 (seed=1): at step 7"
    assert lines[2].startswith("  failed    2_seed=2 (seed=2): it ended before writing")
    assert "killed while running" in lines[3] and failed
    assert lines[4:] == ["  not started 4_seed=4 (seed=4)", "  not started 5_seed=5 (?)"]
    lines, failed = sweep_outcomes.summarize(sweep_outcomes.job_outcomes(tmp_path)[:2])
    assert not failed  # divergence alone is a result, not a failed sweep


def test_jobs_in_directories_named_without_their_number_are_counted_once(tmp_path):
    # hydra.sweep.subdir=${hydra.job.override_dirname}: matched to the plan by their overrides.
    for seed in (0, 1):
        (tmp_path / f"seed={seed}" / ".hydra").mkdir(parents=True)
        (tmp_path / f"seed={seed}" / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        (tmp_path / f"seed={seed}" / "summary.json").write_text('{"status": "finished"}')
    outcomes = sweep_outcomes.job_outcomes(tmp_path, planned=["seed=0", "seed=1", "seed=2"])
    lines, failed = sweep_outcomes.summarize(outcomes)
    assert lines[0] == "sweep: 3 jobs: 1 not started, 2 finished" and failed
    assert lines[1] == "  not started 2_ (seed=2)"


def test_settling_a_stopped_sweep_discards_jobs_that_never_started(tmp_path):
    def job(name: str, *extra: str) -> Path:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name[0]}\n")
        for file in extra:
            (tmp_path / name / file).write_text("")
        return tmp_path / name

    dead = {"pid": 2**22 + 1, "host": socket.gethostname()}  # above Linux's pid_max: not alive
    hydra_only = job("0_seed=0", "train.log")
    stale_claim = job("1_seed=1")
    (stale_claim / files.CLAIM_FILE).write_text(json.dumps(dead))
    killed = job("2_seed=2", "init_report.json")
    running = job("3_seed=3")
    (running / "summary.json").write_text(json.dumps({"status": "running", "step": 4}))
    # A failed job another launch is running again: its live claim and its files stay.
    retried = job("4_seed=4")
    live = {"pid": os.getpid(), "host": socket.gethostname()}
    (retried / files.CLAIM_FILE).write_text(json.dumps(live))
    (retried / "summary.json").write_text(json.dumps({"status": "failed", "error": "earlier"}))
    sweep_outcomes.settle_killed_jobs(sweep_outcomes.job_outcomes(tmp_path), "killed: SIGTERM")
    assert not hydra_only.exists() and not stale_claim.exists()
    assert json.loads((retried / files.CLAIM_FILE).read_text()) == live
    assert json.loads((retried / "summary.json").read_text())["error"] == "earlier"
    assert json.loads((killed / "summary.json").read_text()) == {
        "status": "failed",
        "error": "killed: SIGTERM",
    }
    assert json.loads((running / "summary.json").read_text()) == {
        "status": "failed",
        "step": 4,
        "error": "killed: SIGTERM",
    }


# --- 2. divergence with W&B on -----------------------------------------------------------


@pytest.mark.slow
def test_divergence_with_wandb_on_is_a_result(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train(
        "-m",
        "init=normal_large",
        "init.std=1e30",
        "seed=0,1",
        "trainer.steps=30",
        "logger.mode=offline",
        "trainer.diag_every=10",
        *QUICK[:2],
        "trainer.eval_every=0",
        "trainer.ckpt_every=10",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = statuses(sweep)
    assert [j["status"] for j in jobs.values()] == ["diverged", "diverged"]
    assert "Traceback" not in proc.stderr
    for job_dir in (d for d in sweep.iterdir() if (d / ".hydra").is_dir()):
        records = strict_lines(job_dir / "metrics.jsonl")  # NaN written as "NaN", strict JSON
        assert records[-1]["diverged"] is True
        assert any(v == "NaN" for r in records for v in r.values())
    assert report.main([str(sweep), "--out", str(tmp_path / "report")]) == 0
    assert "| normal_large,std=1e+30 | 0 | 2 |" in (tmp_path / "report" / "report.md").read_text()


# --- 3. two launches in the same second ----------------------------------------------------


@pytest.mark.slow
def test_two_launches_at_once_get_their_own_run_directories(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "trainer.steps=10",
        "logger.mode=disabled",
        *QUICK,
        f"data_dir={conftest.DATA_DIR}",
    ]
    procs = [
        subprocess.Popen(
            [*command, f"seed={s}"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (0, 1)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    # The two may start in different seconds, so only the seed suffix is compared, not the order.
    assert sorted(run_dir.name.rsplit("_", 1)[-1] for run_dir in runs) == ["s0", "s1"]
    for run_dir in runs:
        assert len(strict_lines(run_dir / "metrics.jsonl")) == 2  # steps 5 and 10, no mixing
        assert not (run_dir / files.CLAIM_FILE).exists()


def test_a_claimed_run_directory_is_refused_and_a_stale_claim_taken_over(tmp_path):
    claim = tmp_path / files.CLAIM_FILE
    claim.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "x"}))
    with (
        pytest.raises(
            UserError,
            match=rf"{tmp_path} is being written by another process "
            rf"\(pid {os.getpid()}",
        ),
        files.claimed(tmp_path),
    ):
        pass
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    claim.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "since": "x"}))
    with files.claimed(tmp_path):
        assert json.loads(claim.read_text())["pid"] == os.getpid()
    assert not claim.exists()


def test_a_claim_is_never_seen_empty_or_cut(tmp_path):
    # Seen empty, a claim would pass for one a killed process left: a second process would take
    # the directory over from its live holder. A reader thread watches claims come and go until
    # it has read 50 of them (on a loaded machine it can miss many).
    import threading

    claim, seen, done = tmp_path / files.CLAIM_FILE, [], threading.Event()

    def read() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(claim.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20000):
            with files.claimed(tmp_path):
                pass
            if len(seen) >= 50:
                break
    finally:
        done.set()
        reader.join()
    assert seen and all(json.loads(text)["pid"] == os.getpid() for text in seen)
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_an_exclusive_file_is_created_whole_once(tmp_path, monkeypatch):
    path = tmp_path / ".stop"
    assert files.create_whole(path, "first") and not files.create_whole(path, "second")
    assert path.read_text() == "first"

    def no_links(src, dst):  # a filesystem without hard links
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    other = tmp_path / ".claim"
    assert files.create_whole(other, "mine") and not files.create_whole(other, "theirs")
    assert other.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".claim", ".stop"]
    umask = os.umask(0o022)
    os.umask(umask)
    for made in (path, other):  # readable by others, as any file of a run
        assert made.stat().st_mode & 0o777 == 0o644 & ~umask


def test_a_slurm_job_requeued_on_another_node_takes_its_own_earlier_claim_over(
    tmp_path, monkeypatch
):
    claim = tmp_path / files.CLAIM_FILE

    def held_on_node_a(job: str, restart: int) -> None:
        holder = {"pid": 4242, "host": "node-a", "since": "x"}
        claim.write_text(json.dumps({**holder, "slurm_job": job, "slurm_restart": restart}))

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    held_on_node_a("77", 0)  # this job before SLURM requeued it: gone
    with files.claimed(tmp_path):
        assert json.loads(claim.read_text())["slurm_restart"] == 1
    for job, restart in (("77", 1), ("78", 0)):  # this run of the job, or another job: refused
        held_on_node_a(job, restart)
        with pytest.raises(files.ClaimRefused, match="pid 4242 on node-a"):
            with files.claimed(tmp_path):
                pass


def test_a_claim_another_user_holds_is_refused_though_it_cannot_be_read(tmp_path, monkeypatch):
    claim = tmp_path / files.CLAIM_FILE
    claim.write_text("{}")
    read_text = Path.read_text

    def unreadable(path, *args, **kwargs):
        if path == claim:
            raise PermissionError(13, "Permission denied")
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(files.ClaimRefused, match="claimed by another user's process"):
        with files.claimed(tmp_path):
            pass
    assert claim.exists()


@pytest.mark.slow
def test_a_second_process_in_a_claimed_run_directory_stops_with_a_message(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / files.CLAIM_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"})
    )
    proc = train("trainer.steps=10", "logger.mode=disabled", *QUICK, f"hydra.run.dir={out}")
    assert proc.returncode == 2 and "is being written by another process" in proc.stderr
    assert not (out / "metrics.jsonl").exists() and "Traceback" not in proc.stderr


# --- 4. init overrides are part of the arm -------------------------------------------------


def test_every_init_override_is_in_the_arm_name(tmp_path):
    assert arm_name("he_xavier", ["+init.generator.bias=zeros"]) == "he_xavier,generator.bias=zeros"
    assert run_config(["init=normal_small", "init.std=0.05"], tmp_path).init.arm == (
        "normal_small,std=0.05"
    )
    cfg = run_config(["init=he_xavier", "+init.generator.overrides={out: zeros}"], tmp_path)
    assert cfg.init.arm == "he_xavier,generator.overrides={out: zeros}"


# --- 5. resume applies what it records -----------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_a_changed_setting_and_records_a_longer_run(tmp_path):
    out = tmp_path / "run"
    assert (
        train("trainer.steps=10", "logger.mode=disabled", *QUICK, f"hydra.run.dir={out}").returncode
        == 0
    )
    proc = train(f"resume={out}", "trainer.lr=0.01")
    assert (
        proc.returncode == 2
        and "this run's trainer.lr differ(s) from the checkpoint's" in proc.stderr
    )
    proc = train(f"resume={out}", "trainer.steps=20")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((out / ".hydra" / "config.yaml").read_text())["trainer"]["steps"] == 20
    assert "trainer.steps=20" in yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text())
    assert json.loads((out / "summary.json").read_text())["steps"] == 20
    assert "resuming from step 10" in (out / "train.log").read_text()  # the run's own log


# --- 6. status is always true --------------------------------------------------------------


def test_a_resumed_run_says_running_while_it_runs(tmp_path, monkeypatch):
    common = ["logger.mode=disabled", *QUICK]
    run(run_config(["trainer.steps=5", *common], tmp_path), progress=False)
    seen = []
    original = GANTrainer.run

    def spy(self, *args, **kwargs):
        seen.append(json.loads((tmp_path / "summary.json").read_text())["status"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GANTrainer, "run", spy)
    summary = run(run_config(["trainer.steps=10", "resume=x", *common], tmp_path), progress=False)
    assert seen == ["running"] and summary["status"] == "finished"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


# --- 7. files stay valid -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "shortened"])
def test_resume_refuses_a_lost_or_cut_metrics_file(tmp_path, damage):
    out = tmp_path / "run"
    assert (
        train("trainer.steps=10", "logger.mode=disabled", *QUICK, f"hydra.run.dir={out}").returncode
        == 0
    )
    metrics = out / "metrics.jsonl"
    if damage == "missing":
        metrics.unlink()
    else:
        metrics.write_bytes(metrics.read_bytes()[:20])
    before = metrics.read_bytes() if metrics.exists() else None
    proc = train(f"resume={out}", "trainer.steps=20")
    assert proc.returncode == 2 and "the run's record was lost or cut" in proc.stderr
    assert (metrics.read_bytes() if metrics.exists() else None) == before  # no NUL padding


def test_the_report_names_a_malformed_line_and_skips_that_run(tmp_path, caplog):
    for seed in (0, 1, 2):
        run_dir = tmp_path / f"run{seed}"
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "status": "finished",
                    "arm": "default",
                    "seed": seed,
                    "model": "mlp",
                    "dataset": "digits",
                }
            )
        )
        (run_dir / "metrics.jsonl").write_text(
            '{"step": 5, "train/loss_D": 0.5, "train/loss_G": "NaN"}\n'
            + ('{"step": 10, "train/loss_D": 0.4\n' if seed == 1 else "")
        )
    assert report.main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert f"{tmp_path / 'run1' / 'metrics.jsonl'} line 2 is not a valid record" in caplog.text
    text = (tmp_path / "report" / "report.md").read_text()
    assert (
        "Skipped 1 run(s), unfinished or unreadable" in text
        and "line 2 is not a valid record" in text
    )


def test_partial_files_of_killed_writes_are_removed(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.partial").write_bytes(b"half")
    (tmp_path / "checkpoint.pt").write_bytes(b"whole")
    assert [p.name for p in files.remove_partials(tmp_path)] == [".checkpoint.pt.abc123.partial"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --- 8. the last bad inputs ----------------------------------------------------------------


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_devices_other_than_cpu_and_cuda_are_clear_errors(device):
    with pytest.raises(
        UserError, match=f"trainer.device={device}: this toolkit trains on cpu or cuda only"
    ):
        resolve_device(device)


def test_more_threads_than_cores_is_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with torch_threads():
        prepare(run_config(["trainer.threads=3"], tmp_path))
    assert "trainer.threads=3 exceeds the 2 CPU cores here" in caplog.text


def test_a_signal_after_the_last_step_is_kept_for_the_sweep(tmp_path, monkeypatch):
    # The run is over and recorded finished; a sweep's job must still learn of the signal.
    monkeypatch.setenv(faults.ENV, "summary:SIGTERM")  # after training, before summary.json
    monkeypatch.setattr(faults, "_passes", {})
    cfg = run_config(["trainer.steps=5", *QUICK, "logger.mode=disabled"], tmp_path / "run")
    summary = run(cfg, progress=False)
    assert summary["status"] == "finished" and signals.take_late_signal() == signal.SIGTERM
    assert signals.take_late_signal() is None  # taken once
