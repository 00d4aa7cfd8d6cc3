"""Where and how a run computes: its device, its precision, and the seed of each random stream.

Each is resolved once per run (``gan.run.prepare``, or ``gan.bench``'s main) and handed on
resolved; the precision's name is checked where the config is built (``gan.config``), not here.
"""

from __future__ import annotations

import hashlib

import torch

from gan.errors import UserError


def derive_seed(seed: int, stream: str) -> int:
    """An independent seed per random stream (init of each network, batches, sample noise), so
    that no two streams of one run, or of two seeds, replay the same numbers."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(device: str, key: str = "trainer.device") -> torch.device:
    """``trainer.device`` (or the option ``key``) as a torch device: ``auto`` is cuda when
    present, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(
            f"{key}: unknown device {device!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type not in ("cpu", "cuda"):  # mps, xpu, meta…: paths never exercised here
        raise UserError(
            f"{key}={device}: this toolkit trains on cpu or cuda only "
            "(its loop, fused Adam and checkpoints are tested there); use auto, cpu, cuda or cuda:N"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"{key}={device} but CUDA is not available here; use {key}=auto or {key}=cpu"
        )
    if (
        resolved.type == "cuda"
        and resolved.index is not None
        and resolved.index >= torch.cuda.device_count()
    ):
        raise UserError(f"{key}={device} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return resolved


def resolve_precision(setting: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX), where it measured
    faster; fp32 elsewhere, CUDA included, where bf16 measured slower for these small models
    (README, Speed). ``fp32`` and ``bf16`` are taken as they are."""
    if setting != "auto":
        return setting
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def check_precision(precision: str, device: torch.device) -> str | None:
    """Refuses bf16 where the device cannot run it; returns a warning where it runs but slowly."""
    if precision != "bf16":
        return None
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise UserError(
            f"trainer.precision=bf16: {torch.cuda.get_device_name(device)} has no native bf16 "
            "(it needs compute capability 8.0, Ampere or newer); use trainer.precision=fp32"
        )
    if device.type == "cpu" and not cpu_has_native_bf16():
        return (
            "warning: trainer.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): "
            "bf16 is emulated here and training is ~20× slower than fp32"
        )
    return None


def cpu_has_native_bf16() -> bool:
    # oneDNN's own check (AVX512-BF16 or AMX), as torch's tests use it; no oneDNN, no fast bf16.
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
