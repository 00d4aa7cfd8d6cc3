"""Continuing a run: what its checkpoint must hold, and what a resumed run may change.

A resumed run must continue the same experiment on the same device, precision and thread count,
over a metrics.jsonl that kept every line the checkpoint counted.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from gan import record
from gan.config import RunConfig, resume_may_change
from gan.errors import UserError

# What a resumed run may change (its length, periods, threads, logging, paths), declared in
# gan.config.KEY_USES: anything else would not continue the same run.
RESUME_MAY_CHANGE = resume_may_change()


RESUMED_KEYS = ("trainer", "rng", "config", "metrics_offset", "wandb_id", "best")


def check_resumable(
    cfg: RunConfig, resumed: dict[str, Any], device: torch.device, precision: str
) -> None:
    """Refuses to continue a checkpoint as a different experiment, device or length, or over a
    metrics.jsonl that lost lines."""
    missing = [k for k in RESUMED_KEYS if k not in resumed]
    if missing or not isinstance(resumed["trainer"], dict):
        raise UserError(
            f"resume={cfg.out_dir}: its {record.CHECKPOINT_FILE} lacks "
            f"{', '.join(missing) or 'the trainer state'}; it is not a checkpoint of a run of "
            "train.py, and was left untouched. Resume another run, or start a new one"
        )
    trained_on = resumed["trainer"]["device"]
    if trained_on != device.type:  # random generator states differ by device
        raise UserError(
            f"resume={cfg.out_dir}: the run trained on {trained_on}, this machine would use "
            f"{device.type}; resume it with trainer.device={trained_on}"
        )
    trained_in = resumed.get("precision", "fp32")  # older checkpoints: fp32, the old default
    if trained_in != precision:
        raise UserError(
            f"resume={cfg.out_dir}: the run trained in {trained_in}, and trainer.precision="
            f"{cfg.trainer.precision} resolves to {precision} here; resume it with "
            f"trainer.precision={trained_in}"
        )
    changed = changed_settings(resumed["config"], cfg.resolved)
    if changed:
        raise UserError(
            f"resume={cfg.out_dir}: this run's {', '.join(changed)} differ(s) from the "
            "checkpoint's; a resumed run must continue the same experiment (only "
            f"{', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)} may change). Drop those "
            "overrides, or start a new run"
        )
    step = resumed["trainer"]["step"]
    # A run killed after its last checkpoint but before its summary has not ended: resuming it
    # writes the summary.
    if step >= cfg.trainer.steps and record.Summary(cfg.out_dir).final_status():
        raise UserError(
            f"resume={cfg.out_dir}: the checkpoint is at step {step}, trainer.steps="
            f"{cfg.trainer.steps}; raise trainer.steps to train further"
        )
    metrics = cfg.out_dir / record.METRICS_FILE
    size = metrics.stat().st_size if metrics.is_file() else None
    if size is None or size < resumed["metrics_offset"]:
        what = "is missing" if size is None else f"has {size:,} bytes"
        raise UserError(
            f"resume={cfg.out_dir}: {record.METRICS_FILE} {what}, but the checkpoint was taken "
            f"after {resumed['metrics_offset']:,}; the run's record was lost or cut, and resuming "
            "would leave a hole in it. Restore the file, or start a new run"
        )
    check_metrics_lines(cfg, metrics, resumed["metrics_offset"])


def check_threads(
    cfg: RunConfig, resumed: dict[str, Any], device: torch.device, threads: int
) -> None:
    """Refuses to continue a CPU run at another thread count: torch splits its sums by thread,
    so the same seed gives other numbers, and the run would no longer be the one it was."""
    trained_with = resumed.get("threads")  # None: a checkpoint of an older version
    if device.type != "cpu" or trained_with is None or trained_with == threads:
        return
    raise UserError(
        f"resume={cfg.out_dir}: the run trained with {trained_with} CPU thread(s), and "
        f"trainer.threads={cfg.trainer.threads} gives {threads} here; the thread count is part "
        f"of a CPU run's numbers: resume it with trainer.threads={trained_with}"
    )


def check_metrics_lines(cfg: RunConfig, metrics, offset: int) -> None:
    """Refuses a resume over a metrics.jsonl whose lines before the checkpoint's offset are not
    JSON objects: the run's outcome is read from them at its end."""
    with open(metrics, "rb") as f:
        head = f.read(offset)
    for number, line in enumerate(head.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise UserError(
                f"resume={cfg.out_dir}: {record.METRICS_FILE} line {number} is not a JSON "
                "object; the run's record before its checkpoint is damaged, and its outcome is "
                "read from it. Restore the file, or start a new run"
            )


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs, outside RESUME_MAY_CHANGE; a changed seed, model, init or
    dataset is named by its group. Keys a checkpoint of an older version lacks are not compared."""
    old, new = _flatten(saved), _flatten(now)
    changed: dict[str, None] = {}
    for key in old.keys() & new.keys():
        if old[key] == new[key] or key.startswith(RESUME_MAY_CHANGE):
            continue
        group = key.split(".", 1)[0]
        changed[group if group in ("seed", "model", "init", "dataset") else key] = None
    return list(changed)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat
