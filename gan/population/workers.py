"""Populations trained in worker processes, several at once (``hydra.launcher.n_jobs``).

One spawned process per population: it is sent the population's enrolled jobs (pickled), trains
them with ``run_population`` exactly as the launcher's own process would, sends back an
``Outcome`` and exits. Spawned, not forked: a forked child would inherit torch's thread pools and
the parent's locks; a fresh interpreter sets its own thread count. A worker stops as the jobs of
any parallel launcher do: on its own SIGINT/SIGTERM (every member checkpoints), or when the sweep
is stopping (``<sweep dir>/.stop``, read by ``gan.sweeps.watch_sweep``).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
from hydra.core.utils import configure_log
from omegaconf import DictConfig

from gan import signals, sweeps
from gan.console import progress_bar, write_above_bars
from gan.population.enrollment import Enrolled
from gan.population.run import PopulationPreempted, run_population, start_step
from gan.record import NOT_STARTED, Status

log = logging.getLogger(__name__)

# What became of a population: its members' statuses where they are alike (and the sweep's
# NOT_STARTED), or a killed worker.
FINISHED, PREEMPTED, FAILED = Status.finished, Status.preempted, Status.failed
KILLED = "killed"


@dataclass
class Outcome:
    """What became of one population: its members' summaries, in order, when it ran."""

    status: str  # FINISHED | PREEMPTED | FAILED | NOT_STARTED | KILLED
    summaries: list[dict[str, Any] | None] = field(default_factory=list)  # None: left out
    # The signal that stopped it (PREEMPTED, NOT_STARTED), or that came after its last step
    # (FINISHED): the sweep stops either way.
    signum: int | None = None
    error: BaseException | None = None  # FAILED, KILLED


def train(
    group: Sequence[Enrolled],
    *,
    progress: bool = True,
    on_steps: Callable[[int], None] | None = None,
) -> Outcome:
    """Trains one population in this process, at its members' thread count; whatever happens,
    an Outcome (FINISHED with a ``signum``: a signal came after the last step)."""
    torch.set_num_threads(group[0].env.threads)  # members of one population share it
    try:
        summaries = run_population(group, progress=progress, on_steps=on_steps)
        return Outcome(FINISHED, summaries, signals.take_late_signal())
    except PopulationPreempted as stop:
        log.error("preempted: %s", stop)
        return Outcome(PREEMPTED, stop.summaries, stop.signum)
    except signals.Interrupted as err:  # a second signal: stopped at once; summaries on disk
        log.error("preempted: %s", err)
        return Outcome(PREEMPTED, signum=err.exit_code - 128)
    except KeyboardInterrupt:
        return Outcome(PREEMPTED, signum=signal.SIGINT)
    except Exception as err:  # noqa: BLE001 - each member's summary says it failed; go on
        log.exception("population failed: %s", err)
        return Outcome(FAILED, error=err)


@dataclass(frozen=True)
class Setup:
    """What a worker needs besides its population: the console logging and the sweep."""

    job_logging: DictConfig  # the jobs' console handlers (each member writes its own train.log)
    verbose: Any
    sweep_dir: Path


def _worker(conn, setup: Setup) -> None:
    """A worker process: one population in, its Outcome out; its console lines and trained
    steps go to the sweep's process meanwhile. A signal before its population's run started
    stops it without starting (one during the run checkpoints every member)."""
    signals.outside_runs()  # held back since the spawn (Worker): they arrive now
    sweeps.watch_sweep(setup.sweep_dir)
    pipe = WorkerPipe(conn)
    # Before the handlers are made: they write to sys.stdout / sys.stderr as they are now.
    streams = PipedStream(pipe, STDOUT), PipedStream(pipe, STDERR)
    sys.stdout, sys.stderr = streams
    configure_log(setup.job_logging, setup.verbose)
    group = pickle.loads(conn.recv_bytes())
    why_not = sweeps.why_not_start(setup.sweep_dir)
    early = signals.take_signal_outside_runs()
    if why_not or early is not None:
        outcome = Outcome(NOT_STARTED, signum=early)
    else:
        # Several bars on one terminal would garble: the sweep's process draws one for all.
        steps = StepsSent(pipe)
        with sweeps.job_in_progress():
            outcome = train(group, progress=False, on_steps=steps.add)
        steps.send()
    late = signals.take_signal_outside_runs()  # after its run: the sweep stops all the same
    if outcome.status == FINISHED and outcome.signum is None and late is not None:
        outcome.signum = late
    for stream in streams:
        stream.finish()
    try:
        pipe.send_bytes(_pickled(outcome))
    except OSError:  # the sweep's process is gone, or stopped reading: it settles the members
        pass


