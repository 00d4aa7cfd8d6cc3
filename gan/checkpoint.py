"""Checkpoints that survive: written atomically, every RNG captured, verified before use, and
refused (and kept) if corrupt, altered or unsafe.

A checkpoint is one file, ``checkpoint.pt`` in the run directory: the trainer's state (networks,
optimizers, its random generator, epoch order, open metric window), the global RNG states, the
resolved config, the W&B run id, the metrics.jsonl offset and the best evaluation so far.

On disk it is one header line, ``GAN-CHECKPOINT 2 sha256=<hex> bytes=<n>``, then the ``torch.save``
payload. The digest is checked before the payload is read, and the payload holds only plain
types (tensors, numbers, strings, lists, tuples, dicts), read with ``weights_only=True``: a
checkpoint can neither run code nor pass damaged weights off as a run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
import shlex
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan import console, faults
from gan.errors import UserError
from gan.files import atomic_file
from gan.record import CHECKPOINT_FILE

log = logging.getLogger(__name__)

FORMAT = 2
MAGIC = b"GAN-CHECKPOINT"
HEADER = re.compile(rb"GAN-CHECKPOINT (\d+) sha256=([0-9a-f]{64}) bytes=(\d+)\n")
MAX_HEADER = 128
# What a payload may hold, by exact type: a numpy scalar is a float subclass, yet unsafe to load.
PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device)


def hydra_value(text: str) -> str:
    """``text`` as a Hydra override value that reads back as itself: double-quoted, with quotes,
    the backslashes before them and ``${`` escaped, when it holds anything but plain path
    characters (a sweep's job directory is named like ``0_seed=7,trainer.lr=0.001``)."""
    if re.fullmatch(r"[\w/.+@-]+", text):
        return text
    escaped = re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text)
    return '"' + escaped.replace("${", "\\${") + '"'


def resume_command(run_dir: Path | str) -> str:
    """The shell command that continues the run in ``run_dir``, quoted for shell and Hydra."""
    return f"{console.train_command()} {shlex.quote('resume=' + hydra_value(str(run_dir)))}"


def rng_states() -> dict[str, Any]:
    """Every global RNG state, as plain types (numpy's key array as a tensor)."""
    state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": state["bit_generator"],
            "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
            "pos": int(state["state"]["pos"]),
            "has_gauss": int(state["has_gauss"]),
            "gauss": float(state["gauss"]),
        },
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(_numpy_state(states["numpy"]))
    random.setstate(_python_state(states["python"]))


def _numpy_state(saved: Any) -> Any:
    if not isinstance(saved, dict):  # format 1: numpy's own legacy tuple
        return saved
    key = saved["key"].numpy().astype(np.uint32)
    return {
        "bit_generator": saved["bit_generator"],
        "state": {"key": key, "pos": saved["pos"]},
        "has_gauss": saved["has_gauss"],
        "gauss": saved["gauss"],
    }


def _python_state(saved: Any) -> tuple:
    version, internal, gauss = saved  # lists after some round trips: random wants tuples
    return (version, tuple(internal), gauss)


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raises TypeError naming the first entry that ``weights_only=True`` could not read back."""
    if isinstance(value, torch.Tensor) or type(value) in PLAIN:
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):  # state_dicts are OrderedDicts
        for key, item in value.items():
            check_plain(key, f"{where} key {key!r}")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__qualname__}; a checkpoint holds plain types only")


def save(run_dir: Path, blob: dict[str, Any]) -> Path:
    """Writes ``run_dir/checkpoint.pt`` atomically (serialized in memory, then ``atomic_file``):
    if anything fails, the previous checkpoint stays intact."""
    path = Path(run_dir) / CHECKPOINT_FILE
    payload = {"format": FORMAT, **blob}
    check_plain(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    with atomic_file(path) as f:
        f.write(b"%s %d sha256=%s bytes=%d\n" % (MAGIC, FORMAT, digest.encode(), len(data)))
        f.write(data)
        faults.point("checkpoint_write")
    return path


def require(run_dir: Path) -> Path:
    """The path of ``run_dir``'s checkpoint; a UserError when there is none to resume."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not Path(run_dir).is_dir():
        raise UserError(f"resume={run_dir}: no such run directory")
    if not path.is_file():
        raise UserError(
            f"resume={run_dir}: it holds no {CHECKPOINT_FILE}; only runs that wrote a "
            "checkpoint (trainer.ckpt_every, the end, or a preemption) can be resumed"
        )
    return path


def load(run_dir: Path) -> dict[str, Any]:
    """The checkpoint in ``run_dir``, its digest verified and its content read with
    ``weights_only=True``; a UserError if missing, damaged, altered or unsafe (the file is kept)."""
    path = require(run_dir)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"resume={run_dir}: {path} cannot be read ({err})") from None
    legacy = not raw.startswith(MAGIC)  # format 1: no header, no digest
    payload = raw if legacy else _verified_payload(run_dir, path, raw)
    blob = _read(run_dir, path, payload, legacy=legacy)  # a legacy one: its known content only
    if not isinstance(blob, dict) or blob.get("format") not in (1, FORMAT):
        raise UserError(
            f"resume={run_dir}: {path} is not a checkpoint of this version; it was left untouched"
        )
    if legacy and blob["format"] != 1:  # every later format has a digest: never skip its check
        raise UserError(
            f"resume={run_dir}: {path} says format {blob['format']} but has lost the header "
            "that carries its sha256 digest (damaged or altered), so its weights cannot be "
            "trusted; it was left untouched. Resume from another run or start anew"
        )
    if legacy:
        log.warning(
            "warning: %s was written before checkpoints carried a digest: it is read safely, "
            "but damage to its weights cannot be detected",
            path,
        )
    return blob


def _verified_payload(run_dir: Path, path: Path, raw: bytes) -> bytes:
    newline = raw.find(b"\n", 0, MAX_HEADER)
    header = HEADER.fullmatch(raw[: newline + 1]) if newline >= 0 else None
    payload = raw[newline + 1 :]
    if header and int(header[1]) != FORMAT:
        raise UserError(
            f"resume={run_dir}: {path} is checkpoint format {int(header[1])}, this version reads "
            f"format {FORMAT}; resume it with the version that wrote it. It was left untouched"
        )
    if (
        header is None
        or int(header[3]) != len(payload)
        or hashlib.sha256(payload).hexdigest() != header[2].decode()
    ):
        raise UserError(
            f"resume={run_dir}: {path} is corrupt and cannot be read: its content does not match "
            "the sha256 digest written with it (damaged on disk, cut short or altered), so its "
            "weights cannot be trusted; it was left untouched. Resume from another run or start "
            "anew"
        )
    return payload


# What format 1 stored beyond torch's safe types: numpy's RNG state, a uint32 array.
_NP_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed it
LEGACY_GLOBALS = [_NP_CORE.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def _read(run_dir: Path, path: Path, payload: bytes, *, legacy: bool) -> Any:
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS if legacy else []):
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the damage, refuse and keep the file
        if "Unsupported global" in str(err) or "Weights only load failed" in str(err):
            raise UserError(
                f"resume={run_dir}: {path} is refused: it holds objects other than tensors and "
                "plain values, and loading them could run code (a checkpoint crafted or altered "
                "by someone else); it was not loaded, and was left untouched. Resume from "
                "another run or start anew"
            ) from None
        raise UserError(
            f"resume={run_dir}: {path} is corrupt and cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]}); it was left untouched. Resume from another run or start anew"
        ) from None
