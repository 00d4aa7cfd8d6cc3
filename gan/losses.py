"""The two GAN losses as named pure functions, for one run or for K members of a population.

With ``members``, tensors are (K, B, …) and each member's loss is its own batch mean, (K,): summed
over members, every member gets exactly its own gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce(logits: torch.Tensor, target: float, members: bool) -> torch.Tensor:
    """BCE-with-logits against a constant target, the mean over a batch; ``members``: logits are
    (K, B, 1) for K members of a population, and the result is each member's own mean, (K,)."""
    targets = torch.full_like(logits, target)
    if not members:
        return F.binary_cross_entropy_with_logits(logits, targets)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.flatten(1).mean(1)


def batch_mean(x: torch.Tensor, members: bool) -> torch.Tensor:
    """The mean over a batch; with ``members``, each member's own mean over its batch, (K,)."""
    return x.flatten(1).mean(1) if members else x.mean()


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, members: bool = False
) -> torch.Tensor:
    """BCE of D calling reals real (1) and fakes fake (0), the mean of the two halves."""
    return 0.5 * (bce(real_logits, 1.0, members) + bce(fake_logits, 0.0, members))


def generator_loss(fake_logits: torch.Tensor, members: bool = False) -> torch.Tensor:
    """Non-saturating: G maximizes log D(G(z)), i.e. BCE of D calling its fakes real."""
    return bce(fake_logits, 1.0, members)
