"""A population's run: its members trained together, each still a run of its own.

Every member gets what a solo run gets, from the solo run's own phases (``gan.run``): its claimed
run directory, init table and ``init_report.json``, ``metrics.jsonl``, samples, checkpoints that
resume solo or in a population, its own W&B run and ``summary.json``. Only the training loop is
shared (``PopulationTrainer``), and the dataset, its evaluator and the data loading with it.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from gan import files, finish, record, signals, sweep_outcomes
from gan import run as solo
from gan.console import progress_bar, train_command, train_log
from gan.errors import UserError, report_user_error
from gan.events import Evaluation, RunEvents
from gan.population.enrollment import Enrolled
from gan.population.trainer import PopulationTrainer
from gan.record import Ending, Status
from gan.schedule import Schedule
from gan.trainer import GANTrainer, TrainResult

log = logging.getLogger(__name__)

# What members of one population may differ in: everything else must be equal, or they could
# not train in lockstep on one batch of data.
MEMBER_KEYS = ("seed", "init", "logger", "resume")


def population_key(member: Enrolled) -> str:
    """Members with equal keys can train as one population."""
    resolved = {k: v for k, v in member.cfg.resolved.items() if k not in MEMBER_KEYS}
    at = [start_step(member), open_window(member)]
    identity = [resolved, str(member.env.device), member.env.precision, *at]
    return json.dumps(identity, sort_keys=True, default=str)


def start_step(member: Enrolled) -> int:
    """The step a member trains from: its checkpoint's when resumed, else 0."""
    return member.env.resumed["trainer"]["step"] if member.env.resumed else 0


def open_window(member: Enrolled) -> int:
    """The steps of the logging window a member resumes in: a run that finished at a step
    closed its window there, one stopped there may not have."""
    return member.env.resumed["trainer"]["window_steps"] if member.env.resumed else 0


def populations(members: Sequence[Enrolled], max_members: int) -> list[list[Enrolled]]:
    """The jobs grouped into populations (in sweep order), each at most ``max_members`` big."""
    groups: dict[str, list[Enrolled]] = {}
    for member in members:
        groups.setdefault(population_key(member), []).append(member)
    return [
        group[i : i + max_members]
        for group in groups.values()
        for i in range(0, len(group), max_members)
    ]


@dataclass
class Member:
    """One member's run: its config, environment, solo trainer, records and results so far."""

    cfg: Any  # RunConfig
    env: solo.Environment
    trainer: GANTrainer | None = None
    records: list = field(default_factory=list)
    evaluation: Evaluation | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    saved: dict[str, int | None] = field(default_factory=dict)
    on_accepted: Callable[[], None] | None = None  # as ``gan.run.run``'s, once it is built


def run_population(
    enrolled: Sequence[Enrolled],
    *,
    progress: bool = True,
    on_steps: Callable[[int], None] | None = None,
) -> list[dict[str, Any] | None]:
    """Trains the enrolled jobs (one population) together; returns their summaries in order (a
    signal after the last step is left to ``signals.take_late_signal``, as for a solo run). A
    job whose run directory cannot be claimed is left out, as a solo sweep leaves it.
    ``on_steps(n)`` is told the member-steps as they are trained (a worker's sweep bar)."""
    with signals.stop_on_signals() as asked, ExitStack() as claims:
        slots = [accept(e, claims) for e in enrolled]  # a Member, or a refused job's result
        members = [m for m in slots if isinstance(m, Member)]
        if not members:
            return slots
        images = load_members(members, progress)
        members = [m for m in members if m.trainer is not None]  # the others: invalid
        if not members:
            return _summaries(slots)
        for m in members:
            with member_log(m.cfg.out_dir, console=False):
                solo.announce(m.cfg, m.env, m.trainer, m.records, len(images))
        log.info(
            "population of %d (%s on %s): %s",
            len(members),
            members[0].cfg.model.name,
            members[0].env.device,
            ", ".join(m.cfg.run_name for m in members),
        )
        results = train_members(members, asked, progress, on_steps)
    summaries = _summaries(slots)
    if any(r.status == Ending.stopped for r in results):
        raise PopulationPreempted(asked["signal"], max(r.step for r in results), summaries)
    for m, result in zip(members, results):
        with member_log(m.cfg.out_dir, console=True):
            finish.log_result(m.cfg, m.summary, result)
    return summaries


def _summaries(slots: list) -> list[dict[str, Any] | None]:
    """Each job's result in order: a member's summary, or the result its refusal left."""
    return [m.summary if isinstance(m, Member) else m for m in slots]


