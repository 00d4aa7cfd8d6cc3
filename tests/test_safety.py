"""Safe and sound under faults (issue 19): checkpoints that cannot run code or lie, multirun jobs
that resume, refused processes that change nothing, a report that counts each run once, and
bad input that is one paragraph and exit 2."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import conftest
from conftest import ROOT, alive, children, wait_for, workers_importing_torch
from gan import checkpoint, faults, files, record, sweep_outcomes, sweeps
from gan.errors import UserError

QUICK = [
    "trainer.steps=10",
    "trainer.log_every=5",
    "trainer.sample_every=100",
    "trainer.diag_every=0",
    "trainer.eval_every=0",
    "trainer.ckpt_every=5",
    "trainer.threads=1",
    "logger.mode=disabled",
]


def train(*args: str, cwd: Path = ROOT, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"data_dir={conftest.DATA_DIR}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def assert_refused(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit 2 with one paragraph naming the problem, never a traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 10-step run, made once; tests work on copies (``run_copy``)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = train(*QUICK, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (but train.log, which records the refusal) by content."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "train.log"
    }


# --- 1. checkpoints that cannot run code or lie ---------------------------------------------


class RunsCode:
    """Unpickling this runs ``touch <marker>``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(marker: Path, *, with_digest: bool) -> bytes:
    """A checkpoint whose pickle calls os.system: as format 1 (a bare torch file) or with a valid
    header and digest (anyone who can write the file can also recompute its digest)."""
    buffer = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "trainer": RunsCode(marker)}, buffer)
    payload = buffer.getvalue()
    if not with_digest:
        return payload
    digest = hashlib.sha256(payload).hexdigest()
    return b"GAN-CHECKPOINT 2 sha256=%s bytes=%d\n" % (digest.encode(), len(payload)) + payload


