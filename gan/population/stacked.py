"""K copies of one network architecture as one batched network: a population's members.

Every tensor of the members' ``nn.Sequential`` is stacked into one tensor of shape (K, *shape), so
one optimizer step updates all members and nothing mixes them: a Linear is a batched matmul over
(K, B, F), a convolution is grouped with one group per member over (B, K·C, H, W), BatchNorm keeps
statistics per (member, channel), spectral norm runs its power iteration per member. A member's
tensors are copied back into its own solo modules (``copy_to``) for checkpoints and diagnostics,
so a member's files are a solo run's.

Layouts between stages: ``flat`` (K, B, F), ``image`` (K, B, C, H, W) and ``chan``
(B, K·C, H, W), the layout grouped convolutions and BatchNorm2d read.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from gan.errors import UserError
from gan.init import SigmoidInLoss

ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.Sigmoid, SigmoidInLoss)


class Layout:
    """A tensor of K members in one of three layouts, converted on demand."""

    def __init__(self, tensor: torch.Tensor, kind: str, members: int):
        self.tensor, self.kind, self.members = tensor, kind, members

    def image(self) -> torch.Tensor:
        if self.kind == "chan":  # (B, K·C, H, W) → (K, B, C, H, W), a view
            b, kc, h, w = self.tensor.shape
            return self.tensor.view(b, self.members, kc // self.members, h, w).transpose(0, 1)
        return self.tensor

    def chan(self) -> torch.Tensor:
        if self.kind == "image":  # (K, B, C, H, W) → (B, K·C, H, W), a copy
            k, b, c, h, w = self.tensor.shape
            return self.tensor.transpose(0, 1).reshape(b, k * c, h, w)
        return self.tensor


def _key(name: str) -> str:
    return name.replace(".", "__")  # module attribute names cannot hold dots


class Stage(nn.Module):
    """One stage of the members' Sequential, its tensors stacked, addressed by solo names.

    A Linear's weight is stored transposed, (K, in, out): the batched matmul then reads and
    writes it, and its gradient, without strided copies. ``get`` always gives the solo layout.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        # Read for its hyperparameters only (stride, eps, …); not a submodule, so its own
        # tensors are neither trained nor moved.
        self._template = (members[0],)
        self.names = [n for n, _ in self.template.named_parameters()]
        self.buffer_names = [n for n, _ in self.template.named_buffers()]
        linear = isinstance(self.template, nn.Linear)
        self.transposed = {n for n in self.names if linear and n.split(".")[-1] != "bias"}
        for name in self.names:
            tensors = [m.get_parameter(name).detach() for m in members]
            if name in self.transposed:
                tensors = [t.T for t in tensors]
            stacked = torch.stack(tensors).contiguous()
            self.register_parameter(_key(name), nn.Parameter(stacked))
        for name in self.buffer_names:
            stacked = torch.stack([m.get_buffer(name) for m in members])
            self.register_buffer(_key(name), stacked.clone())

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def raw(self, name: str) -> torch.Tensor:
        """The stacked tensor as stored (a Linear's weight transposed)."""
        return getattr(self, _key(name))

    def get(self, name: str) -> torch.Tensor:
        """The stacked tensor in the solo layout, (K, *solo shape) (a view)."""
        return self.raw(name).mT if name in self.transposed else self.raw(name)

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(solo name, stacked tensor in solo layout) for every parameter, then every buffer."""
        return [(n, self.get(n)) for n in (*self.names, *self.buffer_names)]

    def parameters_by_name(self) -> list[tuple[str, nn.Parameter, bool]]:
        """(solo name, stored parameter, whether it is stored transposed)."""
        return [(n, self.raw(n), n in self.transposed) for n in self.names]

    def forward(self, x: Layout) -> Layout:
        module = self.template
        if isinstance(module, ELEMENTWISE):  # layout-agnostic
            return Layout(module(x.tensor), x.kind, x.members)
        if isinstance(module, nn.Flatten):
            return Layout(x.image().flatten(2), "flat", x.members)
        if isinstance(module, nn.Unflatten):
            k, b = x.tensor.shape[:2]
            return Layout(x.tensor.reshape(k, b, *module.unflattened_size), "image", x.members)
        raise AssertionError(f"no forward for {type(module).__name__}")  # refused in stack()


class Weighted(Stage):
    """Linear, Conv2d or ConvTranspose2d, with or without spectral norm."""

    def effective_weight(self) -> torch.Tensor:
        """The weight as stored ((K, in, out) for a Linear, (K, *solo shape) for a conv): the
        plain one, or original / sigma per member under spectral norm."""
        if "weight" in self.names:
            return self.raw("weight")
        name = "parametrizations.weight.original"
        stored = self.raw(name)
        # As precise as a solo run's parametrization, whose torch.mv autocast lowers on CUDA but
        # leaves in fp32 on a CPU, where it would lower these batched matmuls: fp32 there.
        on_cpu = stored.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if on_cpu else nullcontext():
            sigma = self._sigma(self.get(name).flatten(2))  # (K, out, in·kh·kw), torch's reshape
        return stored / sigma.view(-1, *[1] * (stored.dim() - 1))

    def _sigma(self, matrix: torch.Tensor) -> torch.Tensor:
        """Each member's spectral norm estimate (K,), after one power iteration when training,
        as torch's parametrization makes per forward pass."""
        u, v = self.get("parametrizations.weight.0._u"), self.get("parametrizations.weight.0._v")
        if self.training:
            with torch.no_grad():
                eps = self.template.parametrizations.weight[0].eps
                m = matrix.detach()
                u.copy_(F.normalize(torch.bmm(m, v.unsqueeze(2)).squeeze(2), dim=1, eps=eps))
                v.copy_(F.normalize(torch.bmm(m.mT, u.unsqueeze(2)).squeeze(2), dim=1, eps=eps))
        u, v = u.clone(), v.clone()
        return (u * torch.bmm(matrix, v.unsqueeze(2)).squeeze(2)).sum(1)

    def forward(self, x: Layout) -> Layout:
        module, k = self.template, x.members
        weight, bias = self.effective_weight(), self.get("bias")
        if isinstance(module, nn.Linear):  # (K, B, in) @ (K, in, out) + (K, 1, out)
            return Layout(torch.baddbmm(bias.unsqueeze(1), x.tensor, weight), "flat", k)
        # One group per member: weight (K·out, in, kh, kw), or (K·in, out, kh, kw) transposed.
        conv = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)
        if isinstance(module, nn.Conv2d):
            call = F.conv2d
        else:
            call, conv["output_padding"] = F.conv_transpose2d, module.output_padding
        chan, n = x.chan(), conv_chunk(k, x.tensor.device)
        per_member = chan.shape[1] // k  # input channels of one member
        outs = [
            call(
                chan[:, i * per_member : (i + n) * per_member],
                weight[i : i + n].flatten(0, 1),
                bias[i : i + n].flatten(),
                groups=len(weight[i : i + n]),
                **conv,
            )
            for i in range(0, k, n)
        ]
        return Layout(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1), "chan", k)


