"""The runs' optimizers: which one ``trainer.optimizer`` names, and their state."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from gan.config import OPTIMIZERS, TrainerConfig
from gan.errors import UserError

CAPTURABLE_RUN_EAGERLY = "This instance was constructed with capturable=True"


def make_optimizer(
    net: nn.Module, trainer: TrainerConfig, device: torch.device, capturable: bool = False
) -> torch.optim.Optimizer:
    """``trainer.optimizer``: ``adam`` (takes ``betas``) or ``sgd`` (heavy-ball ``momentum``, no
    weight decay), at ``trainer.lr``. ``capturable``: Adam's step may run in a CUDA graph (the
    same fused update; torch refuses to capture it otherwise)."""
    # Fused kernels update all tensors at once; they exist for CPU and CUDA float tensors.
    fused = device.type in ("cpu", "cuda")
    name, lr = trainer.optimizer, trainer.lr
    if name == "adam":
        # torch warns when such an Adam steps eagerly (warm-up, diagnostic steps), as expected
        # here: silenced for the whole process.
        if capturable:
            warnings.filterwarnings("ignore", message=CAPTURABLE_RUN_EAGERLY, category=UserWarning)
        return torch.optim.Adam(
            net.parameters(), lr=lr, betas=trainer.betas, fused=fused, capturable=capturable
        )
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=trainer.momentum, fused=fused)
    raise UserError(f"trainer.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def load_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``saved`` (a checkpoint's optimizer state) into ``optimizer``, which keeps its own
    ``capturable``: the checkpoint may come from a run with or without a CUDA graph."""
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = optimizer.defaults["capturable"]
        for param in group["params"]:
            _lay_out_like(param, optimizer.state.get(param, {}))


def _lay_out_like(param: torch.Tensor, state: dict) -> None:
    """The per-element state (moments, momentum) in ``param``'s memory layout. A fused step
    pairs elements by storage order, so moments saved contiguous (a population member's) would
    update a channels_last weight with other elements' moments, silently."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == param.shape:
            if value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
