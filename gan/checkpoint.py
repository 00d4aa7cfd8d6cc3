"""Checkpoints that survive: written atomically, every RNG captured, refused (and kept) if corrupt.

A checkpoint is one file, ``checkpoint.pt`` in the run directory: the trainer's state (networks,
optimizers, its random generator, epoch order, open metric window), the global RNG states, the
resolved config, the W&B run id, the metrics.jsonl offset and the best evaluation so far.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan import faults
from gan.errors import UserError
from gan.files import atomic_file

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


def rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save(run_dir: Path, blob: dict[str, Any]) -> Path:
    """Writes ``run_dir/checkpoint.pt`` atomically (serialized in memory, then ``atomic_file``):
    if anything fails, the previous checkpoint stays intact."""
    path = Path(run_dir) / CHECKPOINT_FILE
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **blob}, buffer)
    with atomic_file(path) as f:
        f.write(buffer.getbuffer())
        faults.point("checkpoint_write")
    return path


def load(run_dir: Path) -> dict[str, Any]:
    """The checkpoint in ``run_dir``; a UserError if missing or unreadable (the file is kept)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not Path(run_dir).is_dir():
        raise UserError(f"resume={run_dir}: no such run directory")
    if not path.is_file():
        raise UserError(
            f"resume={run_dir}: it holds no {CHECKPOINT_FILE}; only runs that wrote a "
            "checkpoint (trainer.ckpt_every, the end, or a preemption) can be resumed"
        )
    try:
        # numpy's and python's RNG states are plain containers, but not on torch's safe list.
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever the damage, refuse and keep the file
        raise UserError(
            f"resume={run_dir}: {path} is corrupt and cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]}); it was left untouched. Resume from another run or start anew."
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(
            f"resume={run_dir}: {path} is not a checkpoint of this version; it was left untouched"
        )
    return blob
