"""One training run, in the order it happens: prepare, load data, build, train, finish.

Bad input raises UserError in the first three phases, before anything is written to the run
directory. A run started with ``cfg.resume`` continues the checkpoint in ``cfg.out_dir`` exactly.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gan import checkpoint, data, faults, files, nets, quality, record, tracking
from gan.config import RunConfig
from gan.cuda_graph import check_cuda_graph
from gan.errors import RunFailed, UserError
from gan.events import Evaluation, RunEvents
from gan.finish import log_result, record_artifacts, record_result
from gan.init import InitRecord
from gan.init_call import init_table, initialize
from gan.population import enrollment
from gan.record import Ending, Status
from gan.resume import check_resumable, check_threads
from gan.runtime import check_precision, derive_seed, resolve_device, resolve_precision
from gan.schedule import Schedule
from gan.signals import Interrupted, Preempted, stop_on_signals
from gan.trainer import GANTrainer, TrainResult

log = logging.getLogger(__name__)


def run(
    cfg: RunConfig, *, progress: bool = True, on_accepted: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Runs (or continues) one configuration; returns what summary.json holds.

    ``on_accepted`` is called once the configuration (and a resumed run's changes) passed every
    check, the data loaded and the networks (and a resumed run's state) built, in a run directory
    that is this process's, before anything else is written: a run that fails before changes
    nothing of the run it would have continued.
    """
    env = prepare(cfg)
    enrolled = enrollment.enroll(cfg, env, on_accepted)  # hydra/launcher=population trains it
    if enrolled:
        return enrolled
    # From here on a signal asks for a checkpoint and a clean stop (at the first step if it
    # comes during start-up), and no other process may write the run directory.
    with stop_on_signals() as asked, files.claimed(cfg.out_dir):
        files.remove_partials(cfg.out_dir)  # left by a process killed mid-write
        images, evaluation = load_data(cfg, env.device, progress)
        trainer, records = build_trainer(cfg, env, images)
        if on_accepted:
            on_accepted()
        announce(cfg, env, trainer, records, len(images))
        summary, result = train(cfg, env, trainer, records, evaluation, asked, progress)
    if result.status == Ending.stopped:
        raise Preempted(
            asked["signal"],
            f"{signal.Signals(asked['signal']).name} at step {result.step}: checkpoint written "
            f"in {cfg.out_dir}; continue with `{checkpoint.resume_command(cfg.out_dir)}`",
        )
    log_result(cfg, summary, result)
    return summary


# --------------------------------------------------------------------------------------------
# Prepare: every check that needs no data, before anything is written
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    device: torch.device
    precision: str  # trainer.precision resolved for this device: fp32 | bf16
    threads: int  # torch's CPU threads, trainer.threads resolved: part of a CPU run's numerics
    wandb_mode: str  # online | offline | disabled
    wandb_why: str  # what decided the mode, for the offline hint
    resumed: dict[str, Any] | None  # the checkpoint being continued


def prepare(cfg: RunConfig) -> Environment:
    nets.check(cfg.model, data.image_shape(cfg.data.name))
    check_model_memory(cfg)
    check_run_dir(cfg.out_dir)
    mode, why = tracking.resolve_mode(cfg.logger.mode)
    device = resolve_device(cfg.trainer.device)
    check_cuda_graph(cfg.trainer, device)
    precision = resolve_precision(cfg.trainer.precision, device)
    precision_warning = check_precision(precision, device)
    if precision_warning:
        log.warning(precision_warning)
    if cfg.trainer.threads:
        cores = os.cpu_count() or 1
        if cfg.trainer.threads > cores:
            log.warning(
                "warning: trainer.threads=%d exceeds the %d CPU cores here; more threads "
                "than cores slow training down",
                cfg.trainer.threads,
                cores,
            )
        torch.set_num_threads(cfg.trainer.threads)
    threads = torch.get_num_threads()
    resumed = checkpoint.load(cfg.out_dir) if cfg.resume else None
    if resumed:
        check_resumable(cfg, resumed, device, precision)
        check_threads(cfg, resumed, device, threads)
    return Environment(device, precision, threads, mode, why, resumed)


