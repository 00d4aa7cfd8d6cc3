"""``hydra/launcher=population``: a multirun's jobs trained as populations in this process.

Every job first runs as Hydra runs it (its directory, ``.hydra`` files, the task's checks):
a job that passes them is enrolled rather than trained (``gan.population.enrollment``); an
invalid one is recorded ``invalid`` and never joins. The enrolled jobs are then grouped into
populations (equal but for init arm and seed), each sized to the device, and trained one after
another. Each job's return value is its own summary, as with any launcher.
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

from gan import data, nets, sweeps
from gan.errors import UserError
from gan.population import enrollment
from gan.population.run import PopulationPreempted, populations, run_population

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:  # registered, with its _target_, in hydra_plugins/
    max_members: int = 64  # the most members one population trains at once
    memory_fraction: float = 0.5  # of the device's free memory a population's tensors may plan on


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 64, memory_fraction: float = 0.5) -> None:
        if max_members < 1 or not 0 < memory_fraction <= 1:
            raise UserError(
                "hydra.launcher.max_members must be >= 1 and hydra.launcher.memory_fraction in "
                f"(0, 1], got {max_members} and {memory_fraction}"
            )
        self.max_members, self.memory_fraction = max_members, memory_fraction
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
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        with enrollment.gathering() as gathered:
            jobs = [
                self._enroll(initial_job_idx + i, overrides, gathered)
                for i, overrides in enumerate(job_overrides)
            ]
        self._console_logging()
        enrolled = [member for _, member in jobs if member is not None]
        groups = populations(enrolled, self.max_members)
        sized = [part for group in groups for part in self._fit(group)]
        log.info("%d jobs: %d enrolled in %d population(s)", len(jobs), len(enrolled), len(sized))
        returns = {id(member): ret for ret, member in jobs if member is not None}
        for i, group in enumerate(sized):
            if not self._train(group, returns):
                for rest in sized[i + 1 :]:
                    for member in rest:
                        sweeps.discard_unstarted(member.cfg.out_dir)
                break
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
        """The jobs' console handlers without a job's file (each member writes its own)."""
        job_logging = self.config.hydra.job_logging.copy()
        with open_dict(job_logging):
            job_logging.handlers.pop("file", None)
            job_logging.root.handlers = [h for h in job_logging.root.handlers if h != "file"]
        configure_log(job_logging, self.config.hydra.verbose)

    def _fit(self, group: list) -> list[list]:
        """``group`` cut into populations whose tensors fit the device's free memory."""
        per_member = member_bytes(group[0].cfg)
        fits = max(1, int(free_bytes(group[0].env.device) * self.memory_fraction // per_member))
        size = min(fits, self.max_members)
        return [group[i : i + size] for i in range(0, len(group), size)]

    def _train(self, group: list, returns: dict) -> bool:
        """Trains one population; False if it was stopped by a signal (nothing more starts)."""
        try:
            summaries = run_population(group)
        except PopulationPreempted as stop:
            log.error("preempted: %s", stop)
            why = f"{signal.Signals(stop.signum).name} in a population"
            sweeps.request_stop(Path(str(self.config.hydra.sweep.dir)), stop.signum, why)
            for member, summary in zip(group, stop.summaries):
                returns[id(member)].return_value = summary
            return False
        except Exception as err:  # noqa: BLE001 - each member's summary says it failed; go on
            log.exception("population failed: %s", err)
            for member in group:
                returns[id(member)].return_value = err
                returns[id(member)].status = JobStatus.FAILED
            return True
        for member, summary in zip(group, summaries):
            returns[id(member)].return_value = summary
            returns[id(member)].status = JobStatus.COMPLETED
        return True


def member_bytes(cfg) -> int:
    """A member's planned memory: its tensors four times (weights, gradients, two optimizer
    moments), its solo copy, and activations of a few batches through the widest layer."""
    params = nets.model_parameters(cfg.model, data.image_shape(cfg.data.name))
    widest = max((*cfg.model.generator_widths, *cfg.model.discriminator_widths))
    activations = 8 * cfg.trainer.batch_size * widest * 64  # generous for the DCGAN's maps
    return 4 * (5 * params + activations)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
