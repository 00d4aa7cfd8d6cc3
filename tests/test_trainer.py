"""GANTrainer's speed options: bf16 autocast and torch.compile keep the loop's contract."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gan import nets
from gan import trainer as trainer_module
from gan.errors import UserError
from gan.trainer import METRICS, GANTrainer, Schedule, check_precision

CPU = torch.device("cpu")


def _trainer(**options) -> GANTrainer:
    torch.manual_seed(0)
    g, d = nets.mlp((1, 8, 8), z_dim=8, g_widths=[32, 64], d_widths=[32], slope=0.2)
    images = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return GANTrainer(g, d, images, batch_size=16, lr=2e-4, betas=(0.5, 0.999), seed=0, **options)


def _output_dtypes(trainer: GANTrainer) -> dict[str, torch.dtype]:
    """Runs one step; the dtype each network's first Linear produced."""
    seen: dict[str, torch.dtype] = {}

    def recorder(name):
        def hook(module, inputs, output) -> None:
            seen.setdefault(name, output.dtype)

        return hook

    hooks = [
        net.fc1.register_forward_hook(recorder(name))
        for name, net in (("G", trainer.g), ("D", trainer.d))
    ]
    metrics = trainer.gan_step(trainer._next_batch())
    for hook in hooks:
        hook.remove()
    assert set(metrics) == set(METRICS)
    assert all(m.dtype == torch.float32 and m.shape == () for m in metrics.values())
    assert all(torch.isfinite(m) for m in metrics.values())
    return seen


def test_bf16_autocasts_the_forward_passes_and_keeps_fp32_weights():
    trainer = _trainer(precision="bf16")
    assert _output_dtypes(trainer) == {"G": torch.bfloat16, "D": torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in (*trainer.g.parameters(), *trainer.d.parameters()))
    assert _output_dtypes(_trainer()) == {"G": torch.float32, "D": torch.float32}


def test_bf16_on_a_cpu_without_native_support_warns(monkeypatch):
    monkeypatch.setattr(trainer_module, "_cpu_has_native_bf16", lambda: False)
    assert "~20× slower" in check_precision("bf16", CPU)
    monkeypatch.setattr(trainer_module, "_cpu_has_native_bf16", lambda: True)
    assert check_precision("bf16", CPU) is None
    assert check_precision("fp32", CPU) is None
    with pytest.raises(UserError, match="trainer.precision must be one of fp32, bf16, got 'fp16'"):
        check_precision("fp16", CPU)


def test_bf16_on_a_gpu_older_than_ampere_is_refused(monkeypatch):
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: asked.append(device) or (7, 5)
    )
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    with pytest.raises(UserError, match="Tesla T4 has no native bf16 .*compute capability 8.0"):
        check_precision("bf16", torch.device("cuda:1"))
    assert asked == [torch.device("cuda:1")]  # the GPU the run uses, not the current one
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert check_precision("bf16", torch.device("cuda:1")) is None


def _bn_fed_biases(net: nn.Sequential) -> set[str]:
    """Biases of layers that feed a BatchNorm: their true gradient is exactly 0."""
    children = list(net.named_children())
    return {
        f"{name}.bias"
        for (name, _), (_, nxt) in zip(children, children[1:])
        if isinstance(nxt, nn.modules.batchnorm._NormBase)
    }


@pytest.mark.slow
def test_compiled_steps_match_eager_ones_and_checkpoints_stay_plain():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # no graphs cached by earlier tests
    graphs_before = counters["stats"]["unique_graphs"]
    eager, compiled = _trainer(), _trainer(torch_compile=True)
    for step in range(4):
        a, b = eager.gan_step(eager._next_batch()), compiled.gan_step(compiled._next_batch())
        # Same math; fused kernels may round differently (float32 tolerance).
        torch.testing.assert_close(
            b, a, rtol=1e-4, atol=1e-5, msg=f"metrics differ at step {step + 1}"
        )
    assert counters["stats"]["unique_graphs"] - graphs_before >= 2  # compiled G and D really ran
    # Weights agree to float32 rounding, except a bias feeding BatchNorm: its true gradient is 0,
    # and Adam turns either path's rounding noise there into steps of about ±lr.
    loose = _bn_fed_biases(eager.g)
    assert loose == {"fc2.bias"}
    for net in ("g", "d"):
        for (name, p), (_, q) in zip(
            getattr(compiled, net).named_parameters(), getattr(eager, net).named_parameters()
        ):
            atol = 4 * 2e-4 if net == "g" and name in loose else 1e-5  # steps × lr
            torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=f"{net}.{name}")
    # A checkpoint of a compiled run loads into an eager one: no torch.compile wrapper in its keys.
    assert compiled.state_dict()["generator"].keys() == eager.state_dict()["generator"].keys()
    eager.load_state_dict(compiled.state_dict())


class _Recorder:
    def __init__(self):
        self.metrics, self.diagnostics = [], []

    def log(self, step, metrics):
        self.metrics.append(step)

    def log_samples(self, step, images): ...
    def log_diagnostics(self, step, values, samples):
        self.diagnostics.append((step, values))


@pytest.mark.slow
def test_a_compiled_run_still_records_diagnostics():
    sink = _Recorder()
    schedule = Schedule(steps=6, log_every=3, sample_every=100, diag_every=3)
    result = _trainer(torch_compile=True).run(schedule, sink, progress=False)
    assert result.status == "finished" and sink.metrics == [3, 6]
    regular = [(step, values) for step, values in sink.diagnostics if values]
    assert [step for step, _ in regular] == [0, 3]  # diagnostic steps run the eager, hooked modules
    assert all("diag/G/fc1/act_std" in values for _, values in regular)


@pytest.mark.slow
def test_a_failing_compiler_is_a_clear_error(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=broken_backend))
    torch._dynamo.reset()
    trainer = _trainer(torch_compile=True)
    with pytest.raises(
        UserError,
        match=r"trainer.compile=true: torch.compile failed at step 1 "
        r"\(RuntimeError: no C\+\+ compiler\); .*trainer.compile=false",
    ):
        trainer.run(Schedule(steps=2, log_every=1, sample_every=100), _Recorder(), progress=False)
    torch._dynamo.reset()