def check_model_memory(cfg: RunConfig) -> None:
    """Refuses networks whose weights, gradients and optimizer state alone exceed this machine's
    memory (``discriminator_widths=[100000,100000]``), counted on the meta device: nothing is
    allocated, and the RNG is left as it was."""
    count = nets.model_parameters(cfg.model, data.image_shape(cfg.data.name))
    need = count * 4 * 4  # float32 weights, gradients and Adam's two moments
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise UserError(
            f"model: G and D have {count:,} parameters, which need about {need / 2**30:,.0f} GiB "
            f"to train, more than this machine's {have / 2**30:,.0f} GiB; use smaller "
            "model.generator_widths / model.discriminator_widths"
        )


def check_run_dir(out_dir) -> None:
    """Refuses a run directory where one of the run's own entries is of the wrong kind (a file
    named samples), before anything is written."""
    entries = {record.SAMPLES_DIR: True, record.METRICS_FILE: False, record.SUMMARY_FILE: False}
    for name, is_dir in {**entries, record.CHECKPOINT_FILE: False}.items():
        path = out_dir / name
        if path.exists() and path.is_dir() != is_dir:
            raise UserError(
                f"run directory {out_dir}: {path} is a {'file' if is_dir else 'directory'}, "
                f"where the run writes its {name}; move it away, or give the run another "
                "directory (hydra.run.dir=...)"
            )


# --------------------------------------------------------------------------------------------
# Load data: the training split on the device, and the evaluator
# --------------------------------------------------------------------------------------------


def load_data(
    cfg: RunConfig, device: torch.device, progress: bool
) -> tuple[torch.Tensor, Evaluation | None]:
    data.ensure_dir(cfg.data.root)
    split = data.load(cfg.data, train=True)
    faults.point("data_load")
    if cfg.trainer.batch_size > len(split):
        raise UserError(
            f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {len(split)} "
            f"training images of dataset={cfg.data.name}"
        )
    # The classifier trains on first use: before any result is written.
    evaluation = make_evaluation(cfg, device, progress) if cfg.trainer.eval_every else None
    return split.images.to(device), evaluation


def make_evaluation(cfg: RunConfig, device: torch.device, progress: bool) -> Evaluation:
    evaluator = make_evaluator(cfg, device, progress)
    return Evaluation(evaluator, eval_noise(cfg, evaluator, device))


def make_evaluator(cfg: RunConfig, device: torch.device, progress: bool) -> quality.Evaluator:
    """The dataset's evaluator (its classifier and test split), shared by a population."""
    classifier = quality.load_classifier(cfg.data, progress=progress)
    test = data.load(cfg.data, train=False)
    return quality.Evaluator(classifier, test.images.to(device), batch=cfg.eval.batch_size)


def eval_noise(cfg: RunConfig, evaluator: quality.Evaluator, device: torch.device) -> torch.Tensor:
    """The run's fixed evaluation noise (N, z_dim), from its own seeded stream."""
    stream = torch.Generator().manual_seed(derive_seed(cfg.seed, "eval"))
    n = min(cfg.eval.num_samples, len(evaluator.real_features))
    return torch.randn(n, cfg.model.z_dim, generator=stream).to(device)


# --------------------------------------------------------------------------------------------
# Build: networks, their init, the trainer
# --------------------------------------------------------------------------------------------


def build_networks(cfg: RunConfig) -> tuple[nets.Generator, nets.Discriminator, list[InitRecord]]:
    """G and D on the CPU, built under ``cfg.seed`` and initialized by their schemes.

    Both are built (PyTorch's default init, global RNG) before either is re-initialized, and each
    scheme draws from its own seeded stream: a network under ``default`` is bit-identical to a
    fresh build, and one network's weights never depend on the other's scheme.
    """
    torch.manual_seed(cfg.seed)
    g, d = nets.build(cfg.model, data.image_shape(cfg.data.name))
    records = []
    for network, net, scheme in (
        ("generator", g, cfg.init.generator),
        ("discriminator", d, cfg.init.discriminator),
    ):
        stream = torch.Generator().manual_seed(derive_seed(cfg.seed, f"init/{network}"))
        records += initialize(net, scheme, network=network, generator=stream)
    return g, d, records


