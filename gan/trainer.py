"""The GAN training loop: standard GAN, non-saturating generator loss, BCE on logits.

Per step: one discriminator update on a real and a fake batch, then one generator update against
the updated discriminator, reusing the same fakes. Metrics are summed on the device and read back
once per logging window, so no step waits on the host.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gan.config import CHANNELS_LAST_SETTINGS, PRECISIONS, check_precision_name
from gan.console import progress_bar
from gan.diagnostics import LayerDiagnostics
from gan.errors import UserError
from gan.nets import Discriminator, Generator, generate

__all__ = ["CHANNELS_LAST_SETTINGS", "PRECISIONS", "GANTrainer", "Schedule", "TrainResult"]

# Logged under train/, each the mean over the logging window. D-side values come from the D step
# (before its update); loss_G and acc_G from the G step, against the just-updated D.
METRICS = (
    "loss_D",  # BCE of D on the real+fake batch (mean of its real and fake halves)
    "loss_G",  # non-saturating: BCE(D(G(z)), real)
    "acc_D",  # D's accuracy on real+fake at threshold 0.5
    "acc_D_real",  # fraction of reals D calls real
    "acc_D_fake",  # fraction of fakes D calls fake
    "acc_G",  # fraction of fakes the updated D calls real
    "D_x",  # mean D(x) (probability) on reals
    "D_G_z",  # mean D(G(z)) on fakes
)
METRIC_KEYS = tuple(f"train/{m}" for m in METRICS)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE of D calling reals real (1) and fakes fake (0), the mean of the two halves."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: G maximizes log D(G(z)), i.e. BCE of D calling its fakes real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@torch.no_grad()
def step_metrics(
    loss_d: torch.Tensor,
    loss_g: torch.Tensor,
    d_real: torch.Tensor,
    d_fake: torch.Tensor,
    d_gen: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """One step's METRICS by name, as 0-dim device tensors. A logit > 0 means D(x) > 0.5: "real"."""
    acc_real = (d_real > 0).float().mean()
    acc_fake = (d_fake < 0).float().mean()
    return {
        "loss_D": loss_d.detach(),
        "loss_G": loss_g.detach(),
        "acc_D": 0.5 * (acc_real + acc_fake),
        "acc_D_real": acc_real,
        "acc_D_fake": acc_fake,
        "acc_G": (d_gen > 0).float().mean(),
        "D_x": torch.sigmoid(d_real).mean(),
        "D_G_z": torch.sigmoid(d_fake).mean(),
    }


@dataclass(frozen=True)
class Schedule:
    """When the loop does what, over steps 1..``steps``. A period of 0 turns a periodic task off."""

    steps: int
    log_every: int
    sample_every: int
    diag_every: int = 0
    eval_every: int = 0
    ckpt_every: int = 0

    def due(self, every: int, step: int) -> bool:
        """Every ``every`` steps and at the last one; never when ``every`` is 0."""
        return every > 0 and (step % every == 0 or step == self.steps)

    def checkpoint_due(self, step: int) -> bool:
        """The last step always checkpoints, whatever the period."""
        return step == self.steps or (self.ckpt_every > 0 and step % self.ckpt_every == 0)

    def diag_due(self, step: int) -> tuple[bool, bool]:
        """(scalars, histograms) for step ``step``. Scalars are recorded during steps 1,
        diag_every + 1, … (logged at the updates made before: 0, diag_every, …); histograms at
        the first and the last step."""
        if not self.diag_every:
            return False, False
        return (step - 1) % self.diag_every == 0, step in (1, self.steps)


