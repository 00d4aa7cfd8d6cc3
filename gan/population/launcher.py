"""``hydra/launcher=population``: a multirun's jobs trained as populations.

Every job first runs as Hydra runs it (its directory, ``.hydra`` files, the task's checks):
a job that passes them is enrolled rather than trained (``gan.population.enrollment``); an
invalid one is recorded ``invalid`` and never joins. The enrolled jobs are then grouped into
populations (equal but for init arm and seed), each sized to the device, and trained
``n_jobs`` at a time: in this process when one at a time, else each in a worker process of its
own (``gan.population.workers``). Each job's return value is its own summary, as with any
launcher.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from gan import data, nets, record, sweep_outcomes, sweeps
from gan.population import enrollment, workers
from gan.population.run import populations
from gan.record import Status

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:  # registered, with its _target_, in hydra_plugins/
    max_members: int = 64  # the most members one population trains at once
    memory_fraction: float = 0.5  # of the free memory the populations at once may plan on
    # Populations trained at once, each in a worker process; null: one per trainer.threads CPU
    # cores on a CPU (a single group is split to keep them busy), one on a GPU.
    n_jobs: int | None = None


class PopulationLauncher(Launcher):
    def __init__(
        self, max_members: int = 64, memory_fraction: float = 0.5, n_jobs: int | None = None
    ) -> None:
        enrollment.check_launcher_options(max_members, memory_fraction, n_jobs)
        self.max_members, self.memory_fraction, self.n_jobs = max_members, memory_fraction, n_jobs
        self.config: DictConfig | None = None
        self.context: HydraContext | None = None
        self.task: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.context, self.task = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        self._sweep_dir().mkdir(parents=True, exist_ok=True)
        with enrollment.gathering() as gathered:
            jobs = [
                self._enroll(initial_job_idx + i, overrides, gathered)
                for i, overrides in enumerate(job_overrides)
            ]
        self._console_logging()
        enrolled = [member for _, member in jobs if member is not None]
        groups = populations(enrolled, self.max_members)
        processes = self._processes(enrolled)
        sized = [part for group in groups for part in self._fit(group, processes)]
        sized = spread(sized, processes)
        log.info(
            "%d jobs: %d enrolled in %d population(s), %d at a time",
            len(jobs),
            len(enrolled),
            len(sized),
            min(processes, len(sized)),
        )
        returns = {id(member): ret for ret, member in jobs if member is not None}
        self._train_all(sized, processes, returns)
        return [ret for ret, _ in jobs]

    def _enroll(self, idx: int, overrides: Sequence[str], gathered: list):
        """Hydra's run of one job, whose task enrolls it (or records it invalid)."""
        config = self.context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        before = len(gathered)
        ret = run_job(
            hydra_context=self.context,
            task_function=self.task,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        return ret, (gathered[-1] if len(gathered) > before else None)

    def _console_logging(self) -> None:
        configure_log(self._console_config(), self.config.hydra.verbose)

    def _console_config(self) -> DictConfig:
        """The jobs' logging without a job's file (each member writes its own)."""
        job_logging = self.config.hydra.job_logging.copy()
        with open_dict(job_logging):
            job_logging.handlers.pop("file", None)
            job_logging.root.handlers = [h for h in job_logging.root.handlers if h != "file"]
        return job_logging

    def _fit(self, group: list, processes: int) -> list[list]:
        """``group`` cut into populations whose tensors fit the device's free memory, shared by
        the ``processes`` populations that may train at once."""
        per_member = member_bytes(group[0].cfg)
        budget = free_bytes(group[0].env.device) * self.memory_fraction / processes
        fits = max(1, int(budget // per_member))
        size = min(fits, self.max_members)
        return [group[i : i + size] for i in range(0, len(group), size)]

    def _processes(self, enrolled: list) -> int:
        """Populations at once: ``n_jobs``, else one per ``trainer.threads`` cores on a CPU."""
        if self.n_jobs is not None or not enrolled:
            return self.n_jobs or 1
        env = enrolled[0].env
        if env.device.type != "cpu":
            return 1
        return max(1, cpu_cores() // max(1, env.threads))

    def _train_all(self, sized: list[list], processes: int, returns: dict) -> None:
        def record(group, outcome: workers.Outcome) -> bool:
            return self._record(group, outcome, returns)

        if processes == 1 or len(sized) == 1:  # in this process, one after another
            for i, group in enumerate(sized):
                stopping = sweeps.why_not_start(self._sweep_dir())  # e.g. a signal meanwhile
                if stopping:
                    log.warning("not started: %s", stopping)
                outcome = workers.Outcome(workers.NOT_STARTED) if stopping else workers.train(group)
                if not record(group, outcome):
                    for rest in sized[i + 1 :]:
                        record(rest, workers.Outcome(workers.NOT_STARTED))
                    return
            return
        _cache_classifiers(sized)
        setup = workers.Setup(self._console_config(), self.config.hydra.verbose, self._sweep_dir())
        workers.run_parallel(sized, processes, setup, record)

    def _sweep_dir(self) -> Path:
        return Path(str(self.config.hydra.sweep.dir))

    def _record(self, group: list, outcome: workers.Outcome, returns: dict) -> bool:
        """Each member's JobReturn from its population's outcome; False: start no other."""
        rets = [returns[id(member)] for member in group]
        if outcome.status == workers.FINISHED:
            for ret, summary in zip(rets, outcome.summaries):
                ret.return_value, ret.status = summary, JobStatus.COMPLETED
            if outcome.signum is not None:  # came as the population ended: stop all the same
                name = signal.Signals(outcome.signum).name
                self._stop(outcome.signum, f"{name} as a population ended")
                return False
            return True
        if outcome.status == workers.NOT_STARTED:
            for member in group:
                sweep_outcomes.discard_unstarted(member.cfg.out_dir)
            if outcome.signum is not None:
                self._stop(outcome.signum, f"{signal.Signals(outcome.signum).name} to a worker")
            return False
        if outcome.status == workers.PREEMPTED:
            self._stop(outcome.signum, f"{signal.Signals(outcome.signum).name} in a population")
            # Stopped at once (a second signal), the members' summaries are on disk only.
            summaries = outcome.summaries or [record.Summary(m.cfg.out_dir).read() for m in group]
            for ret, summary in zip(rets, summaries):
                ret.return_value = summary
            return False
        for ret, member in zip(rets, group):  # FAILED, KILLED: a result, as with any launcher
            ret.return_value = failed_summary(member.cfg.out_dir, outcome.error)
        if outcome.status == workers.KILLED:
            names = ", ".join(m.cfg.run_name for m in group)
            log.error("error: the population of %s stopped: %s", names, outcome.error)
            self._stop(None, f"a population's worker process was killed ({outcome.error})")
            return False
        return True

    def _stop(self, signum: int | None, why: str) -> None:
        sweeps.request_stop(self._sweep_dir(), signum, why)


def failed_summary(out_dir: Path, error: BaseException | None) -> dict:
    """A failed member's return value: its summary.json as written, said failed (a population
    that raised wrote it; a killed worker's is settled by the sweep's end, ``gan.sweeps``)."""
    summary = record.Summary(out_dir).read()
    if summary.get("status") in record.FINAL:  # a member that diverged before keeps its result
        return summary
    return {**summary, "status": Status.failed, "error": f"{type(error).__name__}: {error}"}


def spread(sized: list[list], processes: int) -> list[list]:
    """Populations halved, biggest first, until there are ``processes`` of them to run at once
    (or every one is a single member)."""
    sized = list(sized)
    while len(sized) < processes:
        biggest = max(range(len(sized)), key=lambda i: len(sized[i]), default=None)
        if biggest is None or len(sized[biggest]) < 2:
            break
        group = sized[biggest]
        half = (len(group) + 1) // 2
        sized[biggest : biggest + 1] = [group[:half], group[half:]]
    return sized


def _cache_classifiers(sized: list[list]) -> None:
    """The evaluation classifiers, trained now if not cached yet: once, here, rather than by
    several workers at once (each with its own, differently seeded threads)."""
    from gan import quality

    for data_config in {g[0].cfg.data for g in sized if g[0].cfg.trainer.eval_every}:
        quality.load_classifier(data_config)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def member_bytes(cfg) -> int:
    """A member's planned memory: its tensors four times (weights, gradients, two optimizer
    moments), its solo copy, and activations of a few batches through the widest layer."""
    params = nets.model_parameters(cfg.model, data.image_shape(cfg.data.name))
    widest = max((*cfg.model.generator_widths, *cfg.model.discriminator_widths))
    activations = 8 * cfg.trainer.batch_size * widest * 64  # generous for the DCGAN's maps
    return 4 * (5 * params + activations)


def free_bytes(device: torch.device) -> int:
    """Memory the populations may plan on: the GPU's free memory; on a CPU, what the kernel can
    give without swapping (its page cache counts), within this process's cgroup limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return min(_available_memory(), _cgroup_room())


def _available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:  # Linux: MemAvailable counts the page cache it can drop; the free pages alone do not
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# Per cgroup version: its directory under the mount, its limit and usage files, and the page cache
# it can drop (a key of memory.stat), which its usage counts.
_CGROUP_FILES = {
    "v2": ("", "memory.max", "memory.current", "inactive_file"),
    "v1": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def _cgroup_room(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> int:
    """The least room over this process's memory cgroup and its ancestors (a container's, a
    SLURM job's): limit less use, the page cache it can drop not counted; unlimited if none."""
    room = 1 << 62
    for directory, (_, limit, usage, cache) in _memory_cgroups(root, own):
        try:
            used = int((directory / usage).read_text()) - _stat(directory, cache)
            room = min(room, max(0, int((directory / limit).read_text()) - used))
        except (OSError, ValueError):  # not there, or "max": no limit at that level
            continue
    return room


def _memory_cgroups(root: Path, own: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Directories of this process's memory cgroups, innermost first, with their version's
    files; each mount's top too (a container's own cgroup, seen from inside it)."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        lines = []
    found = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        version = "v2" if not controllers else "v1" if "memory" in controllers.split(",") else ""
        if version:
            files = _CGROUP_FILES[version]
            base, parts = root / files[0], Path(path).parts[1:]
            found += [(base.joinpath(*parts[:i]), files) for i in range(len(parts), -1, -1)]
    return found or [(root / files[0], files) for files in _CGROUP_FILES.values()]


def _stat(directory: Path, key: str) -> int:
    """A value of the cgroup's memory.stat (0 if it has no such key)."""
    for line in (directory / "memory.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0
