"""What each layer feeds, found by following the data through the model's forward.

The model is turned into a graph of operations (``gan.trace_graph``), each knowing which
operations made its inputs, in one of two ways:

- **by running it** on an ``example_input``: a ``TorchFunctionMode`` sees every torch function
  and tensor method called (``F.leaky_relu``, ``x.view``, ``out += identity``), and forward hooks
  see each layer called. This handles any model that runs, whatever Python control flow its
  forward has, and it knows the sizes each layer sees (a ConvTranspose on a 1×1 input). The pass
  runs in eval mode under ``no_grad``; the RNG and every buffer are restored afterwards.
- **symbolically** (``torch.fx``) when no input is given: nothing runs and no input is needed,
  which suffices for ``nn.Sequential`` networks and for forwards without data-dependent control
  flow. A model fx cannot trace is refused with the advice to pass ``example_input``.

From each weighted layer the graph is walked forward through what does not change which
nonlinearity comes next (normalization, dropout, reshaping, concatenation, average pooling and
upsampling, scaling by a number, sums) to the nonlinearities it reaches. The rules for the hard
cases (sums, two consumers, layers reached without a nonlinearity) are in docs/init_any_model.md;
whatever they do not settle is a refusal naming the layer, never a guess.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from gan.errors import UserError
from gan.trace_graph import (
    NORMS,
    WEIGHTED_LAYERS,
    Graph,
    Op,
    SigmoidInLoss,
    SoftmaxInLoss,
    graph_by_fx,
    graph_by_running,
    graph_leaves,
)

# The nonlinearities a scheme has rules for. gelu and silu fall back to the relu rule.
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softmax", "gelu", "silu")


# Modules the walk looks past: they keep which nonlinearity comes next.
_THROUGH_MODULES = NORMS + (
    nn.modules.dropout._DropoutNd,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Upsample,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.padding._ConstantPadNd,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)
# Functions and tensor methods the walk looks past, by name (in-place "_" and dunders stripped).
_THROUGH_CALLS = frozenset(
    "view reshape flatten unflatten permute transpose t contiguous squeeze unsqueeze expand "
    "expand_as view_as reshape_as repeat cat concat stack pad pixel_shuffle pixel_unshuffle "
    "clone to float double half bfloat16 type type_as chunk split unbind narrow select getitem "
    "batch_norm layer_norm group_norm instance_norm normalize "
    "dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout "
    "interpolate upsample upsample_nearest upsample_bilinear avg_pool1d avg_pool2d avg_pool3d "
    "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d add sub neg".split()
)
_SCALINGS = frozenset({"mul", "truediv", "div"})  # looked past when the other operand is a number
_CALL_KINDS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "softmax": "softmax"}
_CALL_KINDS |= {"log_softmax": "softmax", "gelu": "gelu", "silu": "silu"}


@dataclass(frozen=True)
class Feeds:
    """The nonlinearity a layer's output goes into."""

    kind: str  # one of ACTIVATIONS
    slope: float | None  # negative slope of a (leaky) ReLU; None for the others
    via: str  # module path of the activation, or where a function applies it

    def __str__(self) -> str:
        return f"leaky_relu({self.slope:g})" if self.kind == "leaky_relu" else self.kind


def _module_activation(module: nn.Module) -> tuple[str, float | None] | None:
    # Order matters: SigmoidInLoss is an nn.Identity, which is otherwise looked past.
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        return "relu", 0.0
    kinds = {
        nn.Tanh: "tanh",
        nn.Sigmoid: "sigmoid",
        SigmoidInLoss: "sigmoid",
        nn.Softmax: "softmax",
        nn.LogSoftmax: "softmax",
        SoftmaxInLoss: "softmax",
        nn.GELU: "gelu",
        nn.SiLU: "silu",
    }
    kind = next((k for cls, k in kinds.items() if isinstance(module, cls)), None)
    return (kind, None) if kind else None