@dataclass(frozen=True)
class TrainResult:
    status: str  # finished | diverged | stopped (asked to stop, e.g. by a signal)
    step: int  # the last completed step
    seconds: float
    last: dict[str, float]  # the last logging window's metrics
    diverged_step: int | None = None  # the first step whose loss or weights were not finite


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
        raise UserError(
            f"trainer.device: unknown device {device!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type not in ("cpu", "cuda"):  # mps, xpu, meta…: paths never exercised here
        raise UserError(
            f"trainer.device={device}: this toolkit trains on cpu or cuda only "
            "(its loop, fused Adam and checkpoints are tested there); use auto, cpu, cuda or cuda:N"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={device} but CUDA is not available here; "
            "use trainer.device=auto or cpu"
        )
    if (
        resolved.type == "cuda"
        and resolved.index is not None
        and resolved.index >= torch.cuda.device_count()
    ):
        raise UserError(
            f"trainer.device={device} but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return resolved


def wants_channels_last(model: str, setting: str) -> bool:
    """channels_last memory format: ``auto`` turns it on for the convolutional model, whose
    convolutions run faster in it on CPU (README, Speed)."""
    return setting == "on" or (setting == "auto" and model == "dcgan")


def to_channels_last(
    g: nn.Module, d: nn.Module, images: torch.Tensor
) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """G, D and the images in channels_last memory format (same values, faster convolutions)."""
    fmt = torch.channels_last
    return g.to(memory_format=fmt), d.to(memory_format=fmt), images.contiguous(memory_format=fmt)


def check_precision(precision: str, device: torch.device) -> str | None:
    """Refuses bf16 where the device cannot run it; returns a warning where it runs but slowly."""
    check_precision_name(precision)
    if precision != "bf16":
        return None
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise UserError(
            f"trainer.precision=bf16: {torch.cuda.get_device_name(device)} has no native bf16 "
            "(it needs compute capability 8.0, Ampere or newer); use trainer.precision=fp32"
        )
    if device.type == "cpu" and not _cpu_has_native_bf16():
        return (
            "warning: trainer.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): "
            "bf16 is emulated here and training is ~20× slower than fp32"
        )
    return None


def _cpu_has_native_bf16() -> bool:
    # oneDNN's own check (AVX512-BF16 or AMX), as torch's tests use it; no oneDNN, no fast bf16.
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _adam(
    net: nn.Module, lr: float, betas: tuple[float, float], device: torch.device
) -> torch.optim.Adam:
    # Fused Adam updates all tensors in one kernel; it exists for CPU and CUDA float tensors.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(net.parameters(), lr=lr, betas=betas, fused=fused)


class Sink(Protocol):
    """Where the loop's results go (``gan.tracking.RunLogger``)."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_samples(self, step: int, images: torch.Tensor) -> object: ...
    def log_diagnostics(
        self, step: int, values: dict[str, float], samples: dict[str, torch.Tensor]
    ) -> None: ...


class Events(Protocol):
    """What a run does besides training (``gan.run``): evaluation, checkpoints, stop requests."""

    def evaluate(self, step: int, generator: Generator) -> None: ...
    def checkpoint(self, step: int) -> None: ...
    def should_stop(self) -> bool: ...


class _NoEvents:
    def evaluate(self, step: int, generator: Generator) -> None: ...
    def checkpoint(self, step: int) -> None: ...
    def should_stop(self) -> bool:
        return False


class GANTrainer:
    """The training loop and its whole state, so that a checkpoint can resume it exactly.

    ``images`` (N, C, H, W) in [-1, 1] sits on the training device. Batches are drawn without
    replacement from a fresh permutation each epoch; every random draw comes from one generator
    seeded from ``seed``, so a run is reproducible on the same device, resumed or not.

    ``torch_compile``: G and D forward passes through ``torch.compile`` (diagnostic steps run the
    eager modules, which share the parameters, so their hooks fire). ``precision="bf16"``: forward
    passes and losses under bf16 autocast (matmuls and convolutions in bf16, BatchNorm and losses
    in fp32); weights, gradients and Adam stay fp32. ``check_precision`` says whether the device
    runs bf16 natively.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        images: torch.Tensor,
        *,
        batch_size: int,
        lr: float,
        betas: tuple[float, float],
        seed: int,
        torch_compile: bool = False,
        precision: str = "fp32",
    ):
        self.g, self.d, self.images, self.batch_size = generator, discriminator, images, batch_size
        device = self.device = images.device
        check_precision_name(precision)
        self.bf16 = precision == "bf16"
        self.compiled = (
            (torch.compile(generator), torch.compile(discriminator)) if torch_compile else None
        )
        self.g_opt = _adam(generator, lr, betas, device)
        self.d_opt = _adam(discriminator, lr, betas, device)
        self.rng = torch.Generator(device=device).manual_seed(derive_seed(seed, "train"))
        # Fixed noise for sample grids, from its own stream so sampling never shifts training draws.
        sample_rng = torch.Generator().manual_seed(derive_seed(seed, "samples"))
        self.fixed_z = torch.randn(64, generator.z_dim, generator=sample_rng).to(device)
        # Without batch-dependent layers D scores each image on its own, so reals and fakes can go
        # through D as one batch (one larger matmul; the same function, equal up to
        # floating-point summation order).
        # With BatchNorm that would mix their statistics: two passes then.
        self.joint_d = not any(
            isinstance(m, nn.modules.batchnorm._NormBase) for m in discriminator.modules()
        )
        self.step = 0
        self.order = torch.randperm(len(images), generator=self.rng, device=device)
        self.cursor = 0
        self.window = torch.zeros(len(METRICS), device=device)  # metric sums of the open window
        self.window_steps = 0
        # The first step whose losses were not finite (0: none yet), kept on the device.
        self.step_tensor = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_step = torch.zeros((), dtype=torch.long, device=device)
        self.last: dict[str, float] = {}  # the last closed window's metrics

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "generator": self.g.state_dict(),
            "discriminator": self.d.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            "rng": self.rng.get_state(),
            "order": self.order,
            "cursor": self.cursor,
            "window": self.window,
            "window_steps": self.window_steps,
            "first_bad_step": int(self.first_bad_step),
            "last": dict(self.last),
            "device": self.device.type,
        }

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.rng.set_state(state["rng"])
        self.step, self.cursor, self.window_steps = (
            state["step"],
            state["cursor"],
            state["window_steps"],
        )
        self.order = state["order"].to(self.device)
        self.window = state["window"].to(self.device)
        self.step_tensor.fill_(self.step)
        self.first_bad_step.fill_(state["first_bad_step"])
        self.last = dict(state["last"])

    def _next_batch(self) -> torch.Tensor:
        if self.cursor + self.batch_size > len(self.images):  # new epoch; the tail batch is dropped
            self.order = torch.randperm(len(self.images), generator=self.rng, device=self.device)
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.images[idx]

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def gan_step(self, real: torch.Tensor, eager: bool = False) -> dict[str, torch.Tensor]:
        """One D update and one G update; returns the step's METRICS by name (device tensors).
        ``eager``: run the plain modules even when compiled (diagnostic hooks need them)."""
        g, d = (self.g, self.d) if eager or not self.compiled else self.compiled
        z = torch.randn(self.batch_size, self.g.z_dim, generator=self.rng, device=self.device)

        # Discriminator: fakes detached so G gets no gradient here. Logits are cast to fp32
        # before the loss (a no-op without autocast).
        with self._autocast():
            fake = g(z)
            if self.joint_d:
                both = d(torch.cat((real, fake.detach()))).float()
                d_real, d_fake = both.split(self.batch_size)
            else:
                d_real, d_fake = d(real).float(), d(fake.detach()).float()
            loss_d = discriminator_loss(d_real, d_fake)
        self.d_opt.zero_grad(set_to_none=True)
        loss_d.backward()
        self.d_opt.step()

        # Generator, against the updated D. D's weights need no gradient here.
        self.d.requires_grad_(False)
        with self._autocast():
            d_gen = d(fake).float()
            loss_g = generator_loss(d_gen)
        self.g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        self.g_opt.step()
        self.d.requires_grad_(True)

        self._track_divergence(loss_d, loss_g)
        return step_metrics(loss_d, loss_g, d_real, d_fake, d_gen)

    @torch.no_grad()
    def _track_divergence(self, loss_d: torch.Tensor, loss_g: torch.Tensor) -> None:
        # On the device, so no step waits on the host: the first step with a non-finite loss.
        self.step_tensor += 1
        finite = torch.isfinite(loss_d) & torch.isfinite(loss_g)
        first = ~finite & (self.first_bad_step == 0)
        self.first_bad_step = torch.where(first, self.step_tensor, self.first_bad_step)

    def _step(self, real: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """gan_step's metrics stacked in METRICS order, for the window's running sums."""
        try:
            metrics = self.gan_step(real, eager)
            return torch.stack([metrics[name] for name in METRICS])
        except (
            torch._dynamo.exc.BackendCompilerFailed
        ) as err:  # torch.compile compiles lazily, here
            cause = getattr(err, "inner_exception", None) or err
            reason = (str(cause).strip().splitlines() or [""])[0]
            raise UserError(
                f"trainer.compile=true: torch.compile failed at step {self.step + 1} "
                f"({type(cause).__name__}: {reason}); train without it: "
                "trainer.compile=false"
            ) from err

    def _weights_finite(self) -> torch.Tensor:
        return torch.stack(
            [torch.isfinite(p).all() for p in (*self.g.parameters(), *self.d.parameters())]
        ).all()

    def run(
        self, schedule: Schedule, sink: Sink, events: Events | None = None, progress: bool = True
    ) -> TrainResult:
        """Trains from ``self.step`` up to ``schedule.steps``.

        Metrics: one host sync per logging window. Divergence (a non-finite loss at any step, or
        non-finite weights) is read at that sync and stops the run, reporting the exact step.
        ``events`` evaluates, checkpoints (also when it asks to stop) and may ask to stop.
        """
        events = events or _NoEvents()
        diagnostics = LayerDiagnostics({"G": self.g, "D": self.d}) if schedule.diag_every else None
        bar = progress_bar(schedule.steps, self.step, desc="train", enabled=progress)
        start = time.perf_counter()
        result = None
        while self.step < schedule.steps and result is None:
            step = self.step + 1
            self._train_step(step, schedule, sink, diagnostics)
            if schedule.due(schedule.log_every, step):
                result = self._close_window(step, sink, bar, start)
            if result is None:
                result = self._after_step(step, schedule, sink, events, start)
            bar.update(1)
        bar.close()
        return result or TrainResult("finished", self.step, time.perf_counter() - start, self.last)

    def _train_step(
        self, step: int, schedule: Schedule, sink: Sink, diagnostics: LayerDiagnostics | None
    ) -> None:
        real = self._next_batch()
        scalars, histograms = schedule.diag_due(step)
        if diagnostics and (scalars or histograms):
            # Histograms only on the last step, so a resumed run's metrics equal an
            # uninterrupted one's (the same steps run hooked).
            with diagnostics.recording(keep_samples=histograms):
                self.window += self._step(real, eager=True)
            values = diagnostics.results() if scalars else {}
            sink.log_diagnostics(step - 1, values, diagnostics.samples)
        else:
            self.window += self._step(real)
        self.window_steps += 1
        self.step = step

    def _close_window(self, step: int, sink: Sink, bar, start: float) -> TrainResult | None:
        """Logs the window's means; a TrainResult when the run diverged."""
        # The window's only host sync: its metrics, the divergence flag, finite weights.
        synced = torch.cat(
            (
                self.window / self.window_steps,
                self.first_bad_step[None].float(),
                self._weights_finite()[None].float(),
            )
        ).tolist()
        *values, first_bad, weights_ok = synced
        if first_bad or not weights_ok:
            diverged_at = int(first_bad) or step
            sink.log(step, {"diverged": True, "diverged_step": diverged_at})
            seconds = time.perf_counter() - start
            return TrainResult("diverged", step, seconds, self.last, diverged_at)
        self.last = dict(zip(METRIC_KEYS, values))
        sink.log(step, self.last)
        self.window.zero_()
        self.window_steps = 0
        bar.set_postfix(
            loss_D=f"{self.last['train/loss_D']:.3f}",
            loss_G=f"{self.last['train/loss_G']:.3f}",
            acc_D=f"{self.last['train/acc_D']:.2f}",
            refresh=False,
        )
        return None

    def _after_step(
        self, step: int, schedule: Schedule, sink: Sink, events: Events, start: float
    ) -> TrainResult | None:
        """Samples, evaluation, checkpoint; a TrainResult when asked to stop early."""
        if schedule.due(schedule.sample_every, step):
            sink.log_samples(step, generate(self.g, self.fixed_z))
        if schedule.due(schedule.eval_every, step):
            events.evaluate(step, self.g)
        stop = events.should_stop()
        if stop or schedule.checkpoint_due(step):
            events.checkpoint(step)
        if stop and step < schedule.steps:
            return TrainResult("stopped", step, time.perf_counter() - start, self.last)
        return None
