"""What each layer feeds, found by following the data through the model's forward.

The model is turned into a graph of operations, each knowing which operations made its inputs,
in one of two ways:

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from gan.errors import UserError

# The nonlinearities a scheme has rules for. gelu and silu fall back to the relu rule.
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softmax", "gelu", "silu")


class SigmoidInLoss(nn.Identity):
    """Declares that a sigmoid is applied to this point inside the loss (BCE-with-logits).

    Identity in forward. It exists so the init rule can see what the discriminator's last layer
    feeds, although the sigmoid itself is fused into the loss for numerical stability.
    """


class SoftmaxInLoss(nn.Identity):
    """Declares that a softmax is applied to this point inside the loss (cross-entropy)."""


WEIGHTED_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
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
_ALIASES = {"iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul"}
_ALIASES |= {"rmul": "mul", "itruediv": "truediv", "rtruediv": "truediv", "concatenate": "cat"}
# Results that are sizes, not data: what reads them does not receive the layer's output.
_METADATA = frozenset({"size", "dim", "numel", "ndimension", "nelement", "stride", "getattr"})


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
# The graph: one Op per layer or function called, linked to the ops that made its inputs
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Op:
    """One call in the model's forward: a layer (``module``) or a torch function / method."""

    name: str  # the layer's module path, or the function's name without "_" / dunders
    inputs: list[int]  # indices of the ops whose results it reads
    module: nn.Module | None = None
    args: tuple = ()  # the call's arguments (numbers are read for a slope or a scaling)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    operands: int = 0  # tensor arguments, parameters and constants included
    scope: str = ""  # module path of the forward that called a function
    sizes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # spatial sizes in, out
    role: str = "call"  # call | input | output | constant

    def describe(self) -> str:
        if self.role == "output":
            return "the model's output"
        if self.module is not None:
            return f"'{self.name}' ({type(self.module).__name__})"
        return f"{self.name}() in {repr(self.scope) if self.scope else 'the top-level forward'}"


def call_name(func: Any) -> str:
    """``relu_`` → relu, ``Tensor.__iadd__`` → add, ``operator.getitem`` → getitem."""
    name = getattr(func, "__name__", str(func)).strip("_")
    return _ALIASES.get(name, name)


def inside(path: str, leaves: Mapping[str, nn.Module]) -> bool:
    """Whether the module at ``path`` lies inside one of ``leaves`` (a parent path is one)."""
    parts = path.split(".")
    return bool(path) and any(".".join(parts[:i]) in leaves for i in range(1, len(parts)))


def graph_leaves(net: nn.Module) -> dict[str, nn.Module]:
    """The modules that are one op of the graph, by path: parametrized and weighted layers,
    normalization, the loss markers, and childless modules of torch or with parameters of their
    own. Other modules (containers, a user's parameter-free module) are traced through."""
    found: dict[str, nn.Module] = {}
    for path, m in net.named_modules():
        if inside(path, found):
            continue  # inside a leaf (a parametrization)
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue  # a container, even an empty one (an identity shortcut): traced through
        childless = not any(True for _ in m.children())
        own = any(True for _ in m.parameters(recurse=False))
        torch_made = type(m).__module__.startswith("torch.")
        if (
            parametrize.is_parametrized(m)
            or isinstance(m, WEIGHTED_LAYERS + NORMS + (SigmoidInLoss, SoftmaxInLoss))
            or (childless and (own or torch_made))
        ):
            found[path] = m
    return found


class Graph:
    """The ops of one forward, in call order, and who reads each op's result."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.readers: list[list[int]] = []
        self._calls: dict[int, list[int]] = {}  # id(module) -> the ops that call it

    def add(self, op: Op) -> int:
        index = len(self.ops)
        self.ops.append(op)
        self.readers.append([])
        if op.module is not None:
            self._calls.setdefault(id(op.module), []).append(index)
        for i in dict.fromkeys(op.inputs):  # each reader once, in call order
            self.readers[i].append(index)
        return index

    def reaching_output(self) -> set[int]:
        """The ops whose results the model's output depends on."""
        live = {i for i, op in enumerate(self.ops) if op.role == "output"}
        todo = list(live)
        while todo:
            for i in self.ops[todo.pop()].inputs:
                if i not in live:
                    live.add(i)
                    todo.append(i)
        return live

    def calls_of(self, module: nn.Module) -> list[int]:
        return self._calls.get(id(module), [])


def _fx_tracer(leaves: dict[str, nn.Module]) -> torch.fx.Tracer:
    ids = {id(m) for m in leaves.values()}

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return id(m) in ids

    return Tracer()


def graph_by_fx(net: nn.Module, leaves: dict[str, nn.Module]) -> Graph:
    """The graph from a symbolic trace: nothing runs, sizes stay unknown."""
    try:
        fx_graph = _fx_tracer(leaves).trace(net)
    except Exception as err:  # fx raises many kinds: each means "cannot trace symbolically"
        raise UserError(
            f"cannot trace {type(net).__name__} without running it (torch.fx: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); pass an "
            "example input, gan.initialize(model, scheme, example_input=x), and it is traced by "
            "running it once"
        ) from None
    graph, index, meta = Graph(), {}, set()
    for node in fx_graph.nodes:
        sources = [n for n in node.all_input_nodes if n not in meta]
        name = node.target if node.op == "call_module" else call_name(node.target)
        if node.op in ("call_function", "call_method") and (
            name in _METADATA or (node.all_input_nodes and not sources)
        ):
            meta.add(node)  # a size, or arithmetic on sizes: not the data
            continue
        role = {"placeholder": "input", "get_attr": "constant", "output": "output"}
        op = Op(
            name=str(name),
            inputs=[index[n] for n in sources if graph.ops[index[n]].role != "constant"],
            module=leaves.get(node.target) if node.op == "call_module" else None,
            args=tuple(node.args),
            kwargs=dict(node.kwargs),
            operands=len(sources),
            scope=next(reversed(node.meta.get("nn_module_stack") or {"": None})),
            role=role.get(node.op, "call"),
        )
        index[node] = graph.add(op)
    return graph


