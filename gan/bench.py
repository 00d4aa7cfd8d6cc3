"""`python -m gan.bench`: this project's training loop against the conventional one.

In one process, on the same data and the same model math (the same G and D, BCE on logits,
non-saturating G loss, Adam at the lr and betas of conf/config.yaml's trainer section):

- reference: the usual script: a torchvision dataset with per-sample ToTensor + Normalize in a
  shuffling DataLoader, PyTorch's default Adam, an ``.item()`` per step for printing;
- project: ``GANTrainer`` (the whole dataset as one normalized tensor on the device, batches by
  index, fused Adam, metrics kept on the device) logging to W&B offline + metrics.jsonl with a
  progress bar, as a real run does;
- project, logging off: the same loop with no sink, to price the logging.

``--compile`` and ``--precision bf16`` apply to the project's loops, as ``trainer.compile`` and
``trainer.precision`` do to a run.

Prints steps/s, images/s, the ratio to the reference and peak memory (CPU: the process's peak
RSS so far, so it only grows down the table; CUDA: per loop) as a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from gan import data, nets
from gan.bench_setup import (
    NEVER,
    WARMUP,
    Bench,
    NoSink,
    cpu_features,
    models,
    setup,
    training_split,
)
from gan.config import (
    CHANNELS_LAST_SETTINGS,
    CUDA_GRAPH_SETTINGS,
    PRECISIONS,
    LoggerConfig,
    TrainerConfig,
    entry_default,
    preset,
)
from gan.errors import UserError, exits_on_user_error
from gan.nets import to_channels_last
from gan.runtime import check_precision
from gan.schedule import Schedule
from gan.trainer import GANTrainer


class _PerSampleDataset(torch.utils.data.Dataset):
    """uint8 images served one PIL image at a time through a transform, as torchvision's are."""

    def __init__(self, images_uint8: torch.Tensor, transform):
        self.images, self.transform = images_uint8, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), 0


def _reference_dataset(bench: Bench):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset, root = bench.data.name, bench.data.root
    if dataset in ("mnist", "fashion_mnist"):
        training_split(bench)  # unpacks Debian's files / downloads once, like the project does
        cls = datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST
        return cls(str(root), train=True, transform=transform, download=False)
    images = training_split(bench).images  # digits: back to 0..255 bytes, served per sample
    return _PerSampleDataset(((images + 1) * 127.5).round().to(torch.uint8), transform)


def reference_loop(bench: Bench) -> float:
    """Seconds for ``bench.steps`` steps of the conventional loop (after warm-up)."""
    device, steps, batch_size = bench.device, bench.steps, bench.trainer.batch_size
    g, d = models(bench, bench.seed, device)
    lr, betas = bench.trainer.lr, bench.trainer.betas
    g_opt = torch.optim.Adam(g.parameters(), lr=lr, betas=betas)
    d_opt = torch.optim.Adam(d.parameters(), lr=lr, betas=betas)
    loader = torch.utils.data.DataLoader(
        _reference_dataset(bench), batch_size=batch_size, shuffle=True, drop_last=True
    )
    if len(loader) == 0:  # drop_last: no whole batch, and the loop below would never end
        raise UserError(
            f"--batch-size {batch_size} exceeds the {len(loader.dataset)} training images of "
            f"{bench.data.name}; use a smaller --batch-size"
        )
    ones = torch.ones(batch_size, 1, device=device)
    zeros = torch.zeros(batch_size, 1, device=device)
    done, start = 0, None
    while done < steps + WARMUP:
        for real, _ in loader:
            if done == WARMUP:
                start = time.perf_counter()
            real = real.to(device)
            fake = g(torch.randn(batch_size, g.z_dim, device=device))
            loss_d = 0.5 * (
                F.binary_cross_entropy_with_logits(d(real), ones)
                + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros)
            )
            d_opt.zero_grad()
            loss_d.backward()
            d_opt.step()
            loss_g = F.binary_cross_entropy_with_logits(d(fake), ones)
            g_opt.zero_grad()
            loss_g.backward()
            g_opt.step()
            _ = (loss_d.item(), loss_g.item())  # the per-step print of the usual script
            done += 1
            if done == steps + WARMUP:
                break
    return time.perf_counter() - start


