"""One training run end to end: data, networks, init, tracking, training, summary."""

from __future__ import annotations

import time
from typing import Any

import torch

from gan import data, nets, quality, tracking
from gan.config import RunConfig
from gan.errors import UserError
from gan.init import format_table, initialize
from gan.trainer import derive_seed, resolve_device, train


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
    """Runs one configuration; returns what summary.json holds. Bad input raises UserError
    before anything is written to ``cfg.out_dir``."""
    mode, why = tracking.resolve_mode(cfg.logger.mode)
    device = resolve_device(cfg.trainer.device)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
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
    with tracking.RunLogger(
        cfg.out_dir, mode=mode, project=cfg.logger.project, entity=cfg.logger.entity,
        name=cfg.run_name, group=cfg.logger.group or cfg.init.arm, job_type=cfg.logger.job_type,
        tags=[cfg.model.name, cfg.data.name, *cfg.logger.tags,
              *([f"sweep:{cfg.logger.sweep_id}"] if cfg.logger.sweep_id else [])],
        config={**cfg.resolved, "arm": cfg.init.arm},
    ) as logger:
        hint = tracking.offline_hint(logger, why)
        if hint:
            print(hint, flush=True)
        logger.log_table("init/report", [r.to_dict() for r in records])
        if logger.wandb_run:
            summary["wandb"] = {"mode": mode, "id": logger.wandb_run.id, "dir": str(logger.wandb_dir)}
        best: dict[str, Any] = {}

        def evaluate(step: int, generator: nets.Generator) -> None:
            scores = evaluator.score_generator(generator, eval_noise.to(device))
            logger.log(step, {**scores, "eval/classifier": evaluator.classifier.identity})
            if not best or scores["eval/fcd"] < best["eval/fcd_best"]:  # GANs can get worse late
                best.update({"eval/fcd_best": scores["eval/fcd"], "eval/fcd_best_step": step})
                logger.summarize(best)

        if evaluator:
            logger.summarize({"eval/classifier": evaluator.classifier.identity,
                              "eval/classifier_test_accuracy": evaluator.classifier.test_accuracy})
        started = time.time()
        try:
            result = train(
                g.to(device), d.to(device), split.images.to(device), logger,
                steps=cfg.trainer.steps, batch_size=cfg.trainer.batch_size, lr=cfg.trainer.lr,
                betas=cfg.trainer.betas, seed=cfg.seed, log_every=cfg.trainer.log_every,
                sample_every=cfg.trainer.sample_every, diag_every=cfg.trainer.diag_every,
                evaluate=evaluate if evaluator else None, eval_every=cfg.trainer.eval_every,
                progress=progress,
            )
        except BaseException:
            summary.update(status="failed", seconds=time.time() - started)
            tracking.write_json(cfg.out_dir / tracking.SUMMARY_FILE, summary)
            raise
        summary.update(
            status="finished", steps=result.steps, seconds=round(result.seconds, 3),
            steps_per_second=round(result.steps / result.seconds, 2), final=result.last, **best,
        )
        logger.summarize({k: summary[k] for k in ("status", "steps", "seconds", "steps_per_second")})
    tracking.write_json(cfg.out_dir / tracking.SUMMARY_FILE, summary)
    last = result.last
    print(
        f"done {cfg.run_name}: {result.steps} steps in {result.seconds:.1f} s "
        f"({summary['steps_per_second']:.1f} steps/s) | loss_D {last['train/loss_D']:.3f} "
        f"loss_G {last['train/loss_G']:.3f} acc_D {last['train/acc_D']:.2f} "
        f"acc_G {last['train/acc_G']:.2f}"
        + (f" | best FCD {best['eval/fcd_best']:.2f} at step {best['eval/fcd_best_step']}" if best else "")
        + f" | {cfg.out_dir}",
        flush=True,
    )
    return summary
