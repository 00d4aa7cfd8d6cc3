"""What ``gan.bench`` and ``gan.bench --population`` share: the benchmark's settings from the
command line and the YAML (``Bench``), its models and data, a sink that writes nothing, and what
the CPU can do."""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from gan import data, nets
from gan.config import DataConfig, ModelConfig, TrainerConfig, preset
from gan.nets import wants_channels_last
from gan.runtime import cpu_has_native_bf16, resolve_device, resolve_precision

WARMUP = 10
NEVER = 10**9  # a period no run reaches: the task runs at the last step only


class NoSink:
    def log(self, *args) -> None: ...
    def log_samples(self, *args) -> None: ...
    def log_diagnostics(self, *args) -> None: ...


@dataclass(frozen=True)
class Bench:
    """What the loops of one benchmark share: the model, the data, the trainer section (the
    YAML's, with the command's options) and where they run."""

    model: ModelConfig  # conf/model/<--model>.yaml
    data: DataConfig  # conf/dataset/<--dataset>.yaml, under --data-dir
    trainer: TrainerConfig  # conf/config.yaml's, with --batch-size, --compile and the like
    device: torch.device
    precision: str  # trainer.precision resolved for the device
    channels_last: bool
    steps: int  # timed steps per loop, after WARMUP
    seed: int


def setup(args: argparse.Namespace) -> Bench:
    """The benchmark the command asks for, its defaults from the YAML."""
    trainer = preset(
        TrainerConfig,
        "trainer",
        optimizer="adam",  # the conventional script's, which the reference loop is
        batch_size=args.batch_size,
        device=args.device,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graph=args.cuda_graph,
        precision=args.precision,
    )
    device = resolve_device(trainer.device, key="--device")
    return Bench(
        model=preset(ModelConfig, "model", args.model),
        data=preset(DataConfig, "dataset", args.dataset, root=args.data_dir),
        trainer=trainer,
        device=device,
        precision=resolve_precision(trainer.precision, device),
        channels_last=wants_channels_last(args.model, trainer.channels_last),
        steps=args.steps,
        seed=args.seed,
    )


def models(bench: Bench, seed: int, device: torch.device):
    """G and D as ``model=<model>`` builds them, PyTorch's default init.

    The one place that knows how a model is configured and built.
    """
    torch.manual_seed(seed)
    g, d = nets.build(bench.model, data.image_shape(bench.data.name))
    return g.to(device), d.to(device)


def training_split(bench: Bench) -> data.Split:
    """The training split as ``dataset=<dataset>`` loads it."""
    return data.load(bench.data, train=True)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_features() -> dict[str, object]:
    """The CPU's model and the flags that decide bf16's speed (Linux /proc/cpuinfo), and
    whether oneDNN runs bf16 natively here."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor(),
        **{flag: flag in flags for flag in CPU_FLAGS},
        "native_bf16": cpu_has_native_bf16(),
    }