# On a CPU with one thread, oneDNN's grouped convolution (above all its backward pass) costs more
# per group the more groups one call has: a population's convolutions run in calls of at most
# this many members there. With more threads one call of every member measured faster, as on a
# GPU (docs/speed.md).
CPU_CONV_MEMBERS = 8


def conv_chunk(members: int, device: torch.device) -> int:
    """Members per grouped convolution call."""
    one_thread_cpu = device.type == "cpu" and torch.get_num_threads() == 1
    return min(members, CPU_CONV_MEMBERS) if one_thread_cpu else members


class Norm(Stage):
    """BatchNorm1d / BatchNorm2d with statistics per member and channel."""

    def forward(self, x: Layout) -> Layout:
        module, k = self.template, x.members
        if self.training:
            self.get("num_batches_tracked").add_(1)
        args = (
            self.get("running_mean").flatten(),
            self.get("running_var").flatten(),
            self.get("weight").flatten(),
            self.get("bias").flatten(),
            self.training,
            module.momentum,
            module.eps,
        )
        if isinstance(module, nn.BatchNorm2d):
            return Layout(F.batch_norm(x.chan(), *args), "chan", k)
        _, b, f = x.tensor.shape  # (K, B, F) → (B, K·F): one channel per member and feature
        out = F.batch_norm(x.tensor.transpose(0, 1).reshape(b, k * f), *args)
        return Layout(out.view(b, k, f).transpose(0, 1), "flat", k)


