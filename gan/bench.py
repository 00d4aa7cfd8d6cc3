"""`python -m gan.bench`: this project's training loop against the conventional one.

In one process, on the same data and the same model math (the same G and D, BCE on logits,
non-saturating G loss, Adam(2e-4, (0.5, 0.999))):

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
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from gan import data, nets
from gan.errors import UserError
from gan.config import ModelConfig, build
from gan.trainer import (CHANNELS_LAST_SETTINGS, PRECISIONS, GANTrainer, check_precision, resolve_device,
                         to_channels_last, wants_channels_last)

WARMUP = 10
MODEL_CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


class _NoSink:
    def log(self, *args) -> None: ...
    def log_samples(self, *args) -> None: ...
    def log_diagnostics(self, *args) -> None: ...


def _models(model: str, dataset: str, seed: int, device: torch.device):
    """G and D as ``model=<model>`` builds them (conf/model/<model>.yaml), PyTorch's default init."""
    from omegaconf import OmegaConf

    cfg = build(ModelConfig, OmegaConf.to_container(OmegaConf.load(MODEL_CONF / f"{model}.yaml")), "model")
    torch.manual_seed(seed)
    g, d = nets.build(model, data.image_shape(dataset), z_dim=cfg.z_dim, g_widths=cfg.generator_widths,
                      d_widths=cfg.discriminator_widths, slope=cfg.slope)
    return g.to(device), d.to(device)


class _PerSampleDataset(torch.utils.data.Dataset):
    """uint8 images served one PIL image at a time through a transform, as torchvision's are."""

    def __init__(self, images_uint8: torch.Tensor, transform):
        self.images, self.transform = images_uint8, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), 0


def _reference_dataset(dataset: str, root: Path):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    if dataset in ("mnist", "fashion_mnist"):
        data.load(dataset, root)  # unpacks Debian's files / downloads once, like the project does
        cls = datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST
        return cls(str(root), train=True, transform=transform, download=False)
    images = data.load(dataset, root).images  # digits: back to 0..255 bytes, served per sample
    return _PerSampleDataset(((images + 1) * 127.5).round().to(torch.uint8), transform)


def reference_loop(model: str, dataset: str, root: Path, batch_size: int, steps: int, device: torch.device,
                   seed: int) -> float:
    """Seconds for ``steps`` steps of the conventional loop (after warm-up)."""
    g, d = _models(model, dataset, seed, device)
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(_reference_dataset(dataset, root), batch_size=batch_size,
                                         shuffle=True, drop_last=True)
    ones = torch.ones(batch_size, 1, device=device)
    zeros = torch.zeros(batch_size, 1, device=device)
    done, start = 0, None
    while done < steps + WARMUP:
        for real, _ in loader:
            if done == WARMUP:
                start = time.perf_counter()
            real = real.to(device)
            fake = g(torch.randn(batch_size, 100, device=device))
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d(real), ones)
                            + F.binary_cross_entropy_with_logits(d(fake.detach()), zeros))
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


def project_loop(model: str, dataset: str, root: Path, batch_size: int, steps: int, device: torch.device,
                 seed: int, logging: bool, channels_last: bool, torch_compile: bool = False,
                 precision: str = "fp32") -> float:
    """Seconds for ``steps`` steps of GANTrainer (after warm-up), logging as a run does or not."""
    from gan.tracking import RunLogger

    g, d = _models(model, dataset, seed, device)
    images = data.load(dataset, root).images.to(device)
    if channels_last:
        g, d, images = to_channels_last(g, d, images)
    trainer = GANTrainer(g, d, images, batch_size=batch_size, lr=2e-4, betas=(0.5, 0.999), seed=seed,
                         torch_compile=torch_compile, precision=precision)
    trainer.run(WARMUP, _NoSink(), log_every=WARMUP, sample_every=10**9, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("WANDB_SILENT", "true")
        sink = RunLogger(Path(tmp), mode="offline", project="gan-init-bench", entity=None, name="bench",
                         group="bench", job_type="bench", tags=[], config={}) if logging else nullcontext(_NoSink())
        with sink as sink:
            start = time.perf_counter()
            # As a real run: a logging window of 50, diagnostics and a sample grid every 500 steps.
            trainer.run(WARMUP + steps, sink, log_every=50 if logging else 10**9,
                        sample_every=500 if logging else 10**9, diag_every=500 if logging else 0,
                        progress=logging)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gan.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=nets.MODELS, default="mlp")
    parser.add_argument("--dataset", choices=data.DATASETS, default="fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500, help="timed steps per loop (after 10 warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, interleaved; the best counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--channels-last", choices=CHANNELS_LAST_SETTINGS, default="auto",
                        help="channels_last memory format for the project's loop (auto: on for dcgan)")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D in the project's loop")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the project's loop under bf16 autocast or not")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.repeats) <= 0:
        parser.error("--steps, --batch-size and --repeats must be > 0")
    try:
        device = resolve_device(args.device)
        channels_last = wants_channels_last(args.model, args.channels_last)
        warning = check_precision(args.precision, device)
        if warning:
            print(warning, file=sys.stderr)
        options = {"channels_last": channels_last, "torch_compile": args.compile, "precision": args.precision}
        common = (args.model, args.dataset, args.data_dir, args.batch_size, args.steps, device, args.seed)
        loops = {
            "reference": ("reference", lambda: reference_loop(*common)),
            "project": ("project (logging on)",
                        lambda: project_loop(*common, logging=True, **options)),
            "project_nolog": ("project (logging off)",
                              lambda: project_loop(*common, logging=False, **options)),
        }
        best: dict[str, float] = {}
        peak: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, best of: this machine's noise is ±10 % per run
            for key, (_, loop) in loops.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                best[key] = min(best.get(key, float("inf")), loop())
                peak[key] = _peak_memory_mb(device)
        rows = {key: {"steps_per_s": args.steps / s, "images_per_s": args.steps * args.batch_size / s,
                      "peak_mb": peak[key]} for key, s in best.items()}
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ref, on, off = (rows[k]["steps_per_s"] for k in ("reference", "project", "project_nolog"))
    print(f"{args.model} GAN on {args.dataset}, batch {args.batch_size}, best of {args.repeats} × {args.steps} "
          f"timed steps, {device}, "
          f"{torch.get_num_threads()} threads, channels_last={channels_last}, compile={args.compile}, "
          f"precision={args.precision}")
    print(f"{'loop':<24}{'steps/s':>10}{'images/s':>12}{'× reference':>13}{'peak MB':>10}")
    for key, r in rows.items():
        print(f"{loops[key][0]:<24}{r['steps_per_s']:>10.1f}{r['images_per_s']:>12.0f}"
              f"{r['steps_per_s'] / ref:>13.2f}{r['peak_mb']:>10.0f}")
    print(f"logging overhead: {100 * (off / on - 1):+.1f} % step time")
    print(json.dumps({"model": args.model, "dataset": args.dataset, "batch_size": args.batch_size,
                      "steps": args.steps, "device": str(device), "threads": torch.get_num_threads(),
                      "channels_last": channels_last, "compile": args.compile, "precision": args.precision,
                      "ratio": on / ref, "logging_overhead": off / on - 1,
                      **rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