# --------------------------------------------------------------------------------------------
# Walking the graph: what a layer's output reaches
# --------------------------------------------------------------------------------------------


def _number(op: Op, position: int, name: str, default: float) -> float | None:
    value = op.kwargs.get(name, op.args[position] if len(op.args) > position else default)
    return float(value) if isinstance(value, (int, float)) else None


def classify(op: Op) -> Feeds | str:
    """A ``Feeds`` if ``op`` is a nonlinearity with a rule; "through" if the walk looks past it;
    "layer" for a weighted layer; "stop" for anything else."""
    if op.module is not None:
        found = _module_activation(op.module)
        if found:
            return Feeds(*found, via=op.name)
        if isinstance(op.module, WEIGHTED_LAYERS):
            return "layer"
        return "through" if isinstance(op.module, _THROUGH_MODULES) else "stop"
    if op.role != "call":
        return "stop"
    if op.name == "leaky_relu":
        slope = _number(op, 1, "negative_slope", 0.01)
        return Feeds("leaky_relu", slope, via=op.describe()) if slope is not None else "stop"
    if op.name in _CALL_KINDS:
        kind = _CALL_KINDS[op.name]
        return Feeds(kind, 0.0 if kind == "relu" else None, via=op.describe())
    if op.name in _THROUGH_CALLS or _scales_by_a_number(op):
        return "through"
    return "stop"


def _scales_by_a_number(op: Op) -> bool:
    """``h * 0.5``, ``0.5 * h``, ``h / 2``; not ``2 / h`` (fx records it as truediv(2, h))."""
    if op.name not in _SCALINGS or op.operands != 1:
        return False
    return op.name == "mul" or not (op.args and isinstance(op.args[0], (int, float)))


@dataclass(frozen=True)
class Reached:
    """Everything a layer's output reaches, each path followed to its first op that decides."""

    nonlinearities: list[Feeds]
    layers: list[Op]  # weighted layers reached with no nonlinearity between
    others: list[Op]  # ops that are neither: unknown functions or modules, the model's output


def reached(graph: Graph, starts: list[int], live: set[int]) -> Reached:
    """What the results of ``starts`` reach. An op the output does not depend on (a check such
    as ``if h.sum() > 0``, ``self.stat = torch.tanh(h).mean()``) decides nothing, unless it is
    an in-place nonlinearity (fx does not link the readers of its overwritten input to it)."""
    found: Reached = Reached([], [], [])
    seen, todo = set(starts), deque(starts)
    while todo:
        for reader in graph.readers[todo.popleft()]:
            if reader in seen:
                continue
            seen.add(reader)
            op, kind = graph.ops[reader], classify(graph.ops[reader])
            if isinstance(kind, Feeds):
                if reader in live or op.in_place:
                    found.nonlinearities.append(kind)
            elif reader not in live:
                continue
            elif kind == "through":
                todo.append(reader)
            else:
                (found.layers if kind == "layer" else found.others).append(op)
    return found


def _declare_hint(path: str) -> str:
    return (
        f" Declare what it feeds, e.g. gan.initialize(..., overrides={{'{path}': 'relu'}}) "
        f"(any of {', '.join(ACTIVATIONS)}; leaky_relu as 'leaky_relu(0.2)'), or its rule, "
        f"e.g. overrides={{'{path}': 'xavier_normal'}}."
    )