def project_loop(bench: Bench, logging: bool) -> float:
    """Seconds for ``bench.steps`` steps of GANTrainer (after warm-up), logging as a run does or
    not."""
    device = bench.device
    g, d = models(bench, bench.seed, device)
    images = training_split(bench).images.to(device)
    if bench.channels_last:
        g, d, images = to_channels_last(g, d, images)
    trainer = GANTrainer(g, d, images, bench.trainer, seed=bench.seed, precision=bench.precision)
    trainer.run(Schedule(WARMUP, log_every=WARMUP, sample_every=NEVER), NoSink(), progress=False)
    # As a real run: its logging window, diagnostics and sample grids (the YAML's periods).
    periods = bench.trainer
    timed = Schedule(
        WARMUP + bench.steps,
        log_every=periods.log_every if logging else NEVER,
        sample_every=periods.sample_every if logging else NEVER,
        diag_every=periods.diag_every if logging else 0,
    )
    with tempfile.TemporaryDirectory() as tmp, _sink(Path(tmp), logging) as sink:
        start = time.perf_counter()
        trainer.run(timed, sink, progress=logging)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def _sink(tmp: Path, logging: bool):
    """W&B offline + metrics.jsonl in ``tmp``, as a run logs; with ``logging`` off, nothing."""
    if not logging:
        return nullcontext(NoSink())
    from gan.tracking import RunIdentity, RunLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    section = preset(LoggerConfig, "logger", project="gan-init-bench", job_type="bench")
    run = RunIdentity(out_dir=tmp, name="bench", group="bench", tags=(), config={})
    return RunLogger(section, run, mode="offline")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _parser() -> argparse.ArgumentParser:
    run = preset(TrainerConfig, "trainer")  # a run's defaults are the bench's
    parser = argparse.ArgumentParser(
        prog="python -m gan.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", choices=nets.MODELS, default="mlp")
    parser.add_argument("--dataset", choices=data.DATASETS, default="fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=run.batch_size)
    parser.add_argument(
        "--steps", type=int, default=500, help="timed steps per loop (after 10 warm-up)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each loop, interleaved; the best counts"
    )
    parser.add_argument("--device", default=run.device)
    parser.add_argument("--data-dir", type=Path, default=Path(entry_default("data_dir")))
    parser.add_argument(
        "--channels-last",
        choices=CHANNELS_LAST_SETTINGS,
        default=run.channels_last,
        help="channels_last memory format for the project's loop (auto: on for dcgan)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile G and D in the project's loop"
    )
    parser.add_argument(
        "--cuda-graph",
        choices=CUDA_GRAPH_SETTINGS,
        default=run.cuda_graph,
        help="the project's and the population's step replayed from a CUDA graph, as "
        "trainer.cuda_graph (on: CUDA only)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=run.precision,
        help="the project's loop in fp32 or under bf16 autocast; auto as trainer.precision=auto",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for every loop (0: torch's default, one per core; a run's "
        "trainer.threads is 1)",
    )
    parser.add_argument("--seed", type=int, default=entry_default("seed"))
    parser.add_argument(
        "--population",
        type=int,
        metavar="K",
        help="time K runs trained as one population (seeds seed..seed+K-1) against the "
        "single-run loop, in member-steps/s (gan.population.bench)",
    )
    return parser


def _loops(bench: Bench):
    """key → (label, a function timing one run of that loop)."""
    return {
        "reference": ("reference", lambda: reference_loop(bench)),
        "project": ("project (logging on)", lambda: project_loop(bench, logging=True)),
        "project_nolog": ("project (logging off)", lambda: project_loop(bench, logging=False)),
    }


def _measure(
    loops: dict[str, tuple[str, Callable[[], float]]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Each loop's best speed over ``args.repeats`` interleaved runs, and its peak memory."""
    best: dict[str, float] = {}
    peak: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved, so the machine's drift touches every loop alike
        for key, (_, loop) in loops.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            best[key] = min(best.get(key, float("inf")), loop())
            peak[key] = _peak_memory_mb(device)
    return {
        key: {
            "steps_per_s": args.steps / s,
            "images_per_s": args.steps * args.batch_size / s,
            "peak_mb": peak[key],
        }
        for key, s in best.items()
    }


def _print_results(
    args: argparse.Namespace,
    device: torch.device,
    channels_last: bool,
    labels: dict[str, str],
    rows: dict[str, dict[str, float]],
) -> None:
    """The table for people, then one JSON line for scripts."""
    ref, on, off = (rows[k]["steps_per_s"] for k in ("reference", "project", "project_nolog"))
    threads = torch.get_num_threads()
    print(
        f"{args.model} GAN on {args.dataset}, batch {args.batch_size}, best of {args.repeats} × "
        f"{args.steps} timed steps, {device}, {threads} threads, channels_last={channels_last}, "
        f"compile={args.compile}, cuda_graph={args.cuda_graph}, "
        f"precision={args.precision} ({args.precision_resolved})"
    )
    print(f"{'loop':<24}{'steps/s':>10}{'images/s':>12}{'× reference':>13}{'peak MB':>10}")
    for key, r in rows.items():
        print(
            f"{labels[key]:<24}{r['steps_per_s']:>10.1f}{r['images_per_s']:>12.0f}"
            f"{r['steps_per_s'] / ref:>13.2f}{r['peak_mb']:>10.0f}"
        )
    print(f"logging overhead: {100 * (off / on - 1):+.1f} % step time")
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "device": str(device),
        "threads": threads,
        "channels_last": channels_last,
        "compile": args.compile,
        "cuda_graph": args.cuda_graph,
        "precision": args.precision,
        "precision_resolved": args.precision_resolved,
        "cpu": cpu_features(),
        "ratio": on / ref,
        "logging_overhead": off / on - 1,
        **rows,
    }
    print(json.dumps(result))


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.repeats) <= 0:
        parser.error("--steps, --batch-size and --repeats must be > 0")
    if args.batch_size < 2:  # BatchNorm (in G) cannot train on one sample
        parser.error("--batch-size must be at least 2")
    if args.threads < 0:
        parser.error("--threads must be >= 0 (0: torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    data.ensure_dir(args.data_dir)  # a file, or a parent that does not exist: one paragraph
    bench = setup(args)
    args.precision_resolved = bench.precision
    warning = check_precision(bench.precision, bench.device)
    if warning:
        print(warning, file=sys.stderr)
    if args.population is not None:
        if args.population < 1:
            parser.error("--population must be >= 1")
        from gan.population import bench as population_bench

        return population_bench.main(args, bench)
    loops = _loops(bench)
    rows = _measure(loops, args, bench.device)
    labels = {k: label for k, (label, _) in loops.items()}
    _print_results(args, bench.device, bench.channels_last, labels, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
