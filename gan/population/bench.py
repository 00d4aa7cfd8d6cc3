"""`python -m gan.bench --population K`: K members trained as one population against the
single-run loop, in one invocation, on the same data, model and device.

Both loops close a logging window every 50 steps (the host sync a run makes) and write no files.
Prints member-steps/s (steps × members per second) and the ratio, as a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gan import nets
from gan.bench import WARMUP, _models, _NoSink, _training_split, cpu_features
from gan.population.trainer import PopulationTrainer
from gan.trainer import GANTrainer, Schedule

WINDOW = 50


class _NoEvents:
    def evaluate(self, *args) -> None: ...
    def checkpoint(self, *args) -> None: ...
    def should_stop(self) -> bool:
        return False


class _NoBar:
    def update(self, n: int) -> None: ...


def _trainers(args: argparse.Namespace, device: torch.device, members: int) -> list[GANTrainer]:
    images = _training_split(args.dataset, args.data_dir).images.to(device)
    trainers = []
    for seed in range(args.seed, args.seed + members):
        g, d = _models(args.model, args.dataset, seed, device)
        trainers.append(
            GANTrainer(
                g,
                d,
                images,
                batch_size=args.batch_size,
                lr=2e-4,
                betas=(0.5, 0.999),
                seed=seed,
                precision=args.precision_resolved,
            )
        )
    return trainers


def _schedule(steps: int) -> Schedule:
    return Schedule(steps, log_every=WINDOW, sample_every=10**9)


def time_single(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds for ``args.steps`` steps of one run's loop (after warm-up)."""
    (trainer,) = _trainers(args, device, 1)
    trainer.run(_schedule(WARMUP), _NoSink(), progress=False)
    start = time.perf_counter()
    trainer.run(_schedule(WARMUP + args.steps), _NoSink(), progress=False)
    _sync(device)
    return time.perf_counter() - start


def time_population(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds for ``args.steps`` lockstep steps of a population of ``args.population``."""
    population = PopulationTrainer(_trainers(args, device, args.population))
    sinks = [_NoSink()] * args.population
    population.run(_schedule(WARMUP), sinks, _NoEvents(), _NoBar())
    start = time.perf_counter()
    population.run(_schedule(WARMUP + args.steps), sinks, _NoEvents(), _NoBar())
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(args: argparse.Namespace, device: torch.device) -> int:
    single = population = float("inf")
    for _ in range(args.repeats):  # interleaved; the best of each counts
        single = min(single, time_single(args, device))
        population = min(population, time_population(args, device))
    k = args.population
    rows = {
        "single": args.steps / single,
        "population": args.steps * k / population,
    }
    print(
        f"{args.model} GAN on {args.dataset}, batch {args.batch_size}, best of {args.repeats} × "
        f"{args.steps} timed steps, {device}, {torch.get_num_threads()} threads, "
        f"precision {args.precision_resolved}, windows of {WINDOW} steps, no files"
    )
    print(f"{'loop':<26}{'member-steps/s':>16}{'× single':>10}")
    print(f"{'single run':<26}{rows['single']:>16.1f}{1:>10.2f}")
    label = f"population of {k}"
    print(f"{label:<26}{rows['population']:>16.1f}{rows['population'] / rows['single']:>10.2f}")
    g, d = _models(args.model, args.dataset, args.seed, torch.device("cpu"))
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "members": k,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": args.precision_resolved,
        "parameters": nets.count_parameters(g) + nets.count_parameters(d),
        "cpu": cpu_features(),
        "member_steps_per_s": rows,
        "ratio": rows["population"] / rows["single"],
    }
    print(json.dumps(result))
    return 0
