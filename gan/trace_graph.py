"""The graph of a model's forward, for ``gan.trace``: one op per layer or function called, each
linked to the ops that made its inputs; built symbolically (torch.fx) or by running the model.

Also the layer kinds the graph treats as one op: weighted layers, normalization and the markers of
a nonlinearity inside the loss.
"""

from __future__ import annotations

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


class SigmoidInLoss(nn.Identity):
    """Declares that a sigmoid is applied to this point inside the loss (BCE-with-logits).

    Identity in forward. It exists so the init rule can see what the discriminator's last layer
    feeds, although the sigmoid itself is fused into the loss for numerical stability.
    """


class SoftmaxInLoss(nn.Identity):
    """Declares that a softmax is applied to this point inside the loss (cross-entropy)."""


WEIGHTED_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
CALL_ALIASES = {"iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul"}
# Not rtruediv: ``2 / h`` is a reciprocal, not a scaling.
CALL_ALIASES |= {"rmul": "mul", "itruediv": "truediv", "concatenate": "cat"}
# Results that are sizes, not data: what reads them does not receive the layer's output.
METADATA_CALLS = frozenset({"size", "dim", "numel", "ndimension", "nelement", "stride", "getattr"})


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
    in_place: bool = False  # writes its input (``relu_``, ``inplace=True``): it acts if unread

    def describe(self) -> str:
        if self.role == "output":
            return "the model's output"
        if self.module is not None:
            return f"'{self.name}' ({type(self.module).__name__})"
        return f"{self.name}() in {repr(self.scope) if self.scope else 'the top-level forward'}"


def writes_its_input(func: Any, kwargs: Mapping[str, Any]) -> bool:
    """Whether a call (a function, a method's name, or a module) overwrites its input."""
    name = func if isinstance(func, str) else getattr(func, "__name__", "")
    named_in_place = name.endswith("_") and not name.endswith("__")  # relu_, not __iadd__
    return named_in_place or kwargs.get("inplace") is True or getattr(func, "inplace", False)


def call_name(func: Any) -> str:
    """``relu_`` → relu, ``Tensor.__iadd__`` → add, ``operator.getitem`` → getitem."""
    name = getattr(func, "__name__", str(func)).strip("_")
    return CALL_ALIASES.get(name, name)


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
            name in METADATA_CALLS or (node.all_input_nodes and not sources)
        ):
            meta.add(node)  # a size, or arithmetic on sizes: not the data
            continue
        role = {"placeholder": "input", "get_attr": "constant", "output": "output"}
        module = leaves.get(node.target) if node.op == "call_module" else None
        # A module's path is no function name: "out_" is not in place, its module's flag says.
        called = module if node.op == "call_module" else node.target
        op = Op(
            name=str(name),
            inputs=[index[n] for n in sources if graph.ops[index[n]].role != "constant"],
            module=module,
            args=tuple(node.args),
            kwargs=dict(node.kwargs),
            operands=len(sources),
            scope=next(reversed(node.meta.get("nn_module_stack") or {"": None})),
            role=role.get(node.op, "call"),
            in_place=writes_its_input(called, node.kwargs),
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
            self.record(call_name(func), None, args, kwargs, result, writes_its_input(func, kwargs))
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
            in_place = writes_its_input(module, kwargs)
            self.record(self.leaf_paths[id(module)], module, args, kwargs, result, in_place)

    def record(self, name, module, args, kwargs, result, in_place=False, role="call"):
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
        if not outputs and role == "call":
            return  # a size or a flag: not data
        inputs = [self.made_by[id(t)] for t in tensors if id(t) in self.made_by]
        sizes = None
        if module is not None and tensors:  # (N, C, *spatial): the sizes a conv's fans read
            sizes = (tuple(tensors[0].shape[2:]), tuple(outputs[0].shape[2:]))
        scope = self.scopes[-1]
        op = Op(name, inputs, module, args, kwargs, len(tensors), scope, sizes, role, in_place)
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
