"""Fault injection: a run interrupted at each named fault point (``gan.faults``) by SIGTERM, SIGINT
or KILL, then resumed, ends bit-identical to an uninterrupted run, says the truth in summary.json
meanwhile, and leaves only whole, strictly valid files behind."""

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
import torch

import conftest
from conftest import ROOT
from gan import checkpoint, faults

STEPS = 40
FAST = [
    f"trainer.steps={STEPS}",
    "trainer.log_every=5",
    "trainer.sample_every=20",
    "trainer.diag_every=10",
    "trainer.eval_every=20",
    "trainer.ckpt_every=10",
    # One thread: on a small, busy machine torch's thread pool makes these steps 10x slower.
    "trainer.threads=1",
]
EXIT = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT, "KILL": -signal.SIGKILL}

# (point, what GAN_FAULT sends there): every point with SIGTERM, and the harder cases.
CASES = [
    ("data_load", "SIGTERM"),  # before anything is written: the run stops after its first step
    ("wandb_init", "SIGTERM"),  # only passed with W&B on (offline here)
    ("evaluation", "SIGTERM"),
    ("evaluation", "SIGINT"),
    ("checkpoint_write", "SIGTERM"),  # the checkpoint in progress completes, the next step stops
    ("checkpoint_write", "KILL"),  # the first checkpoint, cut before its rename: none exists
    ("checkpoint_write", "KILL@2"),  # the second one: the first (step 10) is resumed
    ("summary", "SIGTERM"),  # training is over: the run finishes, and says so
    ("summary", "KILL"),  # after the last checkpoint: resuming writes the final summary
]


def logger_mode(point: str) -> str:
    return "offline" if point == "wandb_init" else "disabled"


def overrides(mode: str) -> list[str]:
    return [*FAST, f"logger.mode={mode}"]