class WorkerPipe:
    """A worker's end of its pipe, shared by its threads: each message is sent whole."""

    def __init__(self, conn):
        self.conn, self.lock = conn, threading.Lock()

    def send_bytes(self, message: bytes) -> None:
        with self.lock:
            self.conn.send_bytes(message)

    def send(self, message: Steps | Text) -> bool:
        """Best-effort: False if the sweep's process is gone (its watchdog stops the job)."""
        try:
            self.send_bytes(pickle.dumps(message))
        except OSError:
            return False
        return True


STDOUT, STDERR = "stdout", "stderr"


@dataclass(frozen=True)
class Text:
    """Whole lines a worker wrote to its stdout or stderr, for the sweep's process to print
    above its bar (a worker's own line would land after the bar's text)."""

    stream: str  # STDOUT | STDERR
    text: str


class PipedStream(io.TextIOBase):
    """A worker's sys.stdout or sys.stderr: whole lines go through its pipe, the rest of a line
    waits for its end. Once finished (its Outcome follows), or where the pipe is gone, lines go
    to the process's own stream."""

    def __init__(self, pipe: WorkerPipe, name: str):
        super().__init__()
        self.pipe: WorkerPipe | None = pipe
        self.name = name
        self.own = sys.__stdout__ if name == STDOUT else sys.__stderr__
        self.pending, self.lock = "", threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            head, newline, self.pending = (self.pending + text).rpartition("\n")
        if newline:
            self._send(head + newline)
        return len(text)

    def finish(self) -> None:
        """Sends the last line, even without its end; later lines go to the own stream."""
        with self.lock:
            rest, self.pending = self.pending, ""
        if rest:
            self._send(rest + "\n")
        self.pipe = None

    def _send(self, lines: str) -> None:
        pipe = self.pipe
        if pipe is not None and pipe.send(Text(self.name, lines)):
            return
        if self.own is not None:
            self.own.write(lines)
            self.own.flush()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.own, "encoding", None) or "utf-8"

    def fileno(self) -> int:  # for code that writes the descriptor itself (not piped)
        if self.own is None:
            raise io.UnsupportedOperation("fileno")
        return self.own.fileno()


@dataclass(frozen=True)
class Steps:
    """Member-steps a worker trained since its last report."""

    count: int


class StepsSent:
    """A worker's trained member-steps, sent to the sweep's process at most every ``every``
    seconds (small messages: the pipe fills only if the sweep stops reading for minutes)."""

    def __init__(self, pipe: WorkerPipe, every: float = 0.5):
        self.pipe, self.every = pipe, every
        self.pending, self.sent_at = 0, time.monotonic()

    def add(self, member_steps: int) -> None:
        self.pending += member_steps
        if time.monotonic() - self.sent_at >= self.every:
            self.send()

    def send(self) -> None:
        if not self.pending:
            return
        self.pipe.send(Steps(self.pending))
        self.pending, self.sent_at = 0, time.monotonic()


def _pickled(outcome: Outcome) -> bytes:
    try:
        return pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - an error that does not pickle goes back as its text
        text = f"{type(outcome.error).__name__}: {outcome.error}"
        return pickle.dumps(
            Outcome(outcome.status, outcome.summaries, outcome.signum, RuntimeError(text))
        )