def accept(job: Enrolled, claims: ExitStack) -> Member | dict[str, Any] | None:
    """The job as a member, its run directory this process's until ``claims`` closes; else its
    result as a solo sweep's job would have it: None for a directory another live process
    writes (its summary is that process's), ``invalid`` for one that cannot be written, the
    summary of a run another launch of the sweep finished since the job was enrolled."""
    out_dir = job.cfg.out_dir
    with ExitStack() as held:
        try:
            held.enter_context(files.claimed(out_dir))
        except files.ClaimRefused as err:
            report_user_error(err)
            return None
        except UserError as err:
            report_user_error(err)
            return sweep_outcomes.job_failed(out_dir, Status.invalid, err)
        # A population starts long after its jobs were checked: one finished meanwhile is kept.
        done = record.Summary(out_dir).final_status()
        if done:
            log.info("%s: kept, %s by another launch of this sweep", out_dir, done)
            return record.Summary(out_dir).read()
        claims.enter_context(held.pop_all())
    files.remove_partials(out_dir)  # left by a process killed mid-write
    return Member(job.cfg, job.env, on_accepted=job.on_accepted)


class PopulationPreempted(signals.Preempted):
    """Every member stopped on SIGINT/SIGTERM after writing its checkpoint."""

    def __init__(self, signum: int, step: int, summaries: list[dict[str, Any] | None]):
        super().__init__(
            signum,
            f"{signal.Signals(signum).name} at step {step}: every member's checkpoint written; "
            f"one member continues alone with `{train_command()} resume=DIR`, all of them with the "
            "sweep's own command and its hydra.sweep.dir",
        )
        self.signum, self.summaries = signum, summaries


def load_members(members: list[Member], progress: bool) -> torch.Tensor | None:
    """The shared training split and evaluator, and every member's trainer and evaluation. A
    member refused as its solo run would be (its checkpoint does not load; every member when the
    data does not) is recorded ``invalid``, with nothing of its run changed, and gets no trainer."""
    first = members[0]
    try:
        images, evaluation = solo.load_data(first.cfg, first.env.device, progress)
    except UserError as err:
        for m in members:
            _refuse(m, err)
        return None
    evaluator = evaluation.evaluator if evaluation else None  # one for all: same data, classifier
    for m in members:
        try:
            m.trainer, m.records = solo.build_trainer(
                m.cfg, m.env, images, allow_channels_last=False
            )
        except UserError as err:
            _refuse(m, err)
            continue
        if m.on_accepted:
            m.on_accepted()
        if evaluator is not None:
            noise = solo.eval_noise(m.cfg, evaluator, m.env.device)
            m.evaluation = Evaluation(evaluator, noise)
    return images


def _refuse(m: Member, err: UserError) -> None:
    with member_log(m.cfg.out_dir, console=True):
        report_user_error(err)
    m.summary = sweep_outcomes.job_failed(m.cfg.out_dir, Status.invalid, err)


@contextmanager
def member_log(out_dir, *, console: bool) -> Iterator[None]:
    """Lines the package logs meanwhile go to the member's own train.log (and the console if
    ``console``), as a solo run's do."""
    package_log = logging.getLogger(__name__.partition(".")[0])  # gan and all its modules
    propagate, package_log.propagate = package_log.propagate, console
    try:
        with train_log(out_dir, package_log):
            yield
    finally:
        package_log.propagate = propagate


class MemberEvents:
    """The population's side of its loop (``PopulationEvents``): each member's ``RunEvents``,
    with evaluation batched: every member's images made in one stacked pass per batch."""

    def __init__(
        self, members: list[Member], events: list[RunEvents], asked: dict[str, int | None]
    ):
        self.members, self.events, self.asked = members, events, asked

    def evaluate(self, step: int, trainer: PopulationTrainer, members: list[int]) -> None:
        evaluations = [e.evaluation for e in self.events]
        if evaluations[0] is None:
            return
        noise = torch.stack([e.noise for e in evaluations])  # (K, N, z_dim)
        batch = evaluations[0].evaluator.batch
        images = torch.cat(
            [trainer.generate(noise[:, i : i + batch]) for i in range(0, noise.shape[1], batch)],
            dim=1,
        )  # (K, N, C, H, W)
        scores = evaluations[0].evaluator.score_members(images[members])  # one evaluator for all
        for k, member_scores in zip(members, scores):
            self.events[k].record_scores(step, member_scores)

    def checkpoint(self, step: int, members: list[int]) -> None:
        for k in members:
            self.events[k].checkpoint(step)

    def diverged(self, k: int, result: TrainResult) -> None:
        """Member ``k``'s result on disk at once, as its solo run's would be: a worker killed
        later keeps it, and a rerun of the sweep does not train it again."""
        if _settled(self.members[k], result):
            _write_summary(self.members[k])

    def should_stop(self) -> bool:
        return self.asked["signal"] is not None


