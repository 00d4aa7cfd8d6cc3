"""A multirun from start to end: signals that stop it cleanly, and at its end one line per job that
did not finish, the ablation report in ``<sweep dir>/report/``, and an exit status that says
whether every job ran.

Registered as a Hydra callback in ``conf/config.yaml``. Each job leaves its outcome in its own
``summary.json`` (``train.py`` writes one even for a job refused as invalid), so this works the
same whichever launcher ran the jobs, in this process or elsewhere.

Stopping: a SIGINT/SIGTERM to the sweep, or to any of its jobs, or a worker killed, writes
``<sweep dir>/.stop`` (the first reason wins). Jobs in flight then checkpoint and end
``preempted`` (a worker's watchdog asks them, see ``watch_sweep``), jobs not yet started do not
start, and the summary lists them as not started (``gan.sweep_outcomes`` reads what each job came
to). The same command with
``hydra.sweep.dir=<sweep dir>`` completes exactly the jobs that did not finish: finished ones are
kept, stopped or killed ones resume from their checkpoint, the others start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gan import files, signals
from gan.errors import EXIT_USER_ERROR, UserError
from gan.sweep_outcomes import job_outcomes, rerun_command, settle_killed_jobs, summarize
from gan.sweep_plan import check_sweep, planned_jobs

STOP_FILE = ".stop"
SWEEP_PID = "GAN_SWEEP_PID"  # the sweep's own process, for its workers' watchdogs
SWEEP_MACHINE = "GAN_SWEEP_MACHINE"  # where that process runs (see this_machine)
POLL_SECONDS = 0.5


# --------------------------------------------------------------------------------------------
# Stopping a sweep
# --------------------------------------------------------------------------------------------


def request_stop(sweep_dir: Path, signum: int | None, why: str) -> bool:
    """Asks every job of the sweep to stop (``.stop``, created exclusively: the first reason
    stands); False if it was already asked."""
    stop = {"signal": signum, "why": why, "at": time.strftime("%F %T")}
    try:
        return files.create_whole(Path(sweep_dir) / STOP_FILE, json.dumps(stop))
    except OSError:  # the sweep dir is gone or read-only: the signal still stops this job
        return False


def stop_request(sweep_dir: Path) -> dict[str, Any] | None:
    """Why the sweep was asked to stop, or None."""
    path = Path(sweep_dir) / STOP_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # damaged (it is written whole): a stop all the same
        return {"signal": None, "why": "asked to stop"}


def _sweep_pid() -> int | None:
    """The sweep's process, if this process runs on the sweep's machine: a job that a cluster
    launcher (submitit_slurm) runs on another node inherits the variables, not the process."""
    pid = os.environ.get(SWEEP_PID, "")
    if os.environ.get(SWEEP_MACHINE, this_machine()) != this_machine():
        return None
    return int(pid) if pid.isdigit() else None


def this_machine() -> str:
    """The host's name and its kernel's boot id (Linux): alike for the processes of one machine."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()} {boot}".strip()


def orphaned() -> bool:
    """True in a worker process whose sweep process is gone (killed hard): no such process, or,
    for a worker the sweep started itself, a new parent (the sweep may linger as a zombie)."""
    pid = _sweep_pid()
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return _watch["ppid"] == pid and os.getppid() != pid


def why_not_start(sweep_dir: Path) -> str | None:
    """Why a job of this sweep must not start now, or None."""
    if orphaned():
        return "the sweep's process is gone"
    stop = stop_request(sweep_dir)
    return f"the sweep is stopping ({stop['why']})" if stop else None


_watch = {"started": False, "in_job": False, "ppid": None}


def watch_sweep(sweep_dir: Path) -> None:
    """In a worker process of a parallel launcher: a daemon thread that asks the job in progress
    to checkpoint and stop once the sweep is stopping or its process is gone, and ends an idle
    worker whose sweep is gone, so that no worker outlives its sweep."""
    if _sweep_pid() in (None, os.getpid()) or _watch["started"]:
        return
    _watch["started"], _watch["ppid"] = True, os.getppid()
    threading.Thread(target=_watching, args=(Path(sweep_dir),), daemon=True).start()


