"""K runs trained in lockstep as one batched model: the population's training loop.

Each member is a solo ``GANTrainer`` that keeps its own state: random generator, epoch order,
open metric window, optimizers and modules (the stacked tensors are copied into them whenever a
solo view is needed). A plain step draws every member's batch and noise from the member's own
stream, exactly as its solo run would, then runs one batched D update and one batched G update
over the stacked networks: each member's loss is its own batch mean and the members' losses are
summed, so every member gets exactly its own gradient, and the optimizers are elementwise. A
diagnostic step runs each member's solo step with its hooks, then copies the result back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from gan.cuda_graph import GraphedStep, training_state
from gan.losses import discriminator_loss, generator_loss
from gan.population.stacked import StackedNet
from gan.record import Ending
from gan.trainer import (
    LOSSES,
    METRIC_KEYS,
    METRICS,
    GANTrainer,
    Schedule,
    Sink,
    TrainResult,
    diverged_step,
    metric_row,
    step_metrics,
    window_means,
)


class PopulationEvents(Protocol):
    """What a population does besides training (``gan.population.run``), for its members."""

    def evaluate(self, step: int, trainer: PopulationTrainer, members: list[int]) -> None: ...
    def checkpoint(self, step: int, members: list[int]) -> None: ...
    def diverged(self, k: int, result: TrainResult) -> None: ...
    def should_stop(self) -> bool: ...


class StackedOptimizer:
    """One optimizer of the members' kind over the stacked tensors, and its state per member.

    Its per-element state (Adam's moments, SGD's momentum) is stored like its parameter,
    (K, …), transposed where the parameter is; its step count is shared: members move in lockstep.
    """

    def __init__(self, net: StackedNet, solos: Sequence[nn.Module], solo_opts: Sequence):
        pairs = net.stacked_parameters(solos[0])
        self.params = [p for p, _ in pairs]
        self.transposed = [t for _, t in pairs]
        template = solo_opts[0]
        self.opt = type(template)(self.params, **template.defaults)

    def _per_member(self, value, stacked: torch.Tensor) -> bool:
        return isinstance(value, torch.Tensor) and value.shape == stacked.shape

    def state_to(self, k: int, solo: nn.Module, solo_opt: torch.optim.Optimizer) -> None:
        """Member ``k``'s optimizer state into its solo optimizer."""
        for stacked, transposed, p in zip(self.params, self.transposed, solo.parameters()):
            state = self.opt.state.get(stacked)
            if not state:
                continue
            solo_opt.state[p] = {
                # contiguous: a fused optimizer walks state and parameter in one memory order
                key: _solo_layout(value[k], transposed).clone(memory_format=torch.contiguous_format)
                if self._per_member(value, stacked)
                else _copy(value)
                for key, value in state.items()
            }

    def state_from(self, solo_opts: Sequence, solos: Sequence[nn.Module]) -> None:
        """Every member's optimizer state, stacked (all solo optimizers at one step)."""
        columns = zip(self.params, self.transposed, *[list(s.parameters()) for s in solos])
        for stacked, transposed, *ps in columns:
            states = [opt.state.get(p) for opt, p in zip(solo_opts, ps)]
            if not states[0]:
                continue
            self.opt.state[stacked] = {
                key: _stack([s[key] for s in states], transposed)
                if isinstance(value, torch.Tensor) and value.dim() and value.shape == ps[0].shape
                else _copy(value)
                for key, value in states[0].items()
            }

    def state_from_member(self, k: int, solo: nn.Module, solo_opt) -> None:
        """Member ``k``'s solo optimizer state back into the stack."""
        for stacked, transposed, p in zip(self.params, self.transposed, solo.parameters()):
            for key, value in solo_opt.state.get(p, {}).items():
                mine = self.opt.state[stacked][key]
                if self._per_member(mine, stacked):
                    mine[k].copy_(_solo_layout(value, transposed))  # .T is its own inverse
                elif isinstance(value, torch.Tensor):
                    mine.copy_(value)  # the shared step count: every member's is the same

    def freeze(self, k: int) -> None:
        """Member ``k`` stops moving: its gradients are zeroed before each step (``step``), and
        its moments zeroed now, so Adam's and SGD's updates are exactly 0 from here on."""
        for stacked in self.params:
            for value in self.opt.state.get(stacked, {}).values():
                if self._per_member(value, stacked):
                    value[k].zero_()

    def step(self, frozen: torch.Tensor | None) -> None:
        if frozen is not None:
            for p in self.params:
                if p.grad is not None:
                    p.grad.masked_fill_(frozen.view(-1, *[1] * (p.dim() - 1)), 0.0)
        self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)


