"""Per-layer evidence of what an init does: activation statistics, saturation, dead units,
weight spread and gradient norms, recorded only on diagnostic steps.

Each weighted layer is reported under the nonlinearity it feeds (``gan.init.trace_feeds``), by
hooking that activation module: ``diag/G/fc1/act_std`` is the spread of fc1's activations.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from gan.init import WEIGHTED_LAYERS, SigmoidInLoss, trace_feeds, trainable_weight

DIAG_PREFIX = "diag/"  # each statistic is logged as diag/{G|D}/<layer>/<statistic>
HIST_PREFIX = "hist/"  # each layer's activation samples: a W&B histogram, hist/{G|D}/<layer>/act
HISTOGRAM_SAMPLES = 10_000  # activations kept per layer for a histogram

# The statistics, per layer: diag/{G|D}/<layer>/<statistic>.
ACT_MEAN, ACT_STD = "act_mean", "act_std"  # of the activation the layer feeds
SATURATED_FRAC = "saturated_frac"  # into tanh / sigmoid: the share at its flat ends
DEAD_FRAC = "dead_frac"  # into (Leaky) ReLU: the share on its negative side
WEIGHT_STD = "weight_std"  # of the trained weights the step starts from (spectral norm: original)
GRAD_NORM = "grad_norm"  # of the weights' gradient, after this step's backward pass
# Those whose values under different inits differ by orders of magnitude: plotted on a log scale.
LOG_SCALE = (ACT_STD, GRAD_NORM, WEIGHT_STD)

# How each statistic's recorded value becomes the reported one. A statistic missing here is an
# error (``aggregation``), so a new one cannot be silently summed and reported unaveraged.
MEAN_OVER_PASSES = "mean over forward passes"  # summed per hooked pass, divided by their count
READ_ONCE = "read once"  # read once per diagnostic step, reported as is
AGGREGATION = {
    ACT_MEAN: MEAN_OVER_PASSES,
    ACT_STD: MEAN_OVER_PASSES,
    SATURATED_FRAC: MEAN_OVER_PASSES,
    DEAD_FRAC: MEAN_OVER_PASSES,
    WEIGHT_STD: READ_ONCE,
    GRAD_NORM: READ_ONCE,
}


def aggregation(statistic: str) -> str:
    """How ``statistic`` is aggregated (an AGGREGATION value); a KeyError if it declares none."""
    try:
        return AGGREGATION[statistic]
    except KeyError:
        raise KeyError(
            f"diagnostic statistic {statistic!r} declares no aggregation; add it to "
            f"gan.diagnostics.AGGREGATION as {MEAN_OVER_PASSES!r} or {READ_ONCE!r}"
        ) from None


@dataclass(frozen=True)
class _Target:
    prefix: str  # diag/G/fc1
    layer: nn.Module
    activation: nn.Module
    kind: str  # relu | leaky_relu | tanh | sigmoid
    logits: bool  # a SigmoidInLoss marker: its output is a logit, the sigmoid is applied here
    passes: int  # the passes one forward call holds: 2 for D on reals and fakes at once


def histogram_key(prefix: str) -> str:
    """The W&B histogram of a layer's activation samples: ``diag/G/fc1`` → ``hist/G/fc1/act``."""
    return f"{HIST_PREFIX}{prefix.removeprefix(DIAG_PREFIX)}/act"