def _watching(sweep_dir: Path) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        gone = orphaned()
        if not (gone or (sweep_dir / STOP_FILE).exists()):
            continue
        if signals.request_stop(signal.SIGTERM) or _watch["in_job"]:
            continue  # the job checkpoints and ends: this worker exits after it if orphaned
        if gone:
            os._exit(128 + signal.SIGTERM)


class job_in_progress:  # noqa: N801 - used as a context manager, like a function
    """Marks a job as running in this worker (the watchdog ends only idle orphans)."""

    def __enter__(self) -> None:
        _watch["in_job"] = True

    def __exit__(self, *exc: object) -> None:
        _watch["in_job"] = False


def write_sweep_report(sweep_dir: Path) -> str:
    """Writes ``gan.report``'s report of the sweep into ``<sweep_dir>/report/``; returns one line
    saying where it is, or why there is none. Never raises: the jobs' results stand whatever
    happens to their report."""
    from gan import report

    out = Path(sweep_dir) / "report"
    try:
        runs, incomplete = report.load_runs([sweep_dir])
        out.mkdir(exist_ok=True)
        report.write_reports(runs, incomplete, out, threshold=None)
    except UserError as err:  # nothing finished, or runs that cannot be averaged
        return f"report: none written: {err}"
    except Exception as err:  # noqa: BLE001 - a report bug must not turn a sweep into a failure
        return (
            f"report: failed ({type(err).__name__}: {err}); "
            f"`python -m gan.report {sweep_dir}` shows the traceback"
        )
    return f"report: {out / 'report.html'} (and report.md, figures, summary.csv)"


def stop_the_sweep(sweep_dir: Path, signum: int) -> None:
    """The sweep's process got SIGINT/SIGTERM outside a run: no job starts, and a job of this
    process that was preparing its run (the basic launcher) stops at its first step."""
    signals.keep_for_next_run(signum)
    name = signal.Signals(signum).name
    if request_stop(sweep_dir, signum, f"{name} to the sweep (pid {os.getpid()})"):
        print(
            f"sweep: {name}: the jobs in flight write a checkpoint and stop, no new job "
            "starts; the summary follows",
            file=sys.stderr,
            flush=True,
        )


def report_unless_stopped(sweep_dir: Path) -> tuple[str, int | None]:
    """``write_sweep_report``'s line, or the line saying that a SIGINT/SIGTERM skipped it (with
    that signal): a large sweep's report takes a while, and a Ctrl-C then means "enough"."""

    def skip(signum: int, frame: Any) -> None:
        raise _ReportSkipped(signum)

    if threading.current_thread() is not threading.main_thread():
        return write_sweep_report(sweep_dir), None
    try:
        with signals.handled_by(skip):
            return write_sweep_report(sweep_dir), None
    except _ReportSkipped as skipped:
        name = signal.Signals(skipped.signum).name
        line = f"report: skipped ({name}); `python -m gan.report {sweep_dir}` writes it"
        return line, skipped.signum


