"""The GAN training loop: standard GAN, non-saturating generator loss, BCE on logits.

Per step: one discriminator update on a real and a fake batch, then one generator update against
the updated discriminator, reusing the same fakes. Metrics are summed on the device and read back
once per logging window, so no step waits on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gan.config import TrainerConfig
from gan.console import progress_bar
from gan.cuda_graph import GraphedStep, training_state
from gan.diagnostics import LayerDiagnostics
from gan.errors import UserError
from gan.losses import batch_mean, discriminator_loss, generator_loss
from gan.nets import Discriminator, Generator, generate
from gan.optimizers import load_state, make_optimizer
from gan.record import Ending
from gan.runtime import derive_seed
from gan.schedule import Schedule

__all__ = ["GANTrainer", "TrainResult"]

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
TRAIN_PREFIX = "train/"
METRIC_KEYS = tuple(f"{TRAIN_PREFIX}{m}" for m in METRICS)
# Each key by name, for the modules that read one (the outcome rule, the result line, the report).
LOSS_D, LOSS_G, ACC_D, ACC_D_REAL, ACC_D_FAKE, ACC_G, D_X, D_G_Z = METRIC_KEYS
LOSSES = [METRICS.index("loss_D"), METRICS.index("loss_G")]  # a non-finite one means divergence


def window_means(rows: torch.Tensor) -> torch.Tensor:
    """The mean of a logging window's rows (steps, …, METRICS), summed step by step: the
    summation order of a running sum, whatever the window's length."""
    total = rows[0].clone()
    for row in rows[1:]:
        total += row
    return total / len(rows)


def diverged_step(step: int, finite_losses: list[float], weights_ok: float) -> int | None:
    """The first step of the window ending at ``step`` whose losses were not finite (the last
    step if only the weights are not), or None if the window is healthy."""
    if all(finite_losses) and weights_ok:
        return None
    n = len(finite_losses)
    first_bad = finite_losses.index(0.0) if not all(finite_losses) else n - 1
    return step - n + 1 + first_bad


@torch.no_grad()
def step_metrics(
    loss_d: torch.Tensor,
    loss_g: torch.Tensor,
    d_real: torch.Tensor,
    d_fake: torch.Tensor,
    d_gen: torch.Tensor,
    members: bool = False,
) -> dict[str, torch.Tensor]:
    """One step's METRICS by name, as 0-dim device tensors ((K,) per member with ``members``).
    A logit > 0 means D(x) > 0.5: "real"."""
    acc_real = batch_mean((d_real > 0).float(), members)
    acc_fake = batch_mean((d_fake < 0).float(), members)
    return {
        "loss_D": loss_d.detach(),
        "loss_G": loss_g.detach(),
        "acc_D": 0.5 * (acc_real + acc_fake),
        "acc_D_real": acc_real,
        "acc_D_fake": acc_fake,
        "acc_G": batch_mean((d_gen > 0).float(), members),
        "D_x": batch_mean(torch.sigmoid(d_real), members),
        "D_G_z": batch_mean(torch.sigmoid(d_fake), members),
    }