def environment(fault: str | None = None) -> dict[str, str]:
    """This process's environment with W&B offline and unable to reach a server (set here, not
    by conftest's per-test fixture: the module-scoped reference runs start before it), and
    ``GAN_FAULT`` set to ``fault`` or unset."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.update(WANDB_ERROR_REPORTING="false", NETRC=os.devnull, PYTHONUNBUFFERED="1")
    for name in ("WANDB_API_KEY", "WANDB_DIR", faults.ENV):
        env.pop(name, None)  # W&B's files go into the run directory
    if fault:
        env[faults.ENV] = fault
    return env


def train(
    *args: str, fault: str | None = None, prelude: str | None = None
) -> subprocess.CompletedProcess:
    """``python train.py *args`` (with the session's data dir); ``prelude``: Python run first in
    the same process (then train.py runs as ``__main__``)."""
    command = [sys.executable, "train.py"]
    if prelude:
        command = [sys.executable, "-c", f"{prelude}\n{RUN_TRAIN}"]
    return subprocess.run(
        [*command, *args, f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        env=environment(fault),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


RUN_TRAIN = """
import runpy, sys
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def summary_of(run_dir: Path) -> dict:
    return strict_json((run_dir / "summary.json").read_text())


def reject_constant(token: str):
    raise ValueError(f"non-standard JSON token {token}")


def strict_json(text: str):
    return json.loads(text, parse_constant=reject_constant)


def checkpoint_of(run_dir: Path) -> dict:
    return checkpoint.load(run_dir)


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files of interrupted writes (also in .hydra/), and the run directory's claim."""
    partials = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*.partial"))
    return partials + [p.name for p in run_dir.glob(".claim")]


def assert_clean_exit(proc: subprocess.CompletedProcess, code: int) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}, not {code}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each logger mode, made once (on first use) for the module."""
    made: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in made:
            out = tmp_path_factory.mktemp(f"reference-{mode}") / "run"
            assert_clean_exit(train(*overrides(mode), f"hydra.run.dir={out}"), 0)
            assert summary_of(out)["status"] == "finished"
            made[mode] = out
        return made[mode]

    return get


def resume_until_finished(run_dir: Path, calls: Path, tries: int = 3) -> int:
    """Resumes ``run_dir`` until its summary says finished; returns how many resumes it took."""
    for n in range(tries + 1):
        if (run_dir / "summary.json").is_file() and summary_of(run_dir)["status"] == "finished":
            return n
        if n == tries:
            break
        proc = train(f"resume={run_dir}", f"hydra.run.dir={calls / f'resume-{n}'}")
        assert_clean_exit(proc, 0)
    pytest.fail(f"{run_dir} not finished after {tries} resumes: {summary_of(run_dir)}")


def assert_completed_like(run_dir: Path, reference: Path) -> None:
    """The run ended where the uninterrupted one did, bit for bit, with only valid files left."""
    summary = summary_of(run_dir)
    assert summary["status"] == "finished" and summary["steps"] == STEPS, summary
    ours, theirs = checkpoint_of(run_dir)["trainer"], checkpoint_of(reference)["trainer"]
    assert ours["step"] == theirs["step"] == STEPS
    for net in ("generator", "discriminator"):
        assert ours[net].keys() == theirs[net].keys()
        different = [k for k in ours[net] if not torch.equal(ours[net][k], theirs[net][k])]
        assert not different, f"{net} differs from the uninterrupted run's in {different}"
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    assert b"\0" not in metrics
    for line in metrics.decode().splitlines():
        strict_json(line)
    strict_json((run_dir / "init_report.json").read_text())
    # The record too: the resumed steps re-made exactly the lines the interruption cut.
    assert metrics == (reference / "metrics.jsonl").read_bytes()
    assert leftovers(run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize(("point", "fault"), CASES, ids=[f"{p}-{f}" for p, f in CASES])
def test_a_run_interrupted_at_a_fault_point_resumes_to_the_same_result(
    point, fault, reference, tmp_path
):
    mode = logger_mode(point)
    ref = reference(mode)
    run_dir = tmp_path / "run"
    proc = train(*overrides(mode), f"hydra.run.dir={run_dir}", fault=f"{point}:{fault}")
    sent = fault.partition("@")[0]

    if sent == "KILL":
        assert_clean_exit(proc, EXIT["KILL"])
        # A killed process updates nothing: its claim and any temporary file stay, and the
        # next process into the directory must clean them up.
        assert (run_dir / ".claim").is_file()
        assert summary_of(run_dir)["status"] == "running"  # what a sweep reads as "killed"
        if point == "checkpoint_write":
            assert any(name.startswith(".checkpoint.pt.") for name in leftovers(run_dir))
        if not (run_dir / "checkpoint.pt").is_file():
            # Killed before its first checkpoint: there is nothing to resume, and resuming says
            # so; running the same command again starts it afresh in the same directory.
            refused = train(f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'refused'}")
            assert_clean_exit(refused, 2)
            assert "holds no checkpoint.pt" in refused.stderr
            assert_clean_exit(train(*overrides(mode), f"hydra.run.dir={run_dir}"), 0)
            assert leftovers(run_dir) == []  # the dead process's claim and file are gone
    elif point == "summary":
        # The signal came after the last step and checkpoint: nothing is left to do, so the run
        # finishes (exit 0) rather than asking to be resumed.
        assert_clean_exit(proc, 0)
        assert "preempted" not in proc.stderr
    else:
        assert_clean_exit(proc, EXIT[sent])
        assert f"preempted: {sent} at step" in proc.stderr and f"resume={run_dir}" in proc.stderr
        summary = summary_of(run_dir)
        assert summary["status"] == "preempted", summary
        assert summary["steps"] == checkpoint_of(run_dir)["trainer"]["step"] < STEPS
        assert leftovers(run_dir) == []

    interrupted = summary_of(run_dir)
    finished = interrupted["status"] == "finished"  # by the fault run, or its rerun
    assert resume_until_finished(run_dir, tmp_path) == (0 if finished else 1)
    assert_completed_like(run_dir, ref)
    if mode == "offline":  # W&B was on, and the resumed run continued the same W&B run
        assert summary_of(run_dir)["wandb"]["id"] == interrupted["wandb"]["id"]


# Sends the second SIGTERM while the checkpoint that GAN_FAULT's first one asked for is written.
SECOND_SIGTERM = """
import os, signal
from gan import checkpoint, faults
real_point, first = faults.point, []
def point(name):
    real_point(name)
    if name == "evaluation":
        first.append(name)
    elif name == "checkpoint_write" and first:
        os.kill(os.getpid(), signal.SIGTERM)