def _copy(value):
    """A shared optimizer value (the step count, a hyperparameter) for another optimizer."""
    return value.clone() if isinstance(value, torch.Tensor) else value


def _solo_layout(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    return t.T if transposed else t


def _stack(tensors: list[torch.Tensor], transposed: bool) -> torch.Tensor:
    return torch.stack([_solo_layout(t, transposed) for t in tensors]).contiguous()


class PopulationTrainer:
    """Trains the solo trainers ``solos`` (one per member, all at the same step) in lockstep."""

    def __init__(self, solos: Sequence[GANTrainer]):
        first = solos[0]
        at = {(t.step, t.window_steps) for t in solos}
        if len(at) != 1:
            raise ValueError(
                f"population members must be at one step with one open window, got {sorted(at)}"
            )
        self.solos, self.k = list(solos), len(solos)
        self.device, self.batch_size, self.step = first.device, first.batch_size, first.step
        self.joint_d, self.bf16, self.precision = first.joint_d, first.bf16, first.precision
        self.g = StackedNet([t.g for t in solos], "generator").to(self.device)
        self.d = StackedNet([t.d for t in solos], "discriminator").to(self.device)
        self.g_opt = StackedOptimizer(self.g, [t.g for t in solos], [t.g_opt for t in solos])
        self.d_opt = StackedOptimizer(self.d, [t.d for t in solos], [t.d_opt for t in solos])
        self.g_opt.state_from([t.g_opt for t in solos], [t.g for t in solos])
        self.d_opt.state_from([t.d_opt for t in solos], [t.d for t in solos])
        self.fixed_z = torch.stack([t.fixed_z for t in solos])  # (K, 64, z_dim)
        # The open window, (steps, K, METRICS); a resumed member brings its rows.
        self.window_steps = first.window_steps
        self.rows = torch.zeros(max(1, self.window_steps), self.k, len(METRICS), device=self.device)
        for k, t in enumerate(solos):
            self.rows[: self.window_steps, k] = t.rows[: self.window_steps]
        self.active = [True] * self.k  # False once a member diverged: frozen, no longer logged
        # Each member's result once known (a diverged member's at once), filled in by ``run``:
        # a population that fails later still records them (gan.population.run).
        self.results: list[TrainResult | None] = [None] * self.k
        # The batched step replayed from a CUDA graph when the members' runs chose one
        # (gan.cuda_graph), which captures the mask of frozen members: it exists from the start.
        self.graph: GraphedStep | None = None
        self.frozen: torch.Tensor | None = None  # (K,) bool on the device, once a member is
        if first.graph is not None:
            self.graph = GraphedStep(self._update, self._graph_state, required=first.graph.required)
            self.frozen = torch.zeros(self.k, dtype=torch.bool, device=self.device)

    # ---------------------------------------------------------------------------------------
    # The batched step
    # ---------------------------------------------------------------------------------------

    def _draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's batch (K, B, C, H, W) and noise (K, B, z_dim), from its own stream in
        its solo run's order (batch, then noise)."""
        reals, noise = [], []
        for t in self.solos:
            reals.append(t._next_batch())
            z_dim = t.g.z_dim
            noise.append(torch.randn(self.batch_size, z_dim, generator=t.rng, device=self.device))
        return torch.stack(reals), torch.stack(noise)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def gan_step(self) -> torch.Tensor:
        """One D and one G update of every member; returns the step's metrics (K, METRICS)."""
        real, z = self._draws()
        return self._update(real, z) if self.graph is None else self.graph(real, z)

    def _update(self, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The batched step's math on the members' batches and noise: what a CUDA graph captures."""
        with self._autocast():
            fake = self.g(z)
            if self.joint_d:  # as the solo loop: one pass when D has no batch statistics
                both = self.d(torch.cat((real, fake.detach()), dim=1)).float()
                d_real, d_fake = both.split(self.batch_size, dim=1)
            else:
                d_real, d_fake = self.d(real).float(), self.d(fake.detach()).float()
            loss_d = discriminator_loss(d_real, d_fake, members=True)  # (K,)
        self.d_opt.zero_grad()
        loss_d.sum().backward()  # a sum: each member's gradient is its own loss's
        self.d_opt.step(self.frozen)

        self.d.requires_grad_(False)
        try:
            with self._autocast():
                d_gen = self.d(fake).float()
                loss_g = generator_loss(d_gen, members=True)
            self.g_opt.zero_grad()
            loss_g.sum().backward()
            self.g_opt.step(self.frozen)
        finally:  # also when a CUDA graph's capture of this fails
            self.d.requires_grad_(True)
        return metric_row(step_metrics(loss_d, loss_g, d_real, d_fake, d_gen, members=True), dim=1)

    def _graph_state(self) -> list[torch.Tensor]:
        return [*training_state((self.g, self.d), (self.g_opt.opt, self.d_opt.opt)), self.frozen]

    # ---------------------------------------------------------------------------------------
    # Solo views: checkpoints, diagnostics
    # ---------------------------------------------------------------------------------------

    def sync_to_solo(self, k: int) -> GANTrainer:
        """Member ``k``'s solo trainer, holding the population's current state of it."""
        t = self.solos[k]
        self.g.copy_to(k, t.g)
        self.d.copy_to(k, t.d)
        self.g_opt.state_to(k, t.g, t.g_opt)
        self.d_opt.state_to(k, t.d, t.d_opt)
        t.step, t.window_steps = self.step, self.window_steps
        t._reserve_rows(max(1, self.window_steps))
        t.rows[: self.window_steps] = self.rows[: self.window_steps, k]
        return t

    def _diagnostic_step(
        self, step: int, schedule: Schedule, sinks: Sequence[Sink], diagnostics: list
    ) -> None:
        """Each active member's solo step with its diagnostics' hooks, copied back."""
        fresh = not self.g_opt.opt.state  # no stacked optimizer state before the first update
        members = self._active_members()
        # Every member's solo state first: the optimizers' step count is shared by the stack.
        solos = {k: self.sync_to_solo(k) for k in members}
        for k, t in solos.items():
            t._train_step(step, schedule, sinks[k], diagnostics[k])
            self.rows[self.window_steps, k] = t.rows[self.window_steps]
        for k, t in solos.items():
            self.g.copy_from(k, t.g)
            self.d.copy_from(k, t.d)
            if not fresh:
                self.g_opt.state_from_member(k, t.g, t.g_opt)
                self.d_opt.state_from_member(k, t.d, t.d_opt)
        if fresh:  # every member has just made its first update: stack their new state
            self.g_opt.state_from([t.g_opt for t in self.solos], [t.g for t in self.solos])
            self.d_opt.state_from([t.d_opt for t in self.solos], [t.d for t in self.solos])

    def _active_members(self) -> list[int]:
        return [k for k in range(self.k) if self.active[k]]

    # ---------------------------------------------------------------------------------------
    # The loop
    # ---------------------------------------------------------------------------------------

    def run(
        self,
        schedule: Schedule,
        sinks: Sequence[Sink],
        events: PopulationEvents,
        progress_bar,
    ) -> list[TrainResult]:
        """Trains every member from ``self.step`` to ``schedule.steps``; one TrainResult each.

        As the solo loop: one host sync per logging window, where a member whose loss or weights
        went non-finite is recorded ``diverged`` at its exact step and frozen; the others go on.
        """
        self._reserve(min(schedule.log_every, schedule.steps))
        diagnostics = [t.layer_diagnostics() if schedule.diag_every else None for t in self.solos]
        start = time.perf_counter()
        results = self.results = [None] * self.k
        while self.step < schedule.steps and any(self.active):
            step = self.step + 1
            scalars, histograms = schedule.diag_due(step)
            if diagnostics[0] is not None and (scalars or histograms):
                self._diagnostic_step(step, schedule, sinks, diagnostics)
            else:
                self.rows[self.window_steps] = self.gan_step()
            self.window_steps += 1
            self.step = step
            if schedule.due(schedule.log_every, step):
                self._close_window(step, sinks, events, start)
            elif schedule.weights_read(step):  # as a solo run, which closes its window early
                self._record_diverged(step, self._window_synced(), sinks, events, start)
            if self._after_step(step, schedule, sinks, events):
                elapsed = time.perf_counter() - start
                for k in self._active_members():
                    results[k] = TrainResult(Ending.stopped, step, elapsed, self.solos[k].last)
                break
            progress_bar.update(1)
        elapsed = time.perf_counter() - start
        return [
            r or TrainResult(Ending.finished, self.step, elapsed, self.solos[k].last)
            for k, r in enumerate(results)
        ]

    def _reserve(self, n: int) -> None:
        if n > len(self.rows):
            grown = torch.zeros(n, self.k, len(METRICS), device=self.device)
            grown[: len(self.rows)] = self.rows
            self.rows = grown

    def _weights_finite(self) -> torch.Tensor:
        """(K,): whether each member's weights are all finite."""
        params = [*self.g_opt.params, *self.d_opt.params]
        return torch.stack([torch.isfinite(p).flatten(1).all(1) for p in params]).all(0)

    def _window_synced(self) -> list[list[float]]:
        """The window's one host sync, per member (K, METRICS + n + 1): its means, which of its n
        steps had finite losses, whether its weights are finite."""
        rows = self.rows[: self.window_steps]  # (n, K, METRICS)
        finite = torch.isfinite(rows[:, :, LOSSES]).all(2)  # (n, K)
        return torch.cat(
            (window_means(rows), finite.T.float(), self._weights_finite()[:, None].float()), dim=1
        ).tolist()

    def _close_window(
        self, step: int, sinks: Sequence[Sink], events: PopulationEvents, start: float
    ) -> None:
        """Logs each active member's window means; records and freezes the ones that diverged."""
        if self.graph is not None:
            self.graph.check()
        synced = self._window_synced()
        self._record_diverged(step, synced, sinks, events, start)
        for k in self._active_members():  # the others, now frozen, are no longer active
            self.solos[k].last = dict(zip(METRIC_KEYS, synced[k][: len(METRICS)]))
            sinks[k].log(step, self.solos[k].last)
        self.window_steps = 0

    def _record_diverged(
        self,
        step: int,
        synced: list[list[float]],
        sinks: Sequence[Sink],
        events: PopulationEvents,
        start: float,
    ) -> None:
        """Records ``diverged`` (its metrics line, its result, told to ``events``) and freezes
        each active member whose window so far (ending at ``step``) diverged."""
        for k in self._active_members():
            ok, weights_ok = synced[k][len(METRICS) : -1], synced[k][-1]
            diverged_at = diverged_step(step, ok, weights_ok)
            if diverged_at is None:
                continue
            sinks[k].log(step, {"diverged": True, "diverged_step": diverged_at})
            elapsed = time.perf_counter() - start
            self.results[k] = TrainResult(
                Ending.diverged, step, elapsed, self.solos[k].last, diverged_at
            )
            self._freeze(k)
            events.diverged(k, self.results[k])

    def _freeze(self, k: int) -> None:
        self.active[k] = False
        self.g_opt.freeze(k)
        self.d_opt.freeze(k)
        if self.frozen is None:
            self.frozen = torch.zeros(self.k, dtype=torch.bool, device=self.device)
        self.frozen[k] = True  # in place: a CUDA graph reads this tensor

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Every member's images of its noise ``z`` (K, N, z_dim), in eval mode (BatchNorm's
        running statistics), as ``gan.nets.generate`` does for one."""
        was_training = self.g.training
        self.g.eval()
        images = self.g(z)
        self.g.train(was_training)
        return images

    def _after_step(
        self, step: int, schedule: Schedule, sinks: Sequence[Sink], events: PopulationEvents
    ) -> bool:
        """Samples, evaluation, checkpoints of the active members; True when asked to stop."""
        members = self._active_members()
        if schedule.due(schedule.sample_every, step):
            images = self.generate(self.fixed_z)
            for k in members:
                sinks[k].log_samples(step, images[k])
        if schedule.due(schedule.eval_every, step):
            events.evaluate(step, self, members)
        stop = events.should_stop()
        if stop or schedule.checkpoint_due(step):
            for k in members:
                self.sync_to_solo(k)
            events.checkpoint(step, members)
        return stop and step < schedule.steps