def metric_row(metrics: dict[str, torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``step_metrics``' values stacked in METRICS order along ``dim``: a window's row."""
    return torch.stack([metrics[name] for name in METRICS], dim=dim)


@dataclass(frozen=True)
class TrainResult:
    status: Ending
    step: int  # the last completed step
    seconds: float
    last: dict[str, float]  # the last logging window's metrics
    diverged_step: int | None = None  # the first step whose loss or weights were not finite


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

    ``trainer``: the run's trainer section, of which the trainer reads the batch size, the
    optimizer (``adam`` with ``betas`` or ``sgd`` with ``momentum``) and its ``lr``, and
    ``compile``: G and D forward passes through ``torch.compile`` (diagnostic steps run the eager
    modules, which share the parameters, so their hooks fire). ``precision``: the section's
    precision as resolved for the device (``gan.runtime.resolve_precision``): ``bf16`` runs the
    forward passes and losses under bf16 autocast (matmuls and convolutions in bf16, BatchNorm and
    losses in fp32); weights, gradients and Adam stay fp32. Library callers get the YAML's
    section from ``gan.config.preset(TrainerConfig, "trainer")``.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        images: torch.Tensor,
        trainer: TrainerConfig,
        *,
        seed: int,
        precision: str,
    ):
        self.g, self.d, self.images = generator, discriminator, images
        self.batch_size = trainer.batch_size
        device = self.device = images.device
        if precision not in ("fp32", "bf16"):  # "auto" would silently train in fp32
            raise ValueError(f"precision: fp32 or bf16, resolved for the device; got {precision!r}")
        self.precision = precision
        self.bf16 = precision == "bf16"
        self.compiled = (
            (torch.compile(generator), torch.compile(discriminator)) if trainer.compile else None
        )
        # trainer.cuda_graph: the plain step replayed from a CUDA graph; diagnostic steps stay eager
        self.graph = GraphedStep.of(trainer, device, self._graph_step, self._graph_state)
        graphed = self.graph is not None  # Adam's step must then be capturable
        self.g_opt = make_optimizer(generator, trainer, device, capturable=graphed)
        self.d_opt = make_optimizer(discriminator, trainer, device, capturable=graphed)
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
        # The open logging window, one row of METRICS per step (window_steps rows used): a step
        # only copies its row in; means and the first non-finite loss are read at the window's
        # one host sync. Sized by the schedule's log_every when training starts.
        self.rows = torch.zeros(1, len(METRICS), device=device)
        self.window_steps = 0
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
            "window_rows": self.rows[: self.window_steps].clone(),
            "window_steps": self.window_steps,
            "last": dict(self.last),
            "device": self.device.type,
        }

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        load_state(self.g_opt, state["g_opt"])
        load_state(self.d_opt, state["d_opt"])
        if self.graph is not None:  # the optimizers' state tensors are new ones
            self.graph.reset()
        self.rng.set_state(state["rng"])
        self.step, self.cursor, self.window_steps = (
            state["step"],
            state["cursor"],
            state["window_steps"],
        )
        self.order = state["order"].to(self.device)
        self._reserve_rows(self.window_steps)
        if "window_rows" in state:
            self.rows[: self.window_steps] = state["window_rows"].to(self.device)
        elif self.window_steps:  # checkpoint format 1 kept the window's sums: one row holds them
            self.rows[: self.window_steps] = 0
            self.rows[0] = state["window"].to(self.device)
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
        return self._update(g, d, real, self._noise())

    def _noise(self) -> torch.Tensor:
        """The step's noise (B, z_dim), drawn after its batch."""
        return torch.randn(self.batch_size, self.g.z_dim, generator=self.rng, device=self.device)

    def _update(
        self, g: nn.Module, d: nn.Module, real: torch.Tensor, z: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The step's math on its batch ``real`` and noise ``z``: what a CUDA graph captures."""
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
        try:
            with self._autocast():
                d_gen = d(fake).float()
                loss_g = generator_loss(d_gen)
            self.g_opt.zero_grad(set_to_none=True)
            loss_g.backward()
            self.g_opt.step()
        finally:  # also when a CUDA graph's capture of this fails
            self.d.requires_grad_(True)

        return step_metrics(loss_d, loss_g, d_real, d_fake, d_gen)

    def _reserve_rows(self, n: int) -> None:
        if n > len(self.rows):
            grown = torch.zeros(n, len(METRICS), device=self.device)
            grown[: len(self.rows)] = self.rows
            self.rows = grown

    def _step(self, real: torch.Tensor, eager: bool = False) -> None:
        """One gan_step; its metrics become the window's next row (METRICS order)."""
        if self.window_steps == len(self.rows):  # a window longer than planned: grow
            self._reserve_rows(2 * len(self.rows))
        if self.graph is not None and not eager:
            self.rows[self.window_steps] = self.graph(real, self._noise())
            return
        try:  # torch.compile compiles lazily, here
            metrics = self.gan_step(real, eager)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            cause = getattr(err, "inner_exception", None) or err
            reason = (str(cause).strip().splitlines() or [""])[0]
            raise UserError(
                f"trainer.compile=true: torch.compile failed at step {self.step + 1} "
                f"({type(cause).__name__}: {reason}); train without it: trainer.compile=false"
            ) from err
        self.rows[self.window_steps] = metric_row(metrics)

    def _graph_step(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return metric_row(self._update(self.g, self.d, real, z))

    def _graph_state(self) -> list[torch.Tensor]:
        return training_state((self.g, self.d), (self.g_opt, self.d_opt))

    def layer_diagnostics(self) -> LayerDiagnostics:
        """Diagnostics of G and D; D's joint pass on reals and fakes recorded as two passes."""
        return LayerDiagnostics({"G": self.g, "D": self.d}, joined=("D",) if self.joint_d else ())

    def _window_diverged(self) -> bool:
        """Whether the open window has a non-finite loss or the weights are not finite (a sync)."""
        finite = torch.isfinite(self.rows[: self.window_steps, LOSSES]).all()
        return not (finite & self._weights_finite()).item()

    def _weights_finite(self) -> torch.Tensor:
        return torch.stack(
            [torch.isfinite(p).all() for p in (*self.g.parameters(), *self.d.parameters())]
        ).all()

    def run(
        self, schedule: Schedule, sink: Sink, events: Events | None = None, progress: bool = True
    ) -> TrainResult:
        """Trains from ``self.step`` up to ``schedule.steps``.

        Metrics: one host sync per logging window. Divergence (a non-finite loss at any step, or
        non-finite weights) is read at that sync, and before samples, evaluation or a checkpoint
        read the weights; it stops the run, reporting the exact step.
        ``events`` evaluates, checkpoints (also when it asks to stop) and may ask to stop.
        """
        events = events or _NoEvents()
        # A window never outlasts the run: a "never" period (bench) must not size the buffer.
        self._reserve_rows(min(schedule.log_every, schedule.steps))
        diagnostics = self.layer_diagnostics() if schedule.diag_every else None
        bar = progress_bar(schedule.steps, self.step, desc="train", enabled=progress)
        start = time.perf_counter()
        result = None
        while self.step < schedule.steps and result is None:
            step = self.step + 1
            self._train_step(step, schedule, sink, diagnostics)
            # A window that diverged closes early rather than let samples, evaluation or a
            # checkpoint read non-finite weights.
            if schedule.due(schedule.log_every, step) or (
                schedule.weights_read(step) and self._window_diverged()
            ):
                result = self._close_window(step, sink, bar, start)
            if result is None:
                result = self._after_step(step, schedule, sink, events, start)
            bar.update(1)
        bar.close()
        return result or TrainResult(
            Ending.finished, self.step, time.perf_counter() - start, self.last
        )

    def _train_step(
        self, step: int, schedule: Schedule, sink: Sink, diagnostics: LayerDiagnostics | None
    ) -> None:
        real = self._next_batch()
        scalars, histograms = schedule.diag_due(step)
        if diagnostics and (scalars or histograms):
            # Histograms only on the last step, so a resumed run's metrics equal an
            # uninterrupted one's (the same steps run hooked).
            with diagnostics.recording(keep_samples=histograms):
                self._step(real, eager=True)
            values = diagnostics.results() if scalars else {}
            sink.log_diagnostics(step - 1, values, diagnostics.samples)
        else:
            self._step(real)
        self.window_steps += 1
        self.step = step

    def _close_window(self, step: int, sink: Sink, bar, start: float) -> TrainResult | None:
        """Logs the window's means; a TrainResult when the run diverged."""
        if self.graph is not None:
            self.graph.check()
        # The window's only host sync: its means, which of its steps had finite losses, and
        # whether the weights are finite.
        rows = self.rows[: self.window_steps]
        finite_losses = torch.isfinite(rows[:, LOSSES]).all(1)
        synced = torch.cat(
            (window_means(rows), finite_losses.float(), self._weights_finite()[None].float())
        ).tolist()
        values, finite, weights_ok = synced[: len(METRICS)], synced[len(METRICS) : -1], synced[-1]
        diverged_at = diverged_step(step, finite, weights_ok)
        if diverged_at is not None:
            sink.log(step, {"diverged": True, "diverged_step": diverged_at})
            seconds = time.perf_counter() - start
            return TrainResult(Ending.diverged, step, seconds, self.last, diverged_at)
        self.last = dict(zip(METRIC_KEYS, values))
        sink.log(step, self.last)
        self.window_steps = 0
        bar.set_postfix(
            loss_D=f"{self.last[LOSS_D]:.3f}",
            loss_G=f"{self.last[LOSS_G]:.3f}",
            acc_D=f"{self.last[ACC_D]:.2f}",
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
            return TrainResult(Ending.stopped, step, time.perf_counter() - start, self.last)
        return None