def build_trainer(
    cfg: RunConfig, env: Environment, images: torch.Tensor, *, allow_channels_last: bool = True
) -> tuple[GANTrainer, list[InitRecord]]:
    """The run's trainer, continued from its checkpoint if resumed. ``allow_channels_last``:
    False for a population's members, whose solo modules only mirror the stacked network."""
    g, d, records = build_networks(cfg)
    g, d = g.to(env.device), d.to(env.device)
    if allow_channels_last and nets.wants_channels_last(cfg.model.name, cfg.trainer.channels_last):
        g, d, images = nets.to_channels_last(g, d, images)
    trainer = GANTrainer(g, d, images, cfg.trainer, seed=cfg.seed, precision=env.precision)
    if env.resumed:
        try:
            trainer.load_state_dict(env.resumed["trainer"])
            checkpoint.restore_rng_states(env.resumed["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserError(
                f"resume={cfg.out_dir}: its {record.CHECKPOINT_FILE} does not hold the state "
                f"this version writes ({type(err).__name__}: {str(err)[:200]}); it was left "
                "untouched. Resume it with the version that wrote it, or start a new run"
            ) from None
    return trainer, records


def announce(
    cfg: RunConfig, env: Environment, trainer: GANTrainer, records: list[InitRecord], n_images: int
) -> None:
    """The run's first lines; a new run also writes its init table (init_report.json)."""
    if env.resumed:
        log.info("%s: resuming from step %d in %s", cfg.run_name, trainer.step, cfg.out_dir)
        return
    log.info(
        "%s: G %s and D %s parameters, %s images on %s in %s",
        cfg.run_name,
        f"{nets.count_parameters(trainer.g):,}",
        f"{nets.count_parameters(trainer.d):,}",
        f"{n_images:,}",
        env.device,
        env.precision,
    )
    log.info("%s", init_table(records))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    record.write_json(cfg.out_dir / record.INIT_REPORT_FILE, [r.to_dict() for r in records])


# --------------------------------------------------------------------------------------------
# Train: the loop, with logging, evaluation, checkpoints and signals
# --------------------------------------------------------------------------------------------


def open_logger(cfg: RunConfig, env: Environment) -> tracking.RunLogger:
    return tracking.RunLogger(cfg.logger, run_identity(cfg, env), mode=env.wandb_mode)


def run_identity(cfg: RunConfig, env: Environment) -> tracking.RunIdentity:
    """The run as its logger knows it: its directory, W&B name, group, tags and config, and
    where a resumed run continues."""
    sweep_tags = [cfg.logger.sweep_tag] if cfg.logger.sweep_tag else []
    setting_tag = [f"setting:{cfg.setting}"] if cfg.setting else []
    return tracking.RunIdentity(
        out_dir=cfg.out_dir,
        name=cfg.run_name,
        group=cfg.wandb_group,
        tags=(cfg.model.name, cfg.data.name, *setting_tag, *cfg.logger.tags, *sweep_tags),
        config={
            **wandb_config(cfg),
            "setting": cfg.setting,
            "precision": env.precision,
            "threads": env.threads,  # resolved: part of a CPU run's numbers
        },
        metrics_offset=env.resumed["metrics_offset"] if env.resumed else None,
        wandb_id=env.resumed["wandb_id"] if env.resumed else None,
        args=cfg.overrides,
    )


def wandb_config(cfg: RunConfig) -> dict[str, Any]:
    choices = {
        "init": cfg.init.arm.split(",", 1)[0],  # an arm starts with its init option's name
        "model": cfg.model.name,
        "dataset": cfg.data.name,
    }
    return tracking.wandb_config(
        cfg.resolved, choices=choices, arm=cfg.init.arm, overrides=cfg.overrides
    )


def seconds_before(env: Environment) -> float | None:
    """Training seconds of a resumed run's earlier parts, which its checkpoints add to (None: an
    older version's checkpoint kept none); 0 for a new run."""
    return env.resumed.get("seconds") if env.resumed else 0.0


def train(
    cfg: RunConfig,
    env: Environment,
    trainer: GANTrainer,
    records: list[InitRecord],
    evaluation: Evaluation | None,
    asked: dict[str, int | None],
    progress: bool,
) -> tuple[dict[str, Any], TrainResult]:
    """Trains to ``trainer.steps``; summary.json says ``running`` meanwhile and the truth after."""
    summary = start_summary(cfg, env)
    summary_file = record.Summary(cfg.out_dir)
    summary_file.write(summary)
    best: dict[str, Any] = dict(env.resumed["best"]) if env.resumed else {}
    saved = {"step": trainer.step if env.resumed else None}  # the last checkpoint on disk
    try:
        with open_logger(cfg, env) as logger:
            faults.point("wandb_init")
            record_start(env, logger, records, evaluation, summary)
            events = RunEvents(
                cfg, trainer, logger, evaluation, best, asked, saved, seconds_before(env)
            )
            result = trainer.run(Schedule.of(cfg.trainer), logger, events, progress)
            record_result(summary, result, best, env.resumed, logger)
            record_artifacts(cfg, logger, evaluation, result)
    except BaseException as err:  # the status must say what happened, whatever it was
        if isinstance(err, (Interrupted, KeyboardInterrupt)):  # stopped at once: what lasts
            summary.update(status=Status.preempted, steps=saved["step"] or 0)  # is the checkpoint
            if isinstance(err, Interrupted):
                err.explain(trainer.step, saved["step"], checkpoint.resume_command(cfg.out_dir))
        else:
            summary.update(status=Status.failed, steps=trainer.step)
        try:
            summary_file.write(summary)
        except OSError as write_error:  # a full disk: the error being raised says more
            log.error("error: %s not updated (%s)", record.SUMMARY_FILE, write_error)
        if isinstance(err, UserError):
            raise RunFailed(str(err)) from None
        raise
    faults.point("summary")
    # Still inside the signal guard: a signal now cannot leave summary.json saying "running".
    summary_file.write(summary)
    return summary, result


def start_summary(cfg: RunConfig, env: Environment) -> dict[str, Any]:
    return {
        "status": Status.running,
        "run_name": cfg.run_name,
        "arm": cfg.init.arm,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "device": str(env.device),
        "precision": env.precision,
        "threads": env.threads,
        "sweep_id": cfg.logger.sweep_id,
        # What resume= composes the run from: .hydra/overrides.yaml is rewritten by Hydra when a
        # resume names the run dir as its own hydra.run.dir.
        "overrides": list(cfg.overrides),
    }


def record_start(
    env: Environment,
    logger: tracking.RunLogger,
    records: list[InitRecord],
    evaluation: Evaluation | None,
    summary: dict[str, Any],
) -> None:
    """What the run logs once, before training: where W&B is, the init table, the classifier."""
    hint = tracking.offline_hint(logger, env.wandb_why) or tracking.online_hint(
        logger, env.wandb_why
    )
    if hint:
        log.info("%s", hint)
    if not env.resumed:
        logger.log_table("init/report", [r.to_dict() for r in records])
    if logger.wandb_run:
        summary["wandb"] = {
            "mode": env.wandb_mode,
            "id": logger.wandb_run.id,
            "dir": str(logger.wandb_dir),
        }
    if evaluation:
        classifier = evaluation.evaluator.classifier
        logger.summarize(
            {
                quality.CLASSIFIER: classifier.identity,
                quality.CLASSIFIER_TEST_ACCURACY: classifier.test_accuracy,
            }
        )
