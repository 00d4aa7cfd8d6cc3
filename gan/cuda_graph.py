"""A training step captured once in a CUDA graph and replayed: ``trainer.cuda_graph``.

A small GAN's step is many small kernels, so on a GPU the host launching them, not the math,
sets the pace; a captured graph launches them all in one call. The step reads its inputs from
static buffers, into which each call copies the new batch and noise, and its output is a static
tensor, overwritten by the next call.

A graph replays the addresses it captured. Every tensor the step keeps between calls (weights,
optimizer state, BatchNorm statistics) must therefore be updated in place; whoever replaces one
calls ``reset``, and ``check`` fails loudly on one replaced behind the graph's back, rather than
let it train a copy nobody reads. Gradients are the step's own temporaries: it sets them to None
and its backward allocates them, inside the graph as outside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from gan.config import TrainerConfig
from gan.errors import UserError

log = logging.getLogger(__name__)

Step = Callable[..., torch.Tensor]  # (static inputs…) → one output tensor

# Eager steps on a side stream before each capture: lazy initializations (cuBLAS workspaces,
# optimizer state) must happen outside the graph. They are training steps like any other.
WARMUP_STEPS = 3


def check_cuda_graph(trainer: TrainerConfig, device: torch.device) -> str | None:
    """Refuses ``trainer.cuda_graph=on`` where no graph can be captured (a UserError); returns
    why none can be here, or None."""
    why_not = _why_not(trainer, device)
    if why_not and trainer.cuda_graph == "on":
        raise UserError(f"trainer.cuda_graph=on: {why_not}; use trainer.cuda_graph=auto or off")
    return why_not


def uses_cuda_graph(trainer: TrainerConfig, device: torch.device) -> bool:
    """Whether ``trainer.cuda_graph`` captures the step here: ``on`` (checked by
    ``check_cuda_graph``) and ``auto`` where it can, ``off`` never."""
    return check_cuda_graph(trainer, device) is None and trainer.cuda_graph != "off"


def _why_not(trainer: TrainerConfig, device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"a CUDA graph needs a CUDA device, and this run trains on {device.type}"
    if trainer.compile:
        return "trainer.compile=true compiles the step instead (train with one or the other)"
    return None


class CudaCapture:
    """torch's CUDA graph: warm-up steps on a side stream, one capture, replays."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def warm_up(self, step: Step, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            output = step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return output

    def capture(self, step: Step, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Records the step, running none of it; its output tensor, which each replay fills."""
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph):
                return step(*inputs)
        except BaseException:
            # A capture that failed inside the step fails again in capture_end, before torch
            # leaves the capture stream: go back to ours.
            torch.cuda.set_stream(stream)
            raise

    def replay(self) -> None:
        self.graph.replay()


def training_state(
    nets: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer]
) -> list[torch.Tensor]:
    """What a step keeps between calls: the nets' parameters and buffers, then the optimizers'
    state tensors (moments, momentum buffers, step counts), in a fixed order."""
    return [
        *(t for net in nets for t in (*net.parameters(), *net.buffers())),
        *(
            v
            for opt in optimizers
            for state in opt.state.values()
            for v in state.values()
            if torch.is_tensor(v)
        ),
    ]


CAPTURE = CudaCapture  # the tests put a CPU rehearsal of it here


class GraphedStep:
    """``step`` run eagerly for WARMUP_STEPS calls, then captured and replayed on every call.

    ``state`` lists the tensors the step keeps between calls. ``required``: a capture that fails
    raises a UserError (``trainer.cuda_graph=on``); otherwise the run warns once and goes on
    eagerly, its step unchanged.
    """

    def __init__(self, step: Step, state: Callable[[], list[torch.Tensor]], *, required: bool):
        self.step, self.state, self.required = step, state, required
        self.capture_failed = False  # then it trains eagerly, and tries no more
        self.reset()

    @classmethod
    def of(
        cls,
        trainer: TrainerConfig,
        device: torch.device,
        step: Step,
        state: Callable[[], list[torch.Tensor]],
    ) -> GraphedStep | None:
        """``step`` graphed if ``trainer.cuda_graph`` asks for it on ``device``, else None."""
        if not uses_cuda_graph(trainer, device):
            return None
        return cls(step, state, required=trainer.cuda_graph == "on")

    def reset(self) -> None:
        """Forgets the graph: a tensor of ``state`` was replaced (loaded, restacked)."""
        self.device_graph = CAPTURE()
        self.inputs: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None
        self.addresses: list[int] = []
        self.warm_steps = 0

    @property
    def captured(self) -> bool:
        return self.output is not None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The step's output for ``inputs``; read it before the next call."""
        if self.capture_failed:
            return self.step(*inputs)
        if not self.captured and self.warm_steps < WARMUP_STEPS:
            self.warm_steps += 1
            return self.device_graph.warm_up(self.step, inputs)
        if not self.captured and not self._capture(inputs):
            return self.step(*inputs)
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        self.device_graph.replay()
        return self.output

    def _capture(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Captures the step on static copies of ``inputs``; False if it cannot (``auto``)."""
        statics = [x.clone() for x in inputs]
        try:
            output = self.device_graph.capture(self.step, statics)
        except Exception as err:  # any failure to capture means: train eagerly, or stop if asked
            cause = err.__context__ or err  # the step's own error, not capture_end's after it
            reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            if self.required:
                raise UserError(
                    f"trainer.cuda_graph=on: capturing the training step failed ({reason}); "
                    "train without it: trainer.cuda_graph=off"
                ) from err
            log.warning(
                "warning: trainer.cuda_graph=auto: capturing the training step failed (%s); "
                "this run goes on without a CUDA graph, and CUDA may keep memory the failed "
                "capture took until it ends (trainer.cuda_graph=off avoids both)",
                reason,
            )
            self.capture_failed, self.device_graph = True, None
            return False
        self.inputs, self.output = statics, output
        self.addresses = [t.data_ptr() for t in self.state()]
        return True

    def check(self) -> None:
        """Raises if a tensor the graph updates was replaced since its capture (a bug)."""
        if self.captured and [t.data_ptr() for t in self.state()] != self.addresses:
            raise RuntimeError(
                "trainer.cuda_graph: a tensor of the training state was replaced after the step "
                "was captured, so the graph would update a stale copy; its owner must reset() it"
            )