class Worker:
    """One spawned process training one population."""

    def __init__(self, context, setup: Setup, group: Sequence[Enrolled]):
        self.group = group
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, setup), name="population")
        # Started first: starting it unblocks SIGINT/SIGTERM in this thread (multiprocessing's
        # own guard for it), which would undo the hold below.
        resource_tracker.ensure_running()
        with signals.held():  # until the worker can take them: not while it imports
            self.process.start()
        child.close()
        # From a thread: a resumed group carries its checkpoints, more than a pipe holds, and the
        # worker reads it only once torch is imported; the next worker starts meanwhile. One
        # that dies first is read as KILLED (``read``).
        # The thread writes through its own descriptor of the pipe: closing this one (``close``)
        # never pulls it from under a write in progress.
        own = Connection(os.dup(self.conn.fileno()), readable=False)
        self.sender = threading.Thread(
            target=_send, args=(own, pickle.dumps(list(group))), daemon=True
        )
        self.sender.start()

    def read(self, on_steps: Callable[[int], None]) -> Outcome | None:
        """What it sent: its steps (to ``on_steps``) and console lines (printed above the
        bars), then its Outcome; KILLED if it exited without one; None while it trains."""
        # Alive or not before reading: a process already gone has sent all it ever will, while
        # one that exits during the reading may have sent its Outcome after the last poll.
        alive = self.process.is_alive()
        try:
            while self.conn.poll():
                message = pickle.loads(self.conn.recv_bytes())
                if isinstance(message, Outcome):
                    return message
                if isinstance(message, Text):
                    _print(message)
                else:
                    on_steps(message.count)
        except (EOFError, OSError):
            pass
        except pickle.UnpicklingError:  # a message cut short: nothing after it can be read
            self.process.terminate()  # its members checkpoint, as on a signal
            self.conn.close()  # nobody reads on: its writes must not block its exit
            alive = False
        if alive:
            return None
        self.process.join()
        code = self.process.exitcode
        how = f"by {signal.Signals(-code).name}" if code < 0 else f"with status {code}"
        return Outcome(KILLED, error=RuntimeError(f"its worker process ended {how}"))

    def close(self) -> None:
        # Closed before the wait: a worker stopped while it still writes must not block on a
        # full pipe that nobody reads (its lines then go to its own stream).
        self.conn.close()
        self.process.join()
        self.sender.join()  # done, or ended by the worker's exit (a broken pipe)


def _send(conn, payload: bytes) -> None:
    """A population to its worker (``Worker``), then the thread's descriptor closed."""
    try:
        conn.send_bytes(payload)
    except OSError:  # the worker is gone: its exit says how
        pass
    finally:
        conn.close()


def _print(text: Text) -> None:
    """A worker's lines, above the sweep's bar; a terminal that is gone (a closed pipe to
    ``head``) loses them but stops nothing."""
    try:
        write_above_bars(text.text, sys.stdout if text.stream == STDOUT else sys.stderr)
    except OSError:
        pass


def run_parallel(
    groups: Sequence[Sequence[Enrolled]],
    processes: int,
    setup: Setup,
    record: Callable[[Sequence[Enrolled], Outcome], bool],
    *,
    progress: bool = True,
) -> None:
    """Trains ``groups`` in at most ``processes`` workers at once, in order; ``record`` takes
    each Outcome as it comes and returns False to start no further population (each left then
    gets a NOT_STARTED Outcome). One bar counts every worker's member-steps."""
    context = multiprocessing.get_context("spawn")
    pending, running, stopping = list(groups), [], False
    total = sum(steps_left(member) for group in groups for member in group)
    bar = progress_bar(total, desc="sweep", unit="member-step", enabled=progress)
    try:
        while pending or running:
            stopping = stopping or bool(sweeps.why_not_start(setup.sweep_dir))
            while pending and len(running) < processes and not stopping:
                running.append(Worker(context, setup, pending.pop(0)))
            if not running:
                break
            for worker in _ready(running):
                outcome = worker.read(bar.update)
                if outcome is None:
                    continue
                running.remove(worker)
                worker.close()
                stopping = not record(worker.group, outcome) or stopping
    finally:
        bar.close()
        for worker in running:  # only on an error here: the workers checkpoint and stop
            worker.process.terminate()
            worker.close()
    for group in pending:
        record(group, Outcome(NOT_STARTED))


def steps_left(member: Enrolled) -> int:
    return max(0, member.cfg.trainer.steps - start_step(member))


def _ready(running: list[Worker]) -> list[Worker]:
    """The workers that sent something or exited, once one has (waits)."""
    ready = set(wait([w.conn for w in running] + [w.process.sentinel for w in running]))
    return [w for w in running if w.conn in ready or w.process.sentinel in ready]