def train_members(
    members: list[Member],
    asked: dict[str, int | None],
    progress: bool,
    on_steps: Callable[[int], None] | None = None,
) -> list[TrainResult]:
    """As ``gan.run.train`` for each member: summary.json says ``running`` meanwhile and the
    truth after, whatever happens."""
    for m in members:
        m.summary = {**solo.start_summary(m.cfg, m.env), "population": len(members)}
        m.best = dict(m.env.resumed["best"]) if m.env.resumed else {}
        m.saved = {"step": m.trainer.step if m.env.resumed else None}
    trainer = None
    try:
        for m in members:  # a write failing here (a full disk) fails every member, said so
            record.Summary(m.cfg.out_dir).write(m.summary)
        with ExitStack() as stack:
            loggers = [stack.enter_context(solo.open_logger(m.cfg, m.env)) for m in members]
            events = []
            for m, logger in zip(members, loggers):
                with member_log(m.cfg.out_dir, console=True):
                    solo.record_start(m.env, logger, m.records, m.evaluation, m.summary)
                before = solo.seconds_before(m.env)
                events.append(
                    RunEvents(
                        m.cfg, m.trainer, logger, m.evaluation, m.best, asked, m.saved, before
                    )
                )
            trainer = PopulationTrainer([m.trainer for m in members])
            member_events = MemberEvents(members, events, asked)
            results = _loop(trainer, members, loggers, member_events, progress, on_steps)
            for m, logger, result in zip(members, loggers, results):
                finish.record_result(m.summary, result, m.best, m.env.resumed, logger)
                finish.record_artifacts(m.cfg, logger, m.evaluation, result)
    except BaseException as err:
        _record_failure(members, trainer, err)
        raise
    _write_summaries(members)
    return results


def _write_summaries(members: list[Member]) -> None:
    """Every member's final summary, each written even if another's write fails (the first
    error is raised after)."""
    errors = []
    for m in members:
        try:
            record.Summary(m.cfg.out_dir).write(m.summary)
        except OSError as err:
            errors.append(err)
    if errors:
        raise errors[0]


def _loop(trainer, members, loggers, events, progress, on_steps) -> list[TrainResult]:
    schedule = Schedule.of(members[0].cfg.trainer)
    bar = progress_bar(schedule.steps, trainer.step, desc="population", enabled=progress)
    try:
        told = _Told(bar, on_steps, len(members)) if on_steps else bar
        return trainer.run(schedule, loggers, events, told)
    finally:
        bar.close()


@dataclass
class _Told:
    """A progress bar whose steps are also told to ``on_steps``, as member-steps."""

    bar: Any
    on_steps: Callable[[int], None]
    members: int

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.on_steps(n * self.members)


def _record_failure(members: list[Member], trainer, err: BaseException) -> None:
    """Every member's summary says what happened: a member that had diverged its result (as a
    solo run, which would have ended there), the others preempted at their last checkpoint when
    stopped at once, else failed at the step reached."""
    results = trainer.results if trainer else [None] * len(members)
    for m, result in zip(members, results):
        diverged = result is not None and result.status == Ending.diverged
        if not (diverged and _settled(m, result)):
            if isinstance(err, (signals.Interrupted, KeyboardInterrupt)):
                m.summary.update(status=Status.preempted, steps=m.saved["step"] or 0)
            else:
                step = trainer.step if trainer else m.trainer.step
                error = f"{type(err).__name__}: {err}"
                m.summary.update(status=Status.failed, steps=step, error=error)
        _write_summary(m)  # the population's own error is the one to raise


def _write_summary(m: Member) -> None:
    """``m``'s summary.json, or an error line where it cannot be written."""
    try:
        record.Summary(m.cfg.out_dir).write(m.summary)
    except OSError as err:
        log.error("error: %s: %s not written (%s)", m.cfg.run_name, record.SUMMARY_FILE, err)


def _settled(m: Member, result: TrainResult) -> bool:
    """Records a diverged member's result in its summary; False if its metrics cannot be read
    now (the population's own error is the one to raise)."""
    try:
        finish.settle(m.summary, result, m.best, m.env.resumed, m.cfg.out_dir)
    except (OSError, ValueError) as err:
        log.error("error: %s: its diverged result not recorded (%s)", m.cfg.run_name, err)
        return False
    return True