def decide(path: str, module: nn.Module, found: Reached) -> tuple[Feeds | None, str | None]:
    """What a weighted layer feeds, or why that cannot be decided (a refusal naming it)."""
    layer = f"layer '{path}' ({type(module).__name__})"
    kinds = list(dict.fromkeys((f.kind, f.slope) for f in found.nonlinearities))
    unknown = [op for op in found.others if op.role != "output"]
    if unknown:
        problem = (
            f"{layer} feeds {unknown[0].describe()}, which is not a nonlinearity the init rule "
            f"has a rule for ({', '.join(ACTIVATIONS)}) nor an op it looks past (normalization, "
            "dropout, reshaping, pooling by average, a sum, scaling by a number)."
        )
    elif len(kinds) > 1:
        first, other = (
            next(f for f in found.nonlinearities if (f.kind, f.slope) == k) for k in kinds[:2]
        )
        problem = (
            f"{layer} feeds two different nonlinearities: {first} ({first.via}) and {other} "
            f"({other.via})."
        )
    elif kinds and found.others:
        problem = f"{layer} feeds {found.nonlinearities[0]} and is also the model's output."
    elif kinds:
        return found.nonlinearities[0], None
    elif found.layers:
        problem = (
            f"{layer} feeds {found.layers[0].describe()} with no nonlinearity between, so no "
            "rule applies."
        )
    else:
        problem = (
            f"{layer} feeds no nonlinearity: its output is the model's output or unused. If the "
            "loss applies a sigmoid (BCE-with-logits) or a softmax (cross-entropy), end the "
            "network with gan.init.SigmoidInLoss() or SoftmaxInLoss() to declare it."
        )
    return None, problem + _declare_hint(path)


# --------------------------------------------------------------------------------------------
# Every layer with what it feeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TracedLayer:
    """A layer with parameters, and what it feeds (None for a normalization that feeds no one
    nonlinearity, or a weighted layer with a ``problem``)."""

    path: str
    module: nn.Module
    feeds: Feeds | None
    problem: str | None = None  # why what it feeds is not decided: a refusal unless declared
    sizes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # spatial sizes in, out


def trace_layers(net: nn.Module, example_input: Any = None) -> list[TracedLayer]:
    """Every weighted and normalization layer of ``net`` in registration order, with what it
    feeds. Traced by running ``net`` on ``example_input``, or symbolically when it is None."""
    leaves = graph_leaves(net)
    for path, m in leaves.items():
        own = any(True for _ in m.parameters(recurse=False)) or parametrize.is_parametrized(m)
        if own and not isinstance(m, WEIGHTED_LAYERS + NORMS):
            raise UserError(
                f"layer '{path}' ({type(m).__name__}) has parameters the init rule does not "
                "cover; it knows Linear, Conv*, ConvTranspose* and normalization layers"
            )
    if example_input is None:
        graph = graph_by_fx(net, leaves)
    else:
        graph = graph_by_running(net, leaves, example_input)
    traced, live = [], graph.reaching_output()
    for path, m in leaves.items():
        if not isinstance(m, WEIGHTED_LAYERS + NORMS):
            continue
        calls = graph.calls_of(m)
        found = reached(graph, calls, live)
        sizes = graph.ops[calls[0]].sizes if calls else None
        if isinstance(m, NORMS):  # what a norm feeds is shown, never needed: no refusal
            kinds = {(f.kind, f.slope) for f in found.nonlinearities}
            feeds = found.nonlinearities[0] if len(kinds) == 1 else None
            traced.append(TracedLayer(path, m, feeds, None, sizes))
        elif not calls:
            problem = f"layer '{path}' ({type(m).__name__}) is not called by the forward."
            traced.append(TracedLayer(path, m, None, problem + _declare_hint(path)))
        else:
            traced.append(TracedLayer(path, m, *decide(path, m, found), sizes))
    return traced


def trace_feeds(
    net: nn.Module, example_input: Any = None
) -> list[tuple[str, nn.Module, Feeds | None]]:
    """Every parameterized layer of ``net`` with the nonlinearity it feeds, in registration order.

    Weighted layers must feed a known nonlinearity; normalization layers may feed nothing
    (``None``). Raises ``UserError`` naming the first layer for which that is not decided.
    """
    traced = trace_layers(net, example_input)
    for layer in traced:
        if layer.problem:
            raise UserError(layer.problem)
    return [(layer.path, layer.module, layer.feeds) for layer in traced]