@pytest.mark.parametrize("with_digest", [False, True], ids=["format1", "format2"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, with_digest):
    marker = tmp_path / "MARKER"
    (tmp_path / "checkpoint.pt").write_bytes(crafted(marker, with_digest=with_digest))
    with pytest.raises(UserError, match="could run code"):
        checkpoint.load(tmp_path)
    assert not marker.exists()


@pytest.mark.slow
def test_resume_refuses_a_crafted_checkpoint_without_running_it(run_copy, tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = run_copy / "checkpoint.pt"
    ckpt.write_bytes(crafted(marker, with_digest=True))
    before = snapshot(run_copy)
    proc = train(f"resume={run_copy}", f"hydra.run.dir={tmp_path / 'call'}")
    assert_refused(proc, "could run code", "left untouched")
    assert not marker.exists()
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_with_64_bytes_flipped(run_copy, tmp_path):
    ckpt = run_copy / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    ckpt.write_bytes(bytes(raw))
    before = snapshot(run_copy)
    proc = train(f"resume={run_copy}", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'call'}")
    assert_refused(proc, "does not match the sha256 digest", "left untouched")
    assert snapshot(run_copy) == before


def test_every_flipped_byte_region_is_caught(tmp_path):
    checkpoint.save(tmp_path, {"trainer": {"step": 3, "w": torch.randn(1000)}})
    raw = (tmp_path / "checkpoint.pt").read_bytes()
    for where in range(0, len(raw), max(1, len(raw) // 16)):
        damaged = bytearray(raw)
        damaged[where] ^= 0x01
        (tmp_path / "checkpoint.pt").write_bytes(bytes(damaged))
        with pytest.raises(UserError, match="cannot be read|refused"):
            checkpoint.load(tmp_path)


def test_a_checkpoint_stripped_of_its_digest_header_is_refused(tmp_path, caplog):
    # Without its header a format-2 file would otherwise be read as format 1, unchecked.
    checkpoint.save(tmp_path, {"trainer": {"step": 3, "w": torch.randn(10)}})
    raw = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(raw[raw.index(b"\n") + 1 :])
    with pytest.raises(UserError, match="lost the header that carries its sha256 digest"):
        checkpoint.load(tmp_path)
    assert "written before checkpoints carried a digest" not in caplog.text


def test_a_checkpoint_round_trips_with_weights_only_and_its_rng_states(tmp_path):
    import random

    import numpy as np

    states = checkpoint.rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.save(tmp_path, {"rng": states, "best": {}, "config": {"betas": (0.5, 0.9)}})
    blob = checkpoint.load(tmp_path)
    checkpoint.restore_rng_states(blob["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all()
    assert expected[2] == again[2] and blob["config"]["betas"] == (0.5, 0.9)


def test_a_format_1_checkpoint_is_still_read_safely(tmp_path, caplog):
    import random

    import numpy as np

    legacy = {
        "torch": torch.get_rng_state(),
        "cuda": [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    torch.save({"format": 1, "rng": legacy, "trainer": {"step": 4}}, tmp_path / "checkpoint.pt")
    expected = np.random.rand(2)
    blob = checkpoint.load(tmp_path)
    checkpoint.restore_rng_states(blob["rng"])
    assert (np.random.rand(2) == expected).all() and blob["trainer"]["step"] == 4
    assert "written before checkpoints carried a digest" in caplog.text


def test_saving_something_unsafe_names_it(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match=r"checkpoint\['best'\]\['fcd'\] is a float64"):
        checkpoint.save(tmp_path, {"best": {"fcd": np.float64(1.0)}})
    assert not (tmp_path / "checkpoint.pt").exists()


# --- 2. every job directory of a sweep resumes with the command the run prints ---------------


def fault_env(fault: str) -> dict[str, str]:
    return {**os.environ, "GAN_FAULT": fault, "WANDB_MODE": "disabled"}


@pytest.mark.slow
def test_a_sweep_job_resumes_with_the_command_it_prints(tmp_path):
    sweep = tmp_path / "sweep it's"  # a quote and a space too: the shell and Hydra must agree
    proc = train(
        "-m",
        "seed=7",
        *QUICK,
        f"hydra.sweep.dir={checkpoint.hydra_value(str(sweep))}",
        env=fault_env("data_load:SIGTERM"),
    )
    (job,) = [d for d in sweep.iterdir() if d.is_dir() and d.name != "report"]
    assert (
        job.name.startswith("0_seed=7,trainer.")
        and json.loads((job / "summary.json").read_text())["status"] == "preempted"
    ), proc.stderr[-3000:]
    command = re.search(r"continue with `(python train\.py [^`]+)`", proc.stderr)[1]
    again = run_printed(f"{command} data_dir={conftest.DATA_DIR}", timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((job / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    "path", ["a/0_seed=7,trainer.lr=0.001", 'q"uote\\', "a/${x}/b", "it's here", "/plain/dir-1.x"]
)
def test_a_run_dir_reads_back_as_itself_through_the_shell_and_hydra(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    (word,) = shlex.split(checkpoint.resume_command(path))[2:]
    value = OverridesParser.create().parse_override(word).value()
    assert OmegaConf.create({"resume": value}).resume == path


# --- 3. signals on a joblib sweep ------------------------------------------------------------

SWEEP = [
    "-m",
    "seed=0,1,2,3",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
    "trainer.steps=30",
    "trainer.log_every=5",
    "trainer.ckpt_every=10",
    "trainer.sample_every=100",
    "trainer.diag_every=0",
    "trainer.eval_every=0",
    "trainer.threads=1",
    "logger.mode=disabled",
]


# Each job's run holds at its first checkpoint until it is asked to stop: a test's signal (or
# kill) always finds the jobs it started training, however loaded the machine.
HELD = "checkpoint_write:HOLD"


def start_sweep(sweep: Path, args: list[str] = SWEEP, fault: str = HELD) -> subprocess.Popen:
    """The sweep in its own session (a process group, as a terminal or SLURM gives it), with
    ``GAN_FAULT=fault``."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.sweep.dir={sweep}"]
        + [f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "WANDB_MODE": "disabled", faults.ENV: fault},
    )


def training_job(sweep: Path) -> int:
    """Waits until a job is training; returns its process id (from its run directory's claim)."""

    def claim():
        for path in sweep.glob("*/.claim"):
            if (path.parent / "metrics.jsonl").is_file():
                try:
                    return json.loads(path.read_text())["pid"]
                except (OSError, ValueError):
                    pass
        return None

    wait_for(lambda: claim() is not None)
    return claim()


def job_statuses(sweep: Path) -> dict[str, str]:
    """Each started job's status by its number, as the sweep reads its directory."""
    return {
        o.job_dir.name.split("_", 1)[0]: o.status
        for o in sweep_outcomes.job_outcomes(sweep)
        if o.status != record.NOT_STARTED
    }


def assert_stopped_cleanly(proc, out: str, err: str, sweep: Path, code: int, workers: set[int]):
    """The sweep's exit status says why; every job is preempted (with a checkpoint), finished
    or listed as not started; no claim, no worker is left; the rerun command is printed."""
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    statuses = job_statuses(sweep)
    assert set(statuses.values()) <= {"preempted", "finished"}, statuses
    assert "preempted" in statuses.values(), statuses
    for number in {"0", "1", "2", "3"} - statuses.keys():
        assert re.search(rf"not started {number}_ \(seed={number},", err), err[-3000:]
    for d in sweep.glob("*/summary.json"):
        if json.loads(d.read_text())["status"] == "preempted":
            checkpoint.load(d.parent)
    assert not list(sweep.glob("*/.claim"))
    assert "report:" in out + err and "To complete exactly those: python train.py -m" in err
    wait_for(lambda: not alive(workers), timeout=30)


def run_printed(command: str, *, timeout: float, env=None) -> subprocess.CompletedProcess:
    """A `python train.py …` command as a run printed it, through the shell, with this Python."""
    return subprocess.run(
        f"{shlex.quote(sys.executable)} {command[len('python ') :]}",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def rerun_completes_the_rest(sweep: Path, err: str) -> None:
    """The printed command finishes exactly the jobs that did not finish, and keeps the rest."""
    command = re.search(r"To complete exactly those: (python train\.py .*)", err)[1]
    kept = {p: p.read_bytes() for p in sweep.glob("*/summary.json") if "finished" in p.read_text()}
    resumable = [d for d in sweep.glob("*/checkpoint.pt") if d.parent / "summary.json" not in kept]
    again = run_printed(command, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert job_statuses(sweep) == dict.fromkeys("0123", "finished")
    assert all(p.read_bytes() == content for p, content in kept.items())
    assert again.stdout.count("resuming from step") == len(resumable)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "target"),
    [(signal.SIGTERM, "sweep"), (signal.SIGINT, "group"), (signal.SIGTERM, "worker")],
    ids=["sigterm-sweep", "ctrl-c-group", "sigterm-worker"],
)
def test_a_signal_stops_a_joblib_sweep_cleanly_and_the_rerun_completes_it(tmp_path, signum, target):
    sweep = tmp_path / "sweep"
    proc = start_sweep(sweep)
    try:
        job = training_job(sweep)
        workers = children(proc.pid)
        if target == "sweep":
            os.kill(proc.pid, signum)
        elif target == "group":
            os.killpg(proc.pid, signum)
        else:
            os.kill(job, signum)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert_stopped_cleanly(proc, out, err, sweep, 128 + signum, workers)
    if target == "sweep":
        rerun_completes_the_rest(sweep, err)


@pytest.mark.slow
def test_a_signal_to_a_joblib_worker_between_its_jobs_stops_the_sweep_cleanly(tmp_path):
    # Jobs 0 and 1 start side by side, one short and one long (loky gives each idle worker the
    # next job); the worker of the short one gets SIGTERM as its next job starts, outside any
    # run. Not kept for later, it would end that worker: joblib would then kill the one training
    # the long job (no checkpoint of its last steps) and end the sweep in a traceback.
    sweep = tmp_path / "sweep"
    common = [a for a in SWEEP if not a.startswith(("seed=", "trainer.steps="))]
    jobs = [*common, "seed=0,1", "trainer.steps=20,600"]
    proc = start_sweep(sweep, jobs, fault="sweep_job:SIGTERM@2")
    try:
        workers = workers_importing_torch(proc.pid, "loky")
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    assert "stopped (SIGTERM to a worker" in err and "To complete exactly those" in err, err
    # The short job finished; the long one checkpointed and stopped; no other job started.
    assert job_statuses(sweep) == {"0": "finished", "1": "preempted"}, job_statuses(sweep)
    checkpoint.load(next(sweep.glob("1_*")))
    assert not list(sweep.glob("*/.claim"))
    wait_for(lambda: not alive(workers), timeout=30)


@pytest.mark.slow
def test_a_killed_worker_stops_the_sweep_with_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = start_sweep(sweep)
    try:
        os.kill(training_job(sweep), signal.SIGKILL)  # as the OOM killer does
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "a worker process was killed" in err and "To complete exactly those" in err
    statuses = job_statuses(sweep)
    assert "running" not in statuses.values() and "failed" in statuses.values(), statuses
    failed = [
        json.loads(p.read_text()) for p in sweep.glob("*/summary.json") if "failed" in p.read_text()
    ]
    assert all("a worker process was killed" in s["error"] for s in failed)
    assert not list(sweep.glob("*/.claim"))
    rerun_completes_the_rest(sweep, err)


@pytest.mark.slow
@pytest.mark.parametrize("seeds", ["0,1,2,3", "0"], ids=["busy-workers", "an-idle-worker"])
def test_workers_do_not_outlive_a_sweep_killed_hard(tmp_path, seeds):
    # With one job, loky's second worker never gets one: it must end all the same.
    sweep = tmp_path / "sweep"
    proc = start_sweep(sweep, [f"seed={seeds}" if a.startswith("seed=") else a for a in SWEEP])
    try:
        training_job(sweep)
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        wait_for(lambda: not alive(workers), timeout=30)
    finally:
        proc.kill()
    # Every job that had started checkpointed or finished; a job Hydra was setting up as its
    # worker ended holds Hydra's files only (not started).
    statuses = job_statuses(sweep)
    assert "preempted" in statuses.values(), statuses
    assert set(statuses.values()) <= {"preempted", "finished"}, statuses
    assert len(statuses) <= 3  # no job started after the sweep was gone


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "status"),
    [("data_load", "preempted"), ("summary", "finished")],  # summary: after the last step
)
def test_a_sigterm_in_a_sequential_sweep_stops_it_with_a_summary(tmp_path, point, status):
    sweep = tmp_path / "sweep"
    proc = train(
        "-m", "seed=0,1,2", *QUICK, f"hydra.sweep.dir={sweep}", env=fault_env(f"{point}:SIGTERM")
    )
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert job_statuses(sweep) == {"0": status}
    assert f"sweep: 3 jobs: 1 {status}, 2 not started" in proc.stderr
    assert "interrupted during start-up" not in proc.stderr


def test_a_watchdogs_request_before_the_same_ctrl_c_is_not_a_second_signal():
    # A Ctrl-C reaches the sweep and its workers at once; a worker's watchdog can see the
    # sweep's stop file before the worker's own handler runs. Only a second real signal
    # interrupts without a checkpoint.
    from gan import signals

    with signals.stop_on_signals() as asked:
        assert signals.request_stop(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: asked.get("received") is not None, timeout=10)
        assert asked["signal"] == signal.SIGINT
        with pytest.raises(signals.Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            wait_for(lambda: False, timeout=10)


def test_a_signal_outside_a_workers_runs_is_kept_for_its_next_run():
    # A sweep's worker (joblib's initializer, a population worker) must not die of a Ctrl-C
    # that reaches it while it imports or between two jobs: its next run stops at once.
    from gan import signals

    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    try:
        signals.outside_runs()
        os.kill(os.getpid(), signal.SIGTERM)  # the default would end this process
        wait_for(lambda: signals._outside["signal"] is not None, timeout=10)
        with signals.stop_on_signals() as asked:
            assert asked["signal"] == signal.SIGTERM  # the run checkpoints at its first step
        assert signals.take_signal_outside_runs() is None  # taken once
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        signals.take_signal_outside_runs()  # none left for a later test's run


def test_a_process_started_while_signals_are_held_begins_with_them_held():
    from gan import signals

    probe = "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
    with signals.held():
        inside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    after = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (inside.stdout.strip(), after.stdout.strip()) == ("True", "False")


def test_a_signal_to_the_sweep_as_its_own_job_prepares_stops_that_job_at_its_first_step(
    tmp_path, capsys
):
    # The basic launcher runs each job in the sweep's process: a SIGTERM while the job resolves
    # its config or reads its checkpoint reaches the sweep's handler, not yet the run's. The run
    # must still stop with a checkpoint (SLURM sends one SIGTERM, then kills).
    from gan import signals

    sweeps.stop_the_sweep(tmp_path, signal.SIGTERM)
    assert "sweep: SIGTERM: the jobs in flight write a checkpoint" in capsys.readouterr().err
    assert sweeps.stop_request(tmp_path)["signal"] == signal.SIGTERM
    with signals.stop_on_signals() as asked:  # the job's run, as it starts
        assert asked["signal"] == signal.SIGTERM
    assert signals.take_signal_outside_runs() is None  # taken by that run only


def test_a_signal_during_the_sweeps_report_skips_it_with_one_line(tmp_path, monkeypatch):
    def slow_report(sweep_dir):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the report renders
        time.sleep(5)
        return "report: written"

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(sweeps, "write_sweep_report", slow_report)
    line, signum = sweeps.report_unless_stopped(tmp_path)
    assert signum == signal.SIGINT and line.startswith("report: skipped (SIGINT)")
    assert f"python -m gan.report {tmp_path}" in line
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.setattr(sweeps, "write_sweep_report", lambda sweep_dir: "report: written")
    assert sweeps.report_unless_stopped(tmp_path) == ("report: written", None)


def test_a_job_on_another_machine_is_not_an_orphan_of_the_sweeps_process(tmp_path, monkeypatch):
    # submitit_slurm: the job runs on a compute node with the sweep's variables, where the
    # sweep's pid means nothing. Only the sweep's stop file speaks for it there.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    monkeypatch.setenv(sweeps.SWEEP_PID, dead)
    monkeypatch.setenv(sweeps.SWEEP_MACHINE, sweeps.this_machine())
    assert sweeps.why_not_start(tmp_path) == "the sweep's process is gone"
    monkeypatch.setenv(sweeps.SWEEP_MACHINE, "node042 5b2c-other-boot")
    assert not sweeps.orphaned() and sweeps.why_not_start(tmp_path) is None
    sweeps.request_stop(tmp_path, signal.SIGTERM, "SIGTERM to the sweep")
    assert sweeps.why_not_start(tmp_path) == "the sweep is stopping (SIGTERM to the sweep)"


def test_joblibs_workers_start_with_their_handlers_and_their_watchdog(tmp_path, monkeypatch):
    # What the guard hands Hydra's launcher (test below) reaches joblib.Parallel's workers: the
    # handlers that keep a signal for their next run, and the thread that watches the sweep.
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    import threading

    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    monkeypatch.setenv(sweeps.SWEEP_PID, str(os.getpid()))  # this process plays the sweep
    monkeypatch.setenv(sweeps.SWEEP_MACHINE, sweeps.this_machine())

    def started() -> tuple[str, bool]:
        watching = any("_watching" in t.name for t in threading.enumerate())
        return signal.getsignal(signal.SIGTERM).__qualname__, watching

    try:
        found = Parallel(
            n_jobs=2,
            backend="loky",
            initializer=sweeps.joblib_worker_started,
            initargs=(str(tmp_path),),
        )(delayed(started)() for _ in range(4))
    finally:
        get_reusable_executor().shutdown(wait=True)
    assert set(found) == {("outside_runs.<locals>.remember", True)}


@pytest.mark.parametrize("stopping", [False, True], ids=["alone", "after-a-signal"])
def test_a_broken_joblib_pool_stops_the_sweep_with_the_first_reason(tmp_path, stopping, capsys):
    # A worker that a Ctrl-C reached while it unpickled its first job breaks loky's pool; the
    # sweep then ends with its summary (the signal's reason), not joblib's traceback.
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from hydra_plugins.hydra_joblib_launcher import _core
    from joblib.externals.loky.process_executor import BrokenProcessPool
    from omegaconf import OmegaConf

    from gan import sweeps

    def broken(launcher, job_overrides, initial_job_idx):
        raise BrokenProcessPool("A task has failed to un-serialize.")

    original = _core.launch
    _core.launch = broken
    try:
        sweeps.guard_joblib_launcher()
        if stopping:
            sweeps.request_stop(tmp_path, signal.SIGINT, "SIGINT to the sweep")
        launcher = type("Launcher", (), {})()
        launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
        launcher.joblib = {"n_jobs": 2}
        assert _core.launch(launcher, [], 0) == []
    finally:
        _core.launch = original
    assert launcher.joblib["initializer"] is sweeps.joblib_worker_started
    assert launcher.joblib["initargs"] == (str(tmp_path),)
    stop = sweeps.stop_request(tmp_path)
    shown = capsys.readouterr().err
    if stopping:
        assert stop == {**stop, "signal": signal.SIGINT, "why": "SIGINT to the sweep"}
        assert shown == ""  # the signal's doing
    else:  # no signal's doing (a worker that cannot import, say): its error is shown whole
        assert stop["signal"] is None and "a worker process broke" in stop["why"], stop
        assert "BrokenProcessPool: A task has failed to un-serialize" in shown, shown


# --- 4. a refused or failed process changes nothing it does not own ----------------------------


def train_without_data_dir(*args: str) -> subprocess.CompletedProcess:
    """``python train.py *args`` with no data_dir added (a test that sets its own)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_a_process_refused_by_a_claim_leaves_the_runs_hydra_files(run_copy):
    before = snapshot(run_copy)
    with files.claimed(run_copy):  # this process "trains" there now
        claim = (run_copy / ".claim").read_bytes()
        proc = train("seed=5", "trainer.lr=0.001", *QUICK, f"hydra.run.dir={run_copy}")
        assert_refused(proc, "is being written by another process")
        assert (run_copy / ".claim").read_bytes() == claim
    assert snapshot(run_copy) == before


def test_a_refused_process_puts_back_the_hydra_files_the_holder_wrote_last(tmp_path):
    # The holder, a resume, rewrote .hydra after claiming (the run's new length): a process
    # refused meanwhile must put back that, not the files from before the claim.
    overrides = tmp_path / ".hydra" / "overrides.yaml"
    overrides.parent.mkdir()
    overrides.write_text("- seed=0\n")
    with files.claimed(tmp_path):
        overrides.write_text("- seed=0\n- trainer.steps=400\n")  # record_resumed_config
        files.keep_current(tmp_path)
        with pytest.raises(files.ClaimRefused), files.claimed(tmp_path):
            pass
        assert overrides.read_text() == "- seed=0\n- trainer.steps=400\n"


@pytest.mark.slow
def test_a_refused_sweep_job_leaves_the_running_jobs_summary(tmp_path):
    sweep = tmp_path / "sweep"
    assert train("-m", "seed=0", *QUICK, f"hydra.sweep.dir={sweep}").returncode == 0
    (job,) = [d for d in sweep.iterdir() if (d / ".hydra").is_dir()]
    summary = json.loads((job / "summary.json").read_text())
    (job / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    before = snapshot(job)
    with files.claimed(job):  # another sweep's process is training this job
        proc = train("-m", "seed=0", *QUICK, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is being written by another process" in proc.stderr
    assert "still running in another process" in proc.stderr
    assert snapshot(job) == before


@pytest.mark.slow
def test_a_resume_that_fails_on_its_data_dir_changes_nothing(run_copy, tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    before = snapshot(run_copy)
    proc = train_without_data_dir(
        f"resume={run_copy}", "trainer.steps=20", f"data_dir={a_file}", f"hydra.run.dir={tmp_path}"
    )
    assert_refused(proc, "data_dir")
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_a_resume_of_a_checkpoint_without_rng_is_refused_and_changes_nothing(run_copy, tmp_path):
    blob = checkpoint.load(run_copy)
    del blob["rng"], blob["format"]
    checkpoint.save(run_copy, blob)
    before = snapshot(run_copy)
    proc = train(f"resume={run_copy}", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'call'}")
    assert_refused(proc, "lacks rng")
    assert snapshot(run_copy) == before


# --- 5. the report counts each run once --------------------------------------------------------


def test_the_report_counts_each_run_once_however_its_inputs_overlap(finished_run, tmp_path):
    from gan import report

    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(finished_run, runs / name)
    summary = json.loads((runs / "b" / "summary.json").read_text())  # b: another seed's run
    (runs / "b" / "summary.json").write_text(json.dumps({**summary, "seed": 1}))
    (tmp_path / "link").symlink_to(runs / "a")
    for inputs in ([runs], [runs, runs], [runs, runs / "a"], [runs / "a", tmp_path / "link"]):
        found, _ = report.load_runs(inputs)
        expected = 1 if runs not in inputs else 2
        assert len(found) == expected, inputs


# --- 6. the smaller holes and the last tracebacks: one paragraph, exit 2, no result -----------


def assert_no_result(run_dir: Path) -> None:
    for name in ("summary.json", "metrics.jsonl", "checkpoint.pt", "init_report.json"):
        assert not (run_dir / name).exists(), name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=${oc.env:GAN_NO_SUCH_VARIABLE}", "seed: its value cannot be resolved"),
        ("trainer.lr=${trainer.lr}", "trainer.lr: its value cannot be resolved"),
        ("init.std=inf", "init.std must be a finite number"),
        ("init.gain=inf", "init.gain must be a finite number"),
        (f"logger.tags=[{'t' * 65}]", "W&B refuses tags longer than 64"),
        (f"logger.sweep_id={'s' * 60}", "set a shorter logger.sweep_id"),
    ],
    ids=[
        "env-interpolation",
        "recursive-interpolation",
        "std-inf",
        "gain-inf",
        "long-tag",
        "long-sweep-id",
    ],
)
def test_bad_values_are_one_paragraph(tmp_path, override, message):
    extra = {"init.std": ["init=normal_small"], "init.gain": ["init=xavier"]}.get(
        override.split("=")[0], []
    )
    with pytest.raises(UserError, match=re.escape(message)):
        conftest.run_config([*extra, override], tmp_path)


@pytest.mark.slow
def test_an_unresolvable_value_on_the_command_line_is_exit_2_and_no_result(tmp_path):
    out = tmp_path / "run"
    proc = train("seed=${oc.env:GAN_NO_SUCH_VARIABLE}", *QUICK, f"hydra.run.dir={out}")
    assert_refused(proc, "seed: its value cannot be resolved")
    assert_no_result(out)


@pytest.mark.slow
def test_a_long_tag_makes_a_sweep_job_invalid_not_failed(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train("-m", "seed=0", *QUICK, f"logger.tags=[{'t' * 65}]", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert job_statuses(sweep) == {"0": "invalid"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("summary.json", b"\x00\xff not json", "summary.json or .hydra/overrides.yaml is not"),
        (".hydra/overrides.yaml", b"\x00\xff\xfe{{[", "summary.json or .hydra/overrides.yaml"),
        ("summary.json", b'{"overrides": [1, 2]}', "does not list the run's overrides"),
    ],
    ids=["summary-bytes", "overrides-bytes", "overrides-not-strings"],
)
def test_resume_with_damaged_run_files_is_one_paragraph(run_copy, tmp_path, name, content, message):
    if name.startswith(".hydra"):
        (run_copy / "summary.json").unlink()  # so that overrides.yaml is what resume reads
    (run_copy / name).write_bytes(content)
    before = snapshot(run_copy)
    proc = train(f"resume={run_copy}", f"hydra.run.dir={tmp_path / 'call'}")
    assert_refused(proc, message)
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_resume_of_a_directory_of_random_bytes_is_one_paragraph(tmp_path):
    junk = tmp_path / "junk"
    (junk / ".hydra").mkdir(parents=True)
    for name in ("checkpoint.pt", "summary.json", ".hydra/overrides.yaml", "metrics.jsonl"):
        (junk / name).write_bytes(os.urandom(2000))
    proc = train(f"resume={junk}", f"hydra.run.dir={tmp_path / 'call'}")
    assert_refused(proc)


@pytest.mark.slow
def test_a_garbage_metrics_line_before_the_checkpoint_is_refused_at_once(run_copy, tmp_path):
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    lines[0] = b"[1,2,3]" + b" " * (len(lines[0]) - 8) + b"\n"  # same length: offsets still hold
    metrics.write_bytes(b"".join(lines))
    before = snapshot(run_copy)
    proc = train(f"resume={run_copy}", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'call'}")
    assert_refused(proc, "metrics.jsonl line 1 is not a JSON object")
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_samples_being_a_file_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples").write_text("not a directory")
    proc = train(*QUICK, f"hydra.run.dir={out}")
    assert_refused(proc, "samples is a file")
    assert_no_result(out)


def test_a_claim_with_a_pid_that_is_no_number_is_taken_over(tmp_path):
    import socket

    (tmp_path / ".claim").write_text(json.dumps({"pid": "abc", "host": socket.gethostname()}))
    with files.claimed(tmp_path):
        assert json.loads((tmp_path / ".claim").read_text())["pid"] == os.getpid()


def test_two_processes_taking_over_one_stale_claim_leave_it_one_holder(tmp_path, monkeypatch):
    # The worst order: both find the claim of a process that is gone, and the second goes on only
    # once the first has made its own. Without a lock the second deletes that new claim and makes
    # its own: two processes would write one run. (Two threads stand for the two processes: a
    # claim made names this process, which is alive.)
    import socket
    import threading

    gone = json.dumps({"pid": -1, "host": socket.gethostname()})
    claim = tmp_path / ".claim"
    claim.write_text(gone)
    first_looked, second_looked, done = (threading.Event() for _ in range(3))
    refuse = files._refuse_live_claim

    def replaced() -> bool:
        try:
            return claim.read_text() != gone
        except FileNotFoundError:  # between the first's delete and its new claim
            return False

    def looking(path, directory):
        refuse(path, directory)  # raises for a live claim, returns for the stale one
        if threading.current_thread().name == "first":
            first_looked.set()
            second_looked.wait(timeout=1)  # the second looks too, unless a lock keeps it out
        else:
            second_looked.set()
            wait_for(replaced, timeout=5)

    outcomes: list[str] = []

    def take() -> None:
        try:
            with files.claimed(tmp_path):
                outcomes.append("held")
                done.wait(timeout=10)
        except files.ClaimRefused:
            outcomes.append("refused")

    monkeypatch.setattr(files, "_refuse_live_claim", looking)
    first, second = (threading.Thread(target=take, name=n) for n in ("first", "second"))
    first.start()
    assert first_looked.wait(timeout=10)
    second.start()
    wait_for(lambda: len(outcomes) == 2, timeout=10)
    done.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert sorted(outcomes) == ["held", "refused"]


def test_a_run_directory_that_cannot_be_made_is_one_paragraph(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot be written"):
        with files.claimed(tmp_path / "file" / "run"):
            pass


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _edit_summary(d, arm=None), "has no 'arm'"),
        (lambda d: _edit_summary(d, seed="seven"), "has a bad value"),
        (lambda d: (d / "metrics.jsonl").write_text("[1,2,3]\n"), "line 1 is not a valid record"),
        (lambda d: (d / "summary.json").write_text("[]"), "holds no summary"),
    ],
    ids=["no-arm", "seed-not-a-number", "metrics-line-a-list", "summary-a-list"],
)
def test_the_report_skips_a_damaged_run_with_its_reason(finished_run, tmp_path, damage, message):
    from gan import report

    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(finished_run, runs / name)
    damage(runs / "b")
    found, skipped = report.load_runs([runs])
    assert len(found) == 1 and message in str(skipped[0]), skipped


def _edit_summary(run_dir: Path, **changes) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(changes)
    summary = {k: v for k, v in summary.items() if v is not None}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_a_report_out_that_cannot_be_written_is_exit_2(finished_run, tmp_path, capsys, caplog):
    from gan import report

    (tmp_path / "out").write_text("a file")
    assert report.main([str(finished_run), "--out", str(tmp_path / "out")]) == 2
    # stderr, or the log when an earlier test of this worker set logging up
    said = capsys.readouterr().err + caplog.text
    assert "the report cannot be written there" in said


def test_probe_inputs_that_cannot_work_are_exit_2(tmp_path, capsys, caplog):
    from gan import probe

    assert probe.main(["--width", "10000000", "--out", str(tmp_path / "p")]) == 2
    assert "use a smaller --width" in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "p").exists()
    (tmp_path / "file").write_text("x")
    small = ["--depth", "2", "--width", "4", "--samples", "8"]
    assert probe.main([*small, "--out", str(tmp_path / "file")]) == 2
    assert "cannot write there" in capsys.readouterr().err + caplog.text


def test_bench_inputs_that_cannot_work_are_exit_2(tmp_path, capsys, caplog):
    from gan import bench

    quick = ["--dataset", "digits", "--steps", "1", "--repeats", "1", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_:
        bench.main([*quick, "--batch-size", "1"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        bench.main([*quick, "--threads", "-1"])
    assert exit_.value.code == 2
    (tmp_path / "file").write_text("x")
    assert bench.main([*quick, "--data-dir", str(tmp_path / "file")]) == 2
    assert "data_dir" in capsys.readouterr().err + caplog.text
    too_big = ["--batch-size", "100000", "--data-dir", str(conftest.DATA_DIR)]
    assert bench.main([*quick, *too_big]) == 2
    assert "exceeds the" in capsys.readouterr().err + caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init=foo,default"], "init=foo in this sweep: there is no such option"),
        ([f"model.discriminator_widths=[{','.join(['256'] * 60)}]"], "more than the 255"),
    ],
    ids=["unknown-option", "job-dir-name-too-long"],
)
def test_a_sweep_hydra_would_end_at_its_first_job_is_refused_before_any(
    tmp_path, overrides, message
):
    sweep = tmp_path / "sweep"
    proc = train("-m", "seed=0", *overrides, *QUICK, f"hydra.sweep.dir={sweep}")
    assert_refused(proc, message)
    assert not sweep.exists()


class DiskFull:
    """A metrics file on a disk that fills up: half of the next write lands, then ENOSPC."""

    def __init__(self, real):
        self.real = real

    def write(self, text: str) -> int:
        import errno

        self.real.write(text[: len(text) // 2])
        self.real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_full_disk_leaves_no_half_metrics_line_and_says_so(tmp_path):
    from gan import tracking
    from gan.config import LoggerConfig, preset

    run = tracking.RunIdentity(out_dir=tmp_path, name="n", group="g", tags=(), config={})
    logger = tracking.RunLogger(preset(LoggerConfig, "logger"), run, mode="disabled")
    with logger:
        logger.log(1, {"train/loss_D": 0.5})
        first = (tmp_path / "metrics.jsonl").read_bytes()
        logger._metrics = DiskFull(logger._metrics)
        with pytest.raises(UserError, match="the disk is full or failing"):
            logger.log(2, {"train/loss_D": 0.25})
        assert (tmp_path / "metrics.jsonl").read_bytes() == first
        logger.log(3, {"train/loss_D": 0.125})  # space freed: the record goes on whole
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 3]


def test_networks_too_large_for_memory_are_refused_before_any_allocation(tmp_path):
    from gan import run

    cfg = conftest.run_config(["model.discriminator_widths=[100000,100000]"], tmp_path)
    state = torch.get_rng_state()
    with pytest.raises(UserError, match="use smaller"):
        run.prepare(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    assert not any(tmp_path.iterdir())


def test_a_ctrl_c_during_the_start_up_imports_waits_for_them_then_is_one_line(capsys):
    # Raised inside torch's import (its C++ calling back into Python) it would abort the process.
    from gan.signals import START_UP_INTERRUPTED, kept_during_imports

    before = signal.getsignal(signal.SIGINT)
    imported = []
    with pytest.raises(SystemExit) as stopped, kept_during_imports():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here: no KeyboardInterrupt in the middle
        imported.append(True)
    assert imported and stopped.value.code == 130
    assert capsys.readouterr().err == START_UP_INTERRUPTED + "\n"
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
@pytest.mark.parametrize(
    "command,delay",  # after torch began to load: the interpreter's own start is behind it
    [
        ([str(ROOT / "train.py")], 0.0),
        ([str(ROOT / "train.py")], 0.4),
        ([str(ROOT / "train.py")], 0.8),
        (["-m", "gan"], 0.1),  # the gan-train entry point's module
    ],
)
def test_ctrl_c_during_start_up_is_one_line(tmp_path, command, delay):
    # Wherever the signal lands (imports, set-up, or already the run: then it is preempted,
    # also 130), never after the last step: the run is too long for that.
    proc = subprocess.Popen(
        [sys.executable, *command, *QUICK, "trainer.steps=100000"]
        + [f"hydra.run.dir={tmp_path / 'run'}", f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wait_for(lambda: "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text())
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]


@pytest.mark.parametrize(
    "override,says",
    [
        ("seed=${oc.env:GAN_NO_SUCH_VARIABLE}", "cannot be resolved"),
        ("hydra.run.dir={tmp}/" + "x" * 300, "longer than"),
        ("hydra.run.dir={tmp}/a_file/run", "is not a directory"),
    ],
    ids=["unresolvable-seed", "name-too-long", "under-a-file"],
)
def test_a_run_directory_hydra_cannot_name_or_make_is_one_paragraph(tmp_path, override, says):
    (tmp_path / "a_file").write_text("")
    before = set(ROOT.glob("outputs/*/*"))
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            override.replace("{tmp}", str(tmp_path)),
            "logger.mode=disabled",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and says in proc.stderr
    assert "Traceback" not in proc.stderr
    assert set(ROOT.glob("outputs/*/*")) == before  # nothing made
