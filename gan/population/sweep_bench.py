"""`python -m gan.population.sweep_bench`: one sweep's wall time under the population launcher
against the joblib launcher, end to end (start-up, evaluation, diagnostics, samples,
checkpoints, W&B offline, the sweep's report), as issue 21's CPU target states it:

    python train.py -m init=default,he_xavier seed='range(0,8)' hydra/launcher=joblib \\
        hydra.launcher.n_jobs=2 trainer.threads=1
    python train.py -m init=default,he_xavier seed='range(0,8)' hydra/launcher=population

Each sweep runs as its own `train.py` process, in a fresh sweep directory; the launchers
alternate over ``--repeats``, and the best time of each counts. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: train.py and conf/
LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1"],
    "population": ["hydra/launcher=population"],
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    from gan.config import entry_default

    parser = argparse.ArgumentParser(
        prog="python -m gan.population.sweep_bench", description=__doc__
    )
    parser.add_argument("--arms", default="default,he_xavier", help="init=… of the sweep")
    parser.add_argument("--seeds", type=int, default=8, help="seed=range(0,N)")
    parser.add_argument("--steps", type=int, default=3000, help="trainer.steps (default: 3000)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-dir", default=entry_default("data_dir"))
    parser.add_argument("--out", default=None, help="sweep dirs here (default: a temporary dir)")
    parser.add_argument(
        "--population-args", default="", help="extra overrides for the population sweep"
    )
    return parser.parse_args(argv)


def sweep_seconds(args: argparse.Namespace, launcher: str, sweep_dir: Path) -> tuple[float, float]:
    """Wall and CPU seconds (its processes' user + system) of one sweep; raises if it failed."""
    extra = args.population_args.split() if launcher == "population" else []
    command = [
        sys.executable,
        "train.py",
        "-m",
        f"init={args.arms}",
        f"seed=range(0,{args.seeds})",
        f"trainer.steps={args.steps}",
        f"data_dir={args.data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        *LAUNCHERS[launcher],
        *extra,
    ]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **os.environ}
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, cpu


def _children_cpu() -> float:
    """CPU seconds of this process's ended children (and theirs): less sensitive than wall time
    to other people's load on a shared machine, for a paired comparison."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def warm_up(args: argparse.Namespace) -> None:
    """The dataset and its evaluation classifier, made before either sweep is timed."""
    from gan import data, quality
    from gan.config import DataConfig, preset

    source = preset(DataConfig, "dataset", "digits", root=str(Path(args.data_dir).resolve()))
    data.load(source, train=True)
    quality.load_classifier(source)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.data_dir = str(Path(args.data_dir).resolve())
    warm_up(args)
    out = Path(args.out or tempfile.mkdtemp(prefix="sweep_bench_"))
    best = {name: float("inf") for name in LAUNCHERS}
    for repeat in range(args.repeats):
        order = list(LAUNCHERS) if repeat % 2 == 0 else list(reversed(LAUNCHERS))
        for name in order:
            seconds, cpu = sweep_seconds(args, name, out / f"{name}-{repeat}")
            best[name] = min(best[name], seconds)
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{name:<12}{seconds:>9.1f} s wall {cpu:>9.1f} s CPU  (load {load})")
    ratio = best["joblib"] / best["population"]
    print(f"population launcher {ratio:.2f}× faster than joblib (n_jobs=2, one thread each)")
    print(json.dumps({"seconds": best, "ratio": ratio, "cores": os.cpu_count(), **vars(args)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
