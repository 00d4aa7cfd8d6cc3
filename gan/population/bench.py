"""`python -m gan.bench --population K`: K members trained as one population against the
single-run loop, in one invocation, on the same data, model and device.

Both loops close a logging window every trainer.log_every steps (the host sync a run makes) and
write no files.
Prints member-steps/s (steps × members per second) and the ratio, as a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gan import nets
from gan.bench_setup import WARMUP, Bench, NoSink, cpu_features, models, training_split
from gan.population.trainer import PopulationTrainer
from gan.schedule import Schedule
from gan.trainer import GANTrainer


class _NoEvents:
    def evaluate(self, *args) -> None: ...
    def checkpoint(self, *args) -> None: ...
    def diverged(self, *args) -> None: ...
    def should_stop(self) -> bool:
        return False


class _NoBar:
    def update(self, n: int) -> None: ...


def _trainers(bench: Bench, members: int) -> list[GANTrainer]:
    images = training_split(bench).images.to(bench.device)
    trainers = []
    for seed in range(bench.seed, bench.seed + members):
        g, d = models(bench, seed, bench.device)
        trainer = GANTrainer(g, d, images, bench.trainer, seed=seed, precision=bench.precision)
        trainers.append(trainer)
    return trainers


def _schedule(bench: Bench, steps: int) -> Schedule:
    return Schedule(steps, log_every=bench.trainer.log_every, sample_every=10**9)


def time_single(bench: Bench) -> float:
    """Seconds for ``bench.steps`` steps of one run's loop (after warm-up)."""
    (trainer,) = _trainers(bench, 1)
    trainer.run(_schedule(bench, WARMUP), NoSink(), progress=False)
    start = time.perf_counter()
    trainer.run(_schedule(bench, WARMUP + bench.steps), NoSink(), progress=False)
    _sync(bench.device)
    return time.perf_counter() - start


def time_population(bench: Bench, members: int) -> tuple[float, float]:
    """Seconds for ``bench.steps`` lockstep steps of a population of ``members``, and for as many
    of its draws alone (each member's batch and noise, from its own streams: two small ops per
    member and step, host work that no batching or CUDA graph removes)."""
    population = PopulationTrainer(_trainers(bench, members))
    sinks = [NoSink()] * members
    population.run(_schedule(bench, WARMUP), sinks, _NoEvents(), _NoBar())
    start = time.perf_counter()
    population.run(_schedule(bench, WARMUP + bench.steps), sinks, _NoEvents(), _NoBar())
    _sync(bench.device)
    steps = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(bench.steps):
        population._draws()
    _sync(bench.device)
    return steps, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(args: argparse.Namespace, bench: Bench) -> int:
    device = bench.device
    single = population = draws = float("inf")
    for _ in range(args.repeats):  # interleaved; the best of each counts
        single = min(single, time_single(bench))
        steps_s, draws_s = time_population(bench, args.population)
        population, draws = min(population, steps_s), min(draws, draws_s)
    k = args.population
    rows = {
        "single": args.steps / single,
        "population": args.steps * k / population,
    }
    print(
        f"{args.model} GAN on {args.dataset}, batch {args.batch_size}, best of {args.repeats} × "
        f"{args.steps} timed steps, {device}, {torch.get_num_threads()} threads, "
        f"precision {bench.precision}, cuda_graph={bench.trainer.cuda_graph}, "
        f"windows of {bench.trainer.log_every} steps, no files"
    )
    print(f"{'loop':<26}{'member-steps/s':>16}{'× single':>10}")
    print(f"{'single run':<26}{rows['single']:>16.1f}{1:>10.2f}")
    label = f"population of {k}"
    print(f"{label:<26}{rows['population']:>16.1f}{rows['population'] / rows['single']:>10.2f}")
    draw_ms = 1000 * draws / args.steps
    print(f"its draws alone: {draw_ms:.2f} ms a step ({draws / population:.0%} of its step's time)")
    g, d = models(bench, bench.seed, torch.device("cpu"))
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "members": k,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "precision": bench.precision,
        "cuda_graph": bench.trainer.cuda_graph,
        "parameters": nets.count_parameters(g) + nets.count_parameters(d),
        "cpu": cpu_features(),
        "member_steps_per_s": rows,
        "ratio": rows["population"] / rows["single"],
        "draws_ms_per_step": draw_ms,
    }
    print(json.dumps(result))
    return 0