class _Recorder(TorchFunctionMode):
    """Records every torch function called outside the graph's leaves, and each leaf's call."""

    def __init__(self, net: nn.Module, leaves: dict[str, nn.Module]) -> None:
        super().__init__()
        self.graph = Graph()
        self.made_by: dict[int, int] = {}  # id(tensor) -> the op that last wrote it
        self.alive: list[torch.Tensor] = []  # keeps ids unique while the trace runs
        self.depth = 0  # > 0 inside a leaf: its own calls are not ops of the graph
        self.scopes = [""]
        self.leaf_paths = {id(m): p for p, m in leaves.items()}
        self.handles = []
        for path, m in net.named_modules():
            if id(m) in self.leaf_paths:
                self.handles += [
                    m.register_forward_pre_hook(self._enter_leaf),
                    m.register_forward_hook(self._leave_leaf, with_kwargs=True),
                ]
            elif not inside(path, leaves):
                self.handles += [
                    m.register_forward_pre_hook(self._enter_scope(path)),
                    m.register_forward_hook(self._leave_scope),
                ]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.depth == 0:
            self.record(call_name(func), None, args, kwargs, result)
        return result

    def _enter_scope(self, path: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self.scopes.append(path)

        return hook

    def _leave_scope(self, module: nn.Module, args: tuple, result: Any) -> None:
        self.scopes.pop()  # returns None: a hook's result would replace the module's output

    def _enter_leaf(self, module: nn.Module, args: tuple) -> None:
        self.depth += 1

    def _leave_leaf(self, module: nn.Module, args: tuple, kwargs: dict, result: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.record(self.leaf_paths[id(module)], module, args, kwargs, result)

    def record(self, name: str, module: nn.Module | None, args, kwargs, result, role="call"):
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
        if not outputs and role == "call":
            return  # a size or a flag: not data
        inputs = [self.made_by[id(t)] for t in tensors if id(t) in self.made_by]
        sizes = None
        if module is not None and tensors:  # (N, C, *spatial): the sizes a conv's fans read
            sizes = (tuple(tensors[0].shape[2:]), tuple(outputs[0].shape[2:]))
        op = Op(name, inputs, module, args, kwargs, len(tensors), self.scopes[-1], sizes, role)
        index = self.graph.add(op)
        for t in outputs:  # an in-place result is its input: later readers read this op
            self.made_by[id(t)] = index
            self.alive.append(t)


def _cuda_devices(net: nn.Module) -> list[int]:
    """The CUDA devices whose RNG a forward on ``net`` may draw from (restored afterwards)."""
    tensors = [*net.parameters(), *net.buffers()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def graph_by_running(net: nn.Module, leaves: dict[str, nn.Module], example_input: Any) -> Graph:
    """The graph from one forward pass on ``example_input`` (a tensor, a tuple of positional
    arguments or a mapping of keyword arguments), leaving the model as it was."""
    args, kwargs = (
        ((), dict(example_input))
        if isinstance(example_input, Mapping)
        else (tuple(example_input), {})
        if isinstance(example_input, (tuple, list))
        else ((example_input,), {})
    )
    training = {m: m.training for m in net.modules()}
    buffers = [(b, b.detach().clone()) for b in net.buffers()]
    recorder = _Recorder(net, leaves)
    for t in tree_leaves((args, kwargs)):
        if isinstance(t, torch.Tensor):
            recorder.record("input", None, (), {}, t, role="input")
    try:
        with torch.random.fork_rng(devices=_cuda_devices(net)), torch.no_grad(), recorder:
            net.eval()
            result = net(*args, **kwargs)
    except UserError:
        raise
    except Exception as err:
        raise UserError(
            f"running {type(net).__name__} on the example input failed: {type(err).__name__}: {err}"
        ) from None
    finally:
        for handle in recorder.handles:
            handle.remove()
        for m, mode in training.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    recorder.record("output", None, (result,), {}, None, role="output")
    return recorder.graph


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
    if op.name in _THROUGH_CALLS or (op.name in _SCALINGS and op.operands == 1):
        return "through"
    return "stop"


@dataclass(frozen=True)
class Reached:
    """Everything a layer's output reaches, each path followed to its first op that decides."""

    nonlinearities: list[Feeds]
    layers: list[Op]  # weighted layers reached with no nonlinearity between
    others: list[Op]  # ops that are neither: unknown functions or modules, the model's output


def reached(graph: Graph, starts: list[int], live: set[int]) -> Reached:
    """What the results of ``starts`` reach. An op the output does not depend on (a check such
    as ``if h.sum() > 0``) decides nothing, unless it is a nonlinearity (fx keeps an in-place
    one whose result is not assigned, although its effect is)."""
    found: Reached = Reached([], [], [])
    seen, todo = set(starts), deque(starts)
    while todo:
        for reader in graph.readers[todo.popleft()]:
            if reader in seen:
                continue
            seen.add(reader)
            op, kind = graph.ops[reader], classify(graph.ops[reader])
            if isinstance(kind, Feeds):
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
