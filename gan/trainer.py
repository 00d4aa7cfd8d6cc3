"""The GAN training loop: standard GAN, non-saturating generator loss, BCE on logits.

Per step: one discriminator update on a real and a fake batch, then one generator update against
the updated discriminator, reusing the same fakes. Metrics are summed on the device and read back
once per logging window, so no step waits on the host.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gan.diagnostics import LayerDiagnostics
from gan.errors import UserError
from gan.nets import Discriminator, Generator, generate

# Logged under train/, each the mean over the logging window. D-side values come from the D step
# (before its update); loss_G and acc_G from the G step, against the just-updated D.
METRICS = (
    "loss_D",      # BCE of D on the real+fake batch (mean of its real and fake halves)
    "loss_G",      # non-saturating: BCE(D(G(z)), real)
    "acc_D",       # D's accuracy on real+fake at threshold 0.5
    "acc_D_real",  # fraction of reals D calls real
    "acc_D_fake",  # fraction of fakes D calls fake
    "acc_G",       # fraction of fakes the updated D calls real
    "D_x",         # mean D(x) (probability) on reals
    "D_G_z",       # mean D(G(z)) on fakes
)
METRIC_KEYS = tuple(f"train/{m}" for m in METRICS)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    last: dict[str, float]  # the last logging window's metrics


def derive_seed(seed: int, stream: str) -> int:
    """An independent seed per random stream (init of each network, batches, sample noise), so
    that no two streams of one run, or of two seeds, replay the same numbers."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"trainer.device: unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={device} but CUDA is not available here; use trainer.device=auto or cpu")
    return resolved


def _adam(net: nn.Module, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    # Fused Adam updates all tensors in one kernel; it exists for CPU and CUDA float tensors.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(net.parameters(), lr=lr, betas=betas, fused=fused)


class Sink(Protocol):
    """Where the loop's results go (``gan.tracking.RunLogger``)."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_samples(self, step: int, images: torch.Tensor) -> object: ...
    def log_diagnostics(self, step: int, values: dict[str, float], samples: dict[str, torch.Tensor]) -> None: ...


def train(
    generator: Generator,
    discriminator: Discriminator,
    images: torch.Tensor,
    sink: Sink,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    betas: tuple[float, float],
    seed: int,
    log_every: int,
    sample_every: int,
    diag_every: int = 0,
    evaluate: Callable[[int, Generator], None] | None = None,
    eval_every: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Trains in place. ``images`` (N, C, H, W) in [-1, 1] already sits on the training device.

    Batches are drawn without replacement from a fresh permutation each epoch; every random draw
    comes from one generator seeded with ``seed``, so a run is reproducible on the same device.
    Diagnostics (``diag_every`` > 0) are recorded during steps 1, diag_every + 1, … and the last,
    and logged at the number of updates made before them (0, diag_every, …). ``evaluate(step, G)``
    runs every ``eval_every`` steps and after the last.
    """
    device = images.device
    g_opt = _adam(generator, lr, betas, device)
    d_opt = _adam(discriminator, lr, betas, device)
    rng = torch.Generator(device=device).manual_seed(derive_seed(seed, "train"))
    # Fixed noise for sample grids, from its own stream so sampling never shifts training draws.
    sample_rng = torch.Generator().manual_seed(derive_seed(seed, "samples"))
    fixed_z = torch.randn(64, generator.z_dim, generator=sample_rng).to(device)
    real_target = torch.ones(batch_size, 1, device=device)
    fake_target = torch.zeros(batch_size, 1, device=device)
    diagnostics = LayerDiagnostics({"G": generator, "D": discriminator}) if diag_every else None

    def gan_step(real: torch.Tensor) -> torch.Tensor:
        """One D update and one G update; returns the step's METRICS as one device tensor."""
        fake = generator(torch.randn(batch_size, generator.z_dim, generator=rng, device=device))

        # Discriminator: real → 1, fake → 0; fakes detached so G gets no gradient here.
        d_real = discriminator(real)
        d_fake = discriminator(fake.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(d_real, real_target)
            + F.binary_cross_entropy_with_logits(d_fake, fake_target)
        )
        d_opt.zero_grad(set_to_none=True)
        loss_d.backward()
        d_opt.step()

        # Generator, non-saturating: maximize log D(G(z)). D's weights need no gradient here.
        discriminator.requires_grad_(False)
        d_gen = discriminator(fake)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, real_target)
        g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        g_opt.step()
        discriminator.requires_grad_(True)

        with torch.no_grad():  # logits > 0 ⇔ D(x) > 0.5 ⇔ "real"
            acc_real = (d_real > 0).float().mean()
            acc_fake = (d_fake < 0).float().mean()
            return torch.stack((
                loss_d.detach(), loss_g.detach(), 0.5 * (acc_real + acc_fake), acc_real, acc_fake,
                (d_gen > 0).float().mean(), torch.sigmoid(d_real).mean(), torch.sigmoid(d_fake).mean(),
            ))

    n = images.shape[0]
    order = torch.randperm(n, generator=rng, device=device)
    cursor = 0
    window = torch.zeros(len(METRICS), device=device)
    window_steps = 0
    last: dict[str, float] = {}
    bar = _progress(steps, progress)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if cursor + batch_size > n:  # new epoch; the incomplete tail batch is dropped
            order = torch.randperm(n, generator=rng, device=device)
            cursor = 0
        real = images[order[cursor : cursor + batch_size]]
        cursor += batch_size

        if diagnostics and ((step - 1) % diag_every == 0 or step == steps):
            with diagnostics.recording(keep_samples=step in (1, steps)):
                window += gan_step(real)
            sink.log_diagnostics(step - 1, diagnostics.results(), diagnostics.samples)
        else:
            window += gan_step(real)
        window_steps += 1

        if step % log_every == 0 or step == steps:
            values = (window / window_steps).tolist()  # the window's only host sync
            last = dict(zip(METRIC_KEYS, values))
            sink.log(step, last)
            window.zero_()
            window_steps = 0
            bar.set_postfix(loss_D=f"{values[0]:.3f}", loss_G=f"{values[1]:.3f}",
                            acc_D=f"{values[2]:.2f}", refresh=False)
        if step % sample_every == 0 or step == steps:
            sink.log_samples(step, generate(generator, fixed_z))
        if evaluate and eval_every and (step % eval_every == 0 or step == steps):
            evaluate(step, generator)
        bar.update(1)
    bar.close()
    return TrainResult(steps=steps, seconds=time.perf_counter() - start, last=last)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True,
                mininterval=0.5)
