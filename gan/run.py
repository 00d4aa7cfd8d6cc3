"""One training run end to end: data, networks, init, tracking, training, checkpoints, summary."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from gan import checkpoint, data, nets, quality, tracking
from gan.config import RunConfig
from gan.errors import UserError
from gan.init import format_table, initialize
from gan.trainer import (GANTrainer, check_precision, derive_seed, resolve_device, to_channels_last,
                         wants_channels_last)

# What a resumed run must share with the checkpoint's, or its curves would not continue the same run.
RESUME_IDENTITY = ("seed", "model", "init")  # and dataset.name


class Preempted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, step: int, run_dir: str):
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint written in {run_dir}; "
                         f"continue with `python train.py resume={run_dir}`")
        self.exit_code = 128 + signum


@contextmanager
def stop_on_signals() -> Iterator[dict[str, int | None]]:
    """While open, SIGINT/SIGTERM ask the loop to stop (checkpoint, then exit) instead of killing it;
    a second signal interrupts at once. Only in the main thread (parallel launchers' workers skip)."""
    asked: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handler(signum, frame):
        if asked["signal"] is not None:
            raise KeyboardInterrupt
        asked["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def build_networks(cfg: RunConfig) -> tuple[nets.Generator, nets.Discriminator, list]:
    """G and D on the CPU, built under ``cfg.seed`` and initialized by their schemes.

    Both are built (PyTorch's default init, global RNG) before either is re-initialized, and each
    scheme draws from its own seeded stream: a network under ``default`` is bit-identical to a
    fresh build, and one network's weights never depend on the other's scheme.
    """
    torch.manual_seed(cfg.seed)
    g, d = nets.build(
        cfg.model.name, data.image_shape(cfg.data.name), z_dim=cfg.model.z_dim,
        g_widths=cfg.model.generator_widths, d_widths=cfg.model.discriminator_widths,
        slope=cfg.model.slope,
    )
    records = []
    for network, net, scheme in (("generator", g, cfg.init.generator),
                                 ("discriminator", d, cfg.init.discriminator)):
        stream = torch.Generator().manual_seed(derive_seed(cfg.seed, f"init/{network}"))
        records += initialize(net, scheme, network=network, generator=stream)
    return g, d, records


def run(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Runs (or, with ``cfg.resume``, continues) one configuration; returns what summary.json
    holds. Bad input raises UserError before anything is written to the run directory."""
    mode, why = tracking.resolve_mode(cfg.logger.mode)
    device = resolve_device(cfg.trainer.device)
    precision_warning = check_precision(cfg.trainer.precision, device)  # before anything is written
    if precision_warning:
        print(precision_warning, flush=True)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    resumed = checkpoint.load(cfg.out_dir) if cfg.resume else None
    if resumed:
        changed = [k for k in RESUME_IDENTITY if resumed["config"].get(k) != cfg.resolved.get(k)]
        if resumed["config"]["dataset"]["name"] != cfg.data.name:
            changed.append("dataset")
        if resumed["trainer"]["device"] != device.type:  # random generator states differ by device
            raise UserError(f"resume={cfg.out_dir}: the run trained on {resumed['trainer']['device']}, this "
                            f"machine would use {device.type}; resume it with trainer.device="
                            f"{resumed['trainer']['device']}")
        if changed:
            raise UserError(f"resume={cfg.out_dir}: this run's {', '.join(changed)} differ(s) from the "
                            "checkpoint's; a resumed run must continue the same experiment. Drop those "
                            "overrides, or start a new run")
        if resumed["trainer"]["step"] >= cfg.trainer.steps:
            raise UserError(f"resume={cfg.out_dir}: the checkpoint is at step {resumed['trainer']['step']}, "
                            f"trainer.steps={cfg.trainer.steps}; raise trainer.steps to train further")
    data.ensure_dir(cfg.data.root)
    split = data.load(cfg.data.name, cfg.data.root, train=True,
                      download_timeout=cfg.data.download_timeout, offline_dir=cfg.data.offline_dir)
    if cfg.trainer.batch_size > len(split):
        raise UserError(f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {len(split)} "
                        f"training images of dataset={cfg.data.name}")
    evaluator = None
    if cfg.trainer.eval_every:  # the classifier trains on first use: before any result is written
        classifier = quality.load_classifier(cfg.data.name, cfg.data.root, progress=progress)
        test = data.load(cfg.data.name, cfg.data.root, train=False)
        evaluator = quality.Evaluator(classifier, test.images.to(device), batch=cfg.eval.batch_size)
        eval_noise = torch.randn(min(cfg.eval.num_samples, len(test)), cfg.model.z_dim,
                                 generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "eval")))
    g, d, records = build_networks(cfg)
    images = split.images.to(device)
    g, d = g.to(device), d.to(device)
    if wants_channels_last(cfg.model.name, cfg.trainer.channels_last):
        g, d, images = to_channels_last(g, d, images)
    trainer = GANTrainer(g, d, images, batch_size=cfg.trainer.batch_size, lr=cfg.trainer.lr,
                         betas=cfg.trainer.betas, seed=cfg.seed, torch_compile=cfg.trainer.compile,
                         precision=cfg.trainer.precision)
    if resumed:
        trainer.load_state_dict(resumed["trainer"])
        checkpoint.restore_rng_states(resumed["rng"])
        print(f"{cfg.run_name}: resuming from step {trainer.step} in {cfg.out_dir}")
    else:
        print(f"{cfg.run_name}: G {nets.count_parameters(g):,} and D {nets.count_parameters(d):,} "
              f"parameters, {len(split):,} images on {device}")
        print(format_table(records), flush=True)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        tracking.write_json(cfg.out_dir / tracking.INIT_REPORT_FILE, [r.to_dict() for r in records])

    summary: dict[str, Any] = {
        "status": "running", "run_name": cfg.run_name, "arm": cfg.init.arm, "seed": cfg.seed,
        "model": cfg.model.name, "dataset": cfg.data.name, "device": str(device),
        "sweep_id": cfg.logger.sweep_id,
    }
    best: dict[str, Any] = dict(resumed["best"]) if resumed else {}
    # Signals are caught until W&B has finished (the logger closes first): a Ctrl-C during a slow
    # upload then still ends with a checkpoint and a summary.
    with stop_on_signals() as asked, tracking.RunLogger(
        cfg.out_dir, mode=mode, project=cfg.logger.project, entity=cfg.logger.entity,
        name=cfg.run_name, group=cfg.logger.group or cfg.init.arm, job_type=cfg.logger.job_type,
        tags=[cfg.model.name, cfg.data.name, *cfg.logger.tags,
              *([f"sweep:{cfg.logger.sweep_id}"] if cfg.logger.sweep_id else [])],
        config={**cfg.resolved, "arm": cfg.init.arm},
        metrics_offset=resumed["metrics_offset"] if resumed else None,
        wandb_id=resumed["wandb_id"] if resumed else None,
    ) as logger:
        hint = tracking.offline_hint(logger, why)
        if hint:
            print(hint, flush=True)
        if not resumed:
            logger.log_table("init/report", [r.to_dict() for r in records])
        if logger.wandb_run:
            summary["wandb"] = {"mode": mode, "id": logger.wandb_run.id, "dir": str(logger.wandb_dir)}
        if evaluator:
            logger.summarize({"eval/classifier": evaluator.classifier.identity,
                              "eval/classifier_test_accuracy": evaluator.classifier.test_accuracy})

        def evaluate(step: int, generator: nets.Generator) -> None:
            scores = evaluator.score_generator(generator, eval_noise.to(device))
            logger.log(step, {**scores, "eval/classifier": evaluator.classifier.identity})
            if not best or scores["eval/fcd"] < best["eval/fcd_best"]:  # GANs can get worse late
                best.update({"eval/fcd_best": scores["eval/fcd"], "eval/fcd_best_step": step})
                logger.summarize(best)

        def save_checkpoint(step: int) -> None:
            try:
                checkpoint.save(cfg.out_dir, {
                    "trainer": trainer.state_dict(), "rng": checkpoint.rng_states(), "config": dict(cfg.resolved),
                    "wandb_id": logger.wandb_run.id if logger.wandb_run else None,
                    "metrics_offset": logger.metrics_offset(), "best": dict(best),
                })
            except OSError as err:  # e.g. a full disk: the previous checkpoint is still intact
                print(f"warning: checkpoint at step {step} not written ({err}); the last good one is kept",
                      flush=True)

        try:
            result = trainer.run(
                cfg.trainer.steps, logger, log_every=cfg.trainer.log_every,
                sample_every=cfg.trainer.sample_every, diag_every=cfg.trainer.diag_every,
                evaluate=evaluate if evaluator else None, eval_every=cfg.trainer.eval_every,
                checkpoint=save_checkpoint, checkpoint_every=cfg.trainer.ckpt_every,
                should_stop=lambda: asked["signal"] is not None, progress=progress,
            )
        except BaseException:
            summary.update(status="failed", step=trainer.step)
            tracking.write_json(cfg.out_dir / tracking.SUMMARY_FILE, summary)
            raise
        status = {"finished": "finished", "diverged": "diverged", "stopped": "preempted"}[result.status]
        summary.update(
            status=status, steps=result.step, seconds=round(result.seconds, 3),
            steps_per_second=round((result.step - (resumed["trainer"]["step"] if resumed else 0))
                                   / max(result.seconds, 1e-9), 2),
            final=result.last, **best,
        )
        if result.status == "diverged":
            summary.update(diverged=True, diverged_step=result.diverged_step)
        logger.summarize({k: v for k, v in summary.items() if k in
                          ("status", "steps", "seconds", "steps_per_second", "diverged", "diverged_step")})
        if result.status == "stopped":
            logger.mark_preempted()
    tracking.write_json(cfg.out_dir / tracking.SUMMARY_FILE, summary)
    if result.status == "stopped":
        raise Preempted(asked["signal"], result.step, str(cfg.out_dir))
    last = result.last
    outcome = (f"diverged at step {result.diverged_step} (a loss or weight went non-finite)"
               if result.status == "diverged" else f"{result.step} steps")
    print(
        f"done {cfg.run_name}: {outcome} in {result.seconds:.1f} s "
        f"({summary['steps_per_second']:.1f} steps/s)"
        + (f" | loss_D {last['train/loss_D']:.3f} loss_G {last['train/loss_G']:.3f} "
           f"acc_D {last['train/acc_D']:.2f} acc_G {last['train/acc_G']:.2f}" if last else "")
        + (f" | best FCD {best['eval/fcd_best']:.2f} at step {best['eval/fcd_best_step']}" if best else "")
        + f" | {cfg.out_dir}",
        flush=True,
    )
    return summary