class _ReportSkipped(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class SweepSummary(Callback):
    """Stops the sweep cleanly on SIGINT/SIGTERM; at its end prints the outcome per job, writes its
    report (``report: false`` turns that off, e.g. ``hydra.callbacks.sweep_summary.report=false``)
    and exits 1 if a job failed other than by diverging (128 + the signal if stopped by one)."""

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self.previous: dict[int, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep(config)
        except UserError as err:  # before Hydra composes the jobs: one paragraph, no files
            # Printed: the parent's logging is Hydra's own here (stdout, "[HYDRA]" lines).
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # an earlier launch's: this one runs
        # Inherited by the workers, for their watchdog.
        os.environ[SWEEP_PID], os.environ[SWEEP_MACHINE] = str(os.getpid()), this_machine()
        guard_joblib_launcher()
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: Any) -> None:
            stop_the_sweep(sweep_dir, signum)

        self.previous = {s: signal.signal(s, stop) for s in signals.STOP_SIGNALS}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep's handlers stay until the summary and the rerun line are out: a signal now
        # changes nothing they say. The report then yields to one (``report_unless_stopped``).
        try:
            code = self._summarize(Path(config.hydra.sweep.dir), planned_jobs(config))
        finally:
            for s, handler in self.previous.items():
                signal.signal(s, handler)
        if code:
            raise SystemExit(code)

    def _summarize(self, sweep_dir: Path, planned: list[str]) -> int:
        """Prints the sweep's outcome and writes its report; returns its exit status."""
        stop = stop_request(sweep_dir)
        outcomes = job_outcomes(sweep_dir, planned)
        if stop:
            settle_killed_jobs(outcomes, f"killed: {stop['why']}")
            outcomes = job_outcomes(sweep_dir, planned)
        lines, failed = summarize(outcomes)
        # Printed, not logged: after the jobs, logging is Hydra's own (stdout, "[HYDRA]" lines).
        stream = sys.stderr if failed or stop else sys.stdout
        print("\n".join(lines), file=stream, flush=True)
        code = 0
        if stop:
            code = 128 + stop["signal"] if stop.get("signal") else 1
            print(
                f"sweep {sweep_dir}: stopped ({stop['why']}); the jobs above did not finish. "
                f"To complete exactly those: {rerun_command(sweep_dir)}",
                file=stream,
                flush=True,
            )
        elif failed:
            code = 1
            print(
                f"sweep {sweep_dir}: some jobs did not finish (above); exit status 1",
                file=stream,
                flush=True,
            )
        if self.report:
            line, signum = report_unless_stopped(sweep_dir)
            print(line, flush=True)
            code = code or (128 + signum if signum else 0)
        return code


def joblib_worker_started(sweep_dir: str) -> None:
    """A joblib worker's initializer: a SIGINT/SIGTERM outside its runs is kept for the next
    (``signals.outside_runs``), and its watchdog runs from the start, so that a worker that has
    not begun a job yet also ends with a sweep killed hard."""
    signals.outside_runs()
    watch_sweep(Path(sweep_dir))


def guard_joblib_launcher() -> None:
    """Makes Hydra's joblib launcher stop the sweep cleanly: its workers remember a SIGINT/SIGTERM
    that comes outside their runs and watch the sweep from the start (``joblib_worker_started``,
    their initializer), and a broken worker pool stops the sweep instead of ending it in a
    traceback before the summary: a worker killed (the OOM killer, ``kill -9``), or one that a
    Ctrl-C reached as it started. joblib kills the other workers at once, and the summary, report
    and exit status follow as for any stopped sweep. The plugin has no hook for either, so its
    launch function is wrapped (in this process only)."""
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
        from joblib.externals.loky.process_executor import (
            BrokenProcessPool,
            TerminatedWorkerError,
        )
    except ImportError:  # the plugin is optional
        return
    launch = _core.launch
    if getattr(launch, "stops_the_sweep", False):
        return

    def guarded(launcher: Any, job_overrides: Any, initial_job_idx: int) -> Any:
        if "initializer" not in launcher.joblib:  # joblib.Parallel's, passed on to its workers
            launcher.joblib["initializer"] = joblib_worker_started
            launcher.joblib["initargs"] = (str(launcher.config.hydra.sweep.dir),)
        try:
            return launch(launcher, job_overrides, initial_job_idx)
        except BrokenProcessPool as err:
            sweep_dir = Path(launcher.config.hydra.sweep.dir)
            killed = isinstance(err, TerminatedWorkerError)
            if not killed and stop_request(sweep_dir) is None:  # no signal's doing: say what
                print("".join(traceback.format_exception(err)), file=sys.stderr, flush=True)
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            # A signal to the sweep wrote its own reason first, and that one stands.
            request_stop(
                sweep_dir,
                None,
                f"a worker process {'was killed' if killed else 'broke'} ({why.rstrip('.')}); "
                "joblib then killed the other workers at once",
            )
            return []

    guarded.stops_the_sweep = True  # type: ignore[attr-defined]
    _core.launch = guarded