def _stage(members: Sequence[nn.Module], where: str) -> Stage:
    module = members[0]
    weighted = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    if isinstance(module, weighted) and module.bias is not None:
        if getattr(module, "groups", 1) != 1:
            raise UserError(f"population: {where} is a grouped convolution; it has no batched form")
        return Weighted(members)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
        if not module.track_running_stats or module.momentum is None:
            raise UserError(f"population: {where} (BatchNorm) needs running stats and a momentum")
        return Norm(members)
    if isinstance(module, (*ELEMENTWISE, nn.Flatten, nn.Unflatten)):
        if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
            raise UserError(f"population: {where} flattens other dims than (1, -1)")
        if isinstance(module, nn.Unflatten) and module.dim != 1:
            raise UserError(f"population: {where} unflattens dim {module.dim}, not 1")
        return Stage(members)
    raise UserError(
        f"population: {where} is a {type(module).__name__}, which has no batched form; "
        "train this model one run at a time (hydra/launcher=basic or joblib)"
    )


class StackedNet(nn.Module):
    """K members of one ``nn.Sequential`` architecture as one network.

    ``forward`` takes the members' inputs as (K, B, …) (noise or images) and returns (K, B, …):
    G's images as (K, B, C, H, W), D's logits as (K, B, 1).
    """

    def __init__(self, members: Sequence[nn.Sequential], name: str):
        super().__init__()
        self.members = len(members)
        stage_names = [n for n, _ in members[0].named_children()]
        self.stage_names = stage_names
        self.stages = nn.ModuleList(
            _stage([m.get_submodule(s) for m in members], f"{name}.{s}") for s in stage_names
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = "flat" if x.dim() == 3 else "image"
        y = Layout(x, kind, self.members)
        for stage in self.stages:
            y = stage(y)
        return y.image() if y.kind == "chan" else y.tensor

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(solo name, stacked tensor) for every tensor of a member's state_dict."""
        return [
            (f"{stage_name}.{name}", t)
            for stage_name, stage in zip(self.stage_names, self.stages)
            for name, t in stage.tensors()
        ]

    def stacked_parameters(self, solo: nn.Module) -> list[tuple[nn.Parameter, bool]]:
        """(stored parameter, transposed?) in ``solo.parameters()``'s order: optimizer state
        is matched by index."""
        by_name = {
            f"{stage_name}.{name}": (p, transposed)
            for stage_name, stage in zip(self.stage_names, self.stages)
            for name, p, transposed in stage.parameters_by_name()
        }
        return [by_name[name] for name, _ in solo.named_parameters()]

    @torch.no_grad()
    def copy_to(self, k: int, solo: nn.Module) -> None:
        """Member ``k``'s tensors into its solo module."""
        state = solo.state_dict(keep_vars=True)
        for name, stacked in self.tensors():
            state[name].data.copy_(stacked[k])

    @torch.no_grad()
    def copy_from(self, k: int, solo: nn.Module) -> None:
        """Member ``k``'s tensors from its solo module (a resumed or diagnosed member)."""
        state = solo.state_dict(keep_vars=True)
        for name, stacked in self.tensors():
            stacked[k].copy_(state[name].data)
