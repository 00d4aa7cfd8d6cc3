"""`python train.py -m hydra/launcher=population …` end to end: the sweep a user knows, its jobs
trained as populations, every member a run of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_population import close

import conftest
from conftest import ROOT
from gan import checkpoint

pytestmark = pytest.mark.slow
QUICK = [
    "trainer.steps=40",
    "trainer.log_every=10",
    "trainer.sample_every=20",
    "trainer.diag_every=15",
    "trainer.eval_every=20",
    "trainer.ckpt_every=15",
    "trainer.threads=1",
]
RUN_FILES = ("init_report.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "train.log")


def train(
    *args: str, fault: str | None = None, merged: bool = False
) -> subprocess.CompletedProcess:
    """``python train.py *args``; ``merged``: stderr into stdout, as a terminal shows both."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("GAN_FAULT", None)
    if fault:
        env["GAN_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "train.py", *args, *QUICK, f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def population(sweep: Path, *jobs: str, **how) -> subprocess.CompletedProcess:
    return train("-m", "hydra/launcher=population", *jobs, f"hydra.sweep.dir={sweep}", **how)


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))}


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


FOUR = ("init=default,he_xavier", "seed=0,1")  # the reference sweep: 2 arms × 2 seeds


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The reference sweep, trained once as one population of four (several tests compare
    against its members)."""
    sweep = tmp_path_factory.mktemp("four") / "sweep"
    return sweep, population(sweep, *FOUR, "hydra.launcher.n_jobs=1")


def member(sweep: Path, arm: str, seed: int) -> Path:
    (found,) = [
        sweep / n for n, s in summaries(sweep).items() if (s["arm"], s["seed"]) == (arm, seed)
    ]
    return found


def test_a_sweep_trains_as_one_population_of_runs_like_solo_runs(four, tmp_path):
    sweep, proc = four
    assert proc.returncode == 0, proc.stderr
    assert "population of 4 (mlp on cpu)" in proc.stdout
    runs = summaries(sweep)
    assert len(runs) == 4
    assert {s["status"] for s in runs.values()} == {"finished"}
    assert {s["population"] for s in runs.values()} == {4}
    assert len({s["wandb"]["id"] for s in runs.values()}) == 4  # a W&B run each
    for name in runs:
        for file in RUN_FILES:
            assert (sweep / name / file).is_file(), (name, file)
        assert list((sweep / name / "samples").glob("*.png"))
        log = (sweep / name / "train.log").read_text()  # its own lines, stamped
        assert re.search(rf"^\[[\d-]+ [\d:,]+\]\[INFO\] {runs[name]['run_name']}: G ", log, re.M)
    assert (sweep / "report" / "report.md").is_file()

    # One member against its solo run: the same init table, metrics close.
    solo = tmp_path / "solo"
    proc = train("init=he_xavier", "seed=1", f"hydra.run.dir={solo}")
    assert proc.returncode == 0, proc.stderr
    got = member(sweep, "he_xavier", 1)
    assert (got / "init_report.json").read_text() == (solo / "init_report.json").read_text()
    assert_close_lines(metric_lines(got), metric_lines(solo))


def assert_close_lines(got: list[dict], want: list[dict]) -> None:
    """The same metrics.jsonl lines, numbers within the tolerance of tests/test_population.py."""
    assert [g["step"] for g in got] == [w["step"] for w in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        numbers = [k for k, v in w.items() if isinstance(v, float)]
        assert all(close(g[k], w[k], k) for k in numbers), g["step"]


def test_an_invalid_job_is_recorded_invalid_and_never_joins(tmp_path):
    sweep = tmp_path / "sweep"
    proc = population(sweep, "init=he_xavier", "model.slope=0.2,1.5")
    assert proc.returncode == 1  # the sweep reports the invalid job
    runs = summaries(sweep)
    statuses = sorted(s["status"] for s in runs.values())
    assert statuses == ["finished", "invalid"]
    assert "population of 1" in proc.stdout
    (invalid,) = [s for s in runs.values() if s["status"] == "invalid"]
    assert "model.slope" in invalid["error"]


def test_sigterm_checkpoints_every_member_and_each_resumes_alone_or_together(four, tmp_path):
    sweep = tmp_path / "sweep"
    jobs = ("init=default,he_xavier", "seed=0", "hydra.launcher.n_jobs=1")
    stopped = population(sweep, *jobs, fault="evaluation:SIGTERM@2")
    assert stopped.returncode == 143, stopped.stderr
    runs = summaries(sweep)
    assert {(s["status"], s["steps"]) for s in runs.values()} == {("preempted", 20)}
    first, second = sorted(runs)
    # The second member's first part as 1000 s of training (no clock could make that up), so
    # its checkpoints after the resume must count them.
    blob = checkpoint.load(sweep / second)
    checkpoint.save(sweep / second, {**blob, "seconds": 1000.0})

    alone = train(f"resume='{sweep / first}'")  # a member's checkpoint resumes solo
    assert alone.returncode == 0, alone.stderr
    started = time.perf_counter()
    together = population(sweep, *jobs)  # the same sweep completes the rest
    wall = time.perf_counter() - started
    assert together.returncode == 0, together.stderr
    runs = summaries(sweep)
    assert {(s["status"], s["steps"]) for s in runs.values()} == {("finished", 40)}
    assert "kept, finished" in together.stdout + together.stderr
    # The member resumed in the population: its last checkpoint holds the first part's time and
    # this part's up to it (less than the whole command took).
    assert 1000.0 < checkpoint.load(sweep / second)["seconds"] < 1000.0 + wall
    assert runs[second]["seconds"] > 1000.0

    straight, _ = four  # the same members never stopped (in a population of four)
    for name in (first, second):
        arm, seed = runs[name]["arm"], runs[name]["seed"]
        assert_close_lines(metric_lines(sweep / name), metric_lines(member(straight, arm, seed)))


def test_populations_in_worker_processes_train_each_member_as_one_process_does(four, tmp_path):
    one_dir, one = four
    assert one.returncode == 0, one.stderr
    two = population(tmp_path / "two", *FOUR, "hydra.launcher.n_jobs=2", merged=True)
    assert two.returncode == 0, two.stdout
    assert "4 enrolled in 2 population(s), 2 at a time" in two.stdout
    assert "| 160/160 [" in two.stdout  # one bar for the workers: 4 members × 40 steps
    # The workers' lines, printed by the sweep's process above its bar: each on its own line.
    lines = [line.rsplit("\r", 1)[-1] for line in two.stdout.splitlines()]
    assert sum(line.startswith("population of 2 (mlp on cpu)") for line in lines) == 2, lines
    ones, twos = summaries(one_dir), summaries(tmp_path / "two")
    assert ones.keys() == twos.keys()
    for name, summary in twos.items():
        assert summary["population"] == 2
        for key in ("status", "steps", "arm", "seed", "threads", "outcome"):
            assert summary[key] == ones[name][key], (name, key)
        for file in RUN_FILES:
            assert (tmp_path / "two" / name / file).is_file(), (name, file)
        got, want = tmp_path / "two" / name, one_dir / name
        assert (got / "init_report.json").read_text() == (want / "init_report.json").read_text()
        assert_close_lines(metric_lines(got), metric_lines(want))
        assert len(list((got / "samples").glob("*.png"))) == len(
            list((want / "samples").glob("*.png"))
        )


def test_sigterm_in_worker_processes_stops_the_sweep_and_its_rerun_completes_it(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = ("init=default,he_xavier", "seed=0,1", "hydra.launcher.n_jobs=2")
    stopped = population(sweep, *jobs, fault="evaluation:SIGTERM@1")  # each worker's first
    assert stopped.returncode == 143, stopped.stderr
    assert "Traceback" not in stopped.stderr
    runs = summaries(sweep)
    assert {s["status"] for s in runs.values()} == {"preempted"}
    assert all(0 < s["steps"] <= 20 for s in runs.values())  # the other stops at the .stop file
    # Both workers started, unless the first stopped the sweep before the second began.
    assert len(runs) == 4 or "2 not started" in stopped.stderr, stopped.stderr
    again = population(sweep, *jobs)
    assert again.returncode == 0, again.stderr
    assert {(s["status"], s["steps"]) for s in summaries(sweep).values()} == {("finished", 40)}


def test_a_killed_worker_stops_the_sweep_and_its_members_are_recorded_failed(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = ("init=default,he_xavier", "seed=0", "hydra.launcher.n_jobs=2")
    proc = population(sweep, *jobs, fault="evaluation:KILL@1")
    assert proc.returncode == 1, proc.stderr
    assert "worker process was killed (its worker process ended by SIGKILL)" in proc.stderr
    assert "Traceback" not in proc.stderr
    statuses = [s["status"] for s in summaries(sweep).values()]
    assert "failed" in statuses and set(statuses) <= {"failed", "preempted"}, statuses
    again = population(sweep, *jobs)  # the same sweep resumes both from their checkpoints
    assert again.returncode == 0, again.stderr
    assert {(s["status"], s["steps"]) for s in summaries(sweep).values()} == {("finished", 40)}


def test_ctrl_c_as_the_population_workers_import_stops_the_sweep_cleanly(tmp_path):
    # Spawned with SIGINT/SIGTERM held back, a worker takes them once its handlers are in:
    # a Ctrl-C while it imports must not kill it (its members would be recorded failed).
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "train.py", "-m", "hydra/launcher=population", "hydra.launcher.n_jobs=2"]
        + [*FOUR, *QUICK, f"hydra.sweep.dir={sweep}", f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a terminal's process group: Ctrl-C reaches every process
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    try:
        # Both workers stopped before their handlers: the Ctrl-C reaches each as it imports.
        workers = conftest.stopped_while_signals_held(proc.pid, "spawn_main")
        os.killpg(proc.pid, signal.SIGINT)
        for worker in workers:
            os.kill(worker, signal.SIGCONT)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err[-3000:]
    assert "sweep: 4 jobs: 4 not started" in err and "killed" not in err, err[-3000:]
    assert "To complete exactly those" in err
    conftest.wait_for(lambda: not conftest.alive(workers), timeout=30)


def test_a_bad_launcher_option_is_one_clear_error(tmp_path):
    proc = population(tmp_path / "sweep", "seed=0", "hydra.launcher.n_jobs=0")
    assert proc.returncode == 2, proc.stderr  # a user error, refused before any job
    assert proc.stderr.startswith("error: hydra.launcher.n_jobs must be >= 1"), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "sweep").exists()