def activation_stats(y: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """Statistics of one activation output ``y`` (any shape), as 0-dim tensors on y's device.

    Saturated: tanh |y| > 0.99, sigmoid y < 0.01 or y > 0.99. Dead: ReLU y == 0, Leaky ReLU y < 0.
    """
    y = y.detach().float()
    stats = {ACT_MEAN: y.mean(), ACT_STD: y.std(correction=0)}
    if kind == "tanh":
        stats[SATURATED_FRAC] = (y.abs() > 0.99).float().mean()
    elif kind == "sigmoid":
        stats[SATURATED_FRAC] = ((y < 0.01) | (y > 0.99)).float().mean()
    elif kind == "relu":
        stats[DEAD_FRAC] = (y == 0).float().mean()
    else:
        stats[DEAD_FRAC] = (y < 0).float().mean()
    return stats


def _spread(values: torch.Tensor) -> torch.Tensor:
    """At most HISTOGRAM_SAMPLES of ``values`` (1-D), evenly strided over all of them."""
    return values[:: -(-len(values) // HISTOGRAM_SAMPLES)]


class LayerDiagnostics:
    """Records diagnostics of G and D while its ``recording()`` context is open.

    Inside the context, forward hooks sum activation statistics over the step's forward passes
    through the weights it starts from (G once; D on reals and fakes, not D's pass in the G step,
    which runs the updated D); on leaving it, weight stds and gradient norms are read.
    Outside the context no hook is registered: ordinary steps pay nothing.
    """

    def __init__(self, networks: Mapping[str, nn.Module], joined: Collection[str] = ()):
        """``joined``: the networks whose one forward call holds two passes' batches, reals then
        fakes (D without batch statistics), each recorded as its own pass, as when run apart."""
        self.targets: list[_Target] = []
        for short, net in networks.items():
            modules = dict(net.named_modules())
            for path, layer, feeds in trace_feeds(net):
                if isinstance(layer, WEIGHTED_LAYERS):
                    act = modules[feeds.via]
                    self.targets.append(
                        _Target(
                            f"{DIAG_PREFIX}{short}/{path}",
                            layer,
                            act,
                            feeds.kind,
                            isinstance(act, SigmoidInLoss),
                            2 if short in joined else 1,
                        )
                    )
        self._sums: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self.samples: dict[str, torch.Tensor] = {}

    @contextmanager
    def recording(self, keep_samples: bool = False) -> Iterator[None]:
        self._sums, self._calls, self._kept, self.samples = {}, {}, {}, {}
        # The weights this step's forward passes use, before the optimizer steps (read before
        # any hook exists: nothing can fail between registering them and the try below).
        weight_stds = {
            t.prefix: trainable_weight(t.layer).detach().float().std(correction=0)
            for t in self.targets
        }
        handles = [
            t.activation.register_forward_hook(self._hook(t, keep_samples)) for t in self.targets
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        self.samples = {
            prefix: _spread(torch.cat(parts)).float().cpu() for prefix, parts in self._kept.items()
        }
        for t in self.targets:
            self._add(t.prefix, WEIGHT_STD, weight_stds[t.prefix])
        for t in self.targets:
            grad = trainable_weight(t.layer).grad  # under spectral norm: its original's
            if grad is not None:
                self._add(t.prefix, GRAD_NORM, grad.detach().float().norm())

    def _add(self, prefix: str, statistic: str, value: torch.Tensor) -> None:
        """Records one value: summed over passes, or kept as read, as AGGREGATION declares."""
        key = f"{prefix}/{statistic}"
        if aggregation(statistic) == MEAN_OVER_PASSES:
            self._sums[key] = self._sums.get(key, 0) + value
        else:
            self._sums[key] = value

    def _hook(self, target: _Target, keep_samples: bool):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if not trainable_weight(target.layer).requires_grad:
                return  # D's pass inside the G step (its weights frozen) runs the updated D
            y = torch.sigmoid(output) if target.logits else output
            for part in y.chunk(target.passes):  # (B, …) each
                for statistic, value in activation_stats(part, target.kind).items():
                    self._add(target.prefix, statistic, value)
                self._calls[target.prefix] = self._calls.get(target.prefix, 0) + 1
            if keep_samples:  # every pass's share, spread over its samples and units
                self._kept.setdefault(target.prefix, []).append(_spread(y.detach().flatten()))

        return hook

    def results(self) -> dict[str, float]:
        """The recorded values, each aggregated as AGGREGATION declares; one host sync."""
        keys = list(self._sums)
        if not keys:
            return {}
        values = torch.stack([torch.as_tensor(self._sums[k]).float() for k in keys]).tolist()
        out = {}
        for key, value in zip(keys, values):
            prefix, statistic = key.rsplit("/", 1)
            mean = aggregation(statistic) == MEAN_OVER_PASSES
            out[key] = value / self._calls[prefix] if mean else value
        return out