faults.point = point
"""


@pytest.fixture(scope="module")
def double_sigterm(tmp_path_factory):
    """A run that got SIGTERM at the evaluation of step 20 (asking for a checkpoint and a stop),
    then a second SIGTERM while that checkpoint was written: (run dir, process, its summary and
    checkpoint step right after)."""
    run_dir = tmp_path_factory.mktemp("double-sigterm") / "run"
    proc = train(
        *overrides("disabled"),
        f"hydra.run.dir={run_dir}",
        fault="evaluation:SIGTERM",
        prelude=SECOND_SIGTERM,
    )
    stopped_at = checkpoint_of(run_dir)["trainer"]["step"] if proc.returncode > 0 else None
    return run_dir, proc, summary_of(run_dir), stopped_at


@pytest.mark.slow
def test_a_second_sigterm_stops_at_once_and_the_run_still_resumes(double_sigterm, reference):
    """The second signal abandons the checkpoint being written: step 10's is kept, and resumed."""
    run_dir, proc, summary, stopped_at = double_sigterm
    assert_clean_exit(proc, EXIT["SIGTERM"])
    assert "SIGTERM again: stopped at once" in proc.stderr
    assert summary["status"] == "preempted", summary
    assert stopped_at == 10
    assert leftovers(run_dir) == []
    assert resume_until_finished(run_dir, run_dir.parent) == 1
    assert_completed_like(run_dir, reference("disabled"))


@pytest.mark.slow
def test_after_a_second_sigterm_the_summary_says_where_the_run_resumes(double_sigterm):
    _, _, summary, stopped_at = double_sigterm
    assert summary.get("steps") == stopped_at == 10, summary


@pytest.mark.slow
def test_resuming_with_the_run_dir_as_hydra_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = train(*overrides("disabled"), f"hydra.run.dir={run_dir}", fault="data_load:SIGTERM")
    assert_clean_exit(proc, EXIT["SIGTERM"])
    again = train(f"resume={run_dir}", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert summary_of(run_dir)["status"] == "finished"


def test_the_cases_cover_every_point_with_sigterm():
    in_sweeps = {"sweep_job"}  # a multirun's: tests/test_safety.py, signals on a joblib sweep
    assert {p for p, f in CASES if f == "SIGTERM"} | in_sweeps == set(faults.POINTS)


def test_points_lists_exactly_the_fault_points_in_the_code():
    called: list[str] = []
    for path in [*sorted((ROOT / "gan").rglob("*.py")), ROOT / "train.py"]:
        called += re.findall(r"""\bfaults\.point\(\s*["']([^"']+)["']\s*\)""", path.read_text())
    assert len(called) == len(set(called)), f"a point name is used twice: {called}"
    assert sorted(faults.POINTS) == sorted(called)


def test_a_fault_fires_only_at_its_point_and_pass(monkeypatch):
    sent = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.point("evaluation")  # GAN_FAULT unset: nothing
    monkeypatch.setenv(faults.ENV, "evaluation:SIGINT@2")
    faults.point("summary")
    faults.point("evaluation")
    assert sent == []
    faults.point("evaluation")
    assert sent == [(os.getpid(), signal.SIGINT)]
    faults.point("evaluation")
    monkeypatch.setenv(faults.ENV, "summary:KILL")
    faults.point("summary")
    assert sent == [(os.getpid(), signal.SIGINT), (os.getpid(), signal.SIGKILL)]


def test_a_held_run_goes_on_once_asked_to_stop_and_never_waits_forever(monkeypatch):
    import threading

    from gan import signals

    monkeypatch.setenv(faults.ENV, "checkpoint_write:HOLD@2")
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.setattr(faults, "HOLD_SECONDS", 60.0)
    with signals.stop_on_signals() as asked:
        faults.point("checkpoint_write")  # the first pass: not held
        threading.Timer(0.2, signals.request_stop, args=(signal.SIGTERM,)).start()
        started = time.monotonic()
        faults.point("checkpoint_write")  # held until the watchdog's request
        assert asked["signal"] == signal.SIGTERM and time.monotonic() - started < 30
    monkeypatch.setenv(faults.ENV, "checkpoint_write:HOLD")
    monkeypatch.setattr(faults, "_passes", {})
    monkeypatch.setattr(faults, "HOLD_SECONDS", 0.5)
    with signals.stop_on_signals():
        started = time.monotonic()
        faults.point("checkpoint_write")  # nobody asks: it goes on after HOLD_SECONDS
        assert 0.5 <= time.monotonic() - started < 30


def test_a_misspelt_fault_is_an_error_not_a_silent_pass(monkeypatch):
    monkeypatch.setenv(faults.ENV, "evalution:SIGTERM")
    with pytest.raises(RuntimeError, match=re.escape("expected <point>:<SIGNAL|KILL|HOLD>")):
        faults.point("evaluation")
    monkeypatch.setenv(faults.ENV, "evaluation:SIGTREM")
    with pytest.raises(RuntimeError, match="points"):
        faults.point("evaluation")
