"""GANTrainer's speed options: bf16 autocast and torch.compile keep the loop's contract."""

from __future__ import annotations

import pytest
import torch

from gan import nets, trainer as trainer_module
from gan.errors import UserError
from gan.trainer import METRICS, GANTrainer, check_precision

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

    hooks = [net.fc1.register_forward_hook(recorder(name)) for name, net in (("G", trainer.g), ("D", trainer.d))]
    metrics = trainer.gan_step(trainer._next_batch())
    for hook in hooks:
        hook.remove()
    assert metrics.dtype == torch.float32 and metrics.shape == (len(METRICS),)
    assert torch.isfinite(metrics).all()
    return seen


def test_bf16_autocasts_the_forward_passes_and_keeps_fp32_weights_and_grads():
    trainer = _trainer(precision="bf16")
    assert _output_dtypes(trainer) == {"G": torch.bfloat16, "D": torch.bfloat16}
    for p in (*trainer.g.parameters(), *trainer.d.parameters()):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
    assert _output_dtypes(_trainer()) == {"G": torch.float32, "D": torch.float32}


def test_bf16_on_a_cpu_without_native_support_warns(monkeypatch):
    monkeypatch.setattr(trainer_module, "_cpu_has_native_bf16", lambda: False)
    assert "~20× slower" in check_precision("bf16", CPU)
    monkeypatch.setattr(trainer_module, "_cpu_has_native_bf16", lambda: True)
    assert check_precision("bf16", CPU) is None
    assert check_precision("fp32", CPU) is None
    with pytest.raises(UserError, match="trainer.precision must be one of fp32, bf16, got 'fp16'"):
        check_precision("fp16", CPU)


@pytest.mark.slow
def test_compiled_steps_match_eager_ones_and_checkpoints_stay_plain(monkeypatch):
    from torch._dynamo.utils import counters

    eager, compiled = _trainer(), _trainer(compile=True)
    graphs_before = counters["stats"]["unique_graphs"]
    steps, lr = 4, 2e-4
    for step in range(steps):
        a, b = eager.gan_step(eager._next_batch()), compiled.gan_step(compiled._next_batch())
        # Same math; fused kernels may round differently (float32 tolerance).
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"metrics differ at step {step + 1}")
    assert counters["stats"]["unique_graphs"] > graphs_before  # the compiled path really ran
    # Weights agree up to Adam's step size: a bias feeding BatchNorm has a true gradient of exactly
    # 0, and Adam turns either path's rounding noise there into steps of about ±lr.
    for p, q in zip((*compiled.g.parameters(), *compiled.d.parameters()),
                    (*eager.g.parameters(), *eager.d.parameters())):
        torch.testing.assert_close(p, q, rtol=0, atol=steps * lr)
    # A checkpoint of a compiled run loads into an eager one: no torch.compile wrapper in its keys.
    assert compiled.state_dict()["generator"].keys() == eager.state_dict()["generator"].keys()
    eager.load_state_dict(compiled.state_dict())
