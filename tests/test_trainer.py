"""GANTrainer's speed options: bf16 autocast and torch.compile keep the loop's contract."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from gan import nets, runtime
from gan.config import TrainerConfig, preset
from gan.errors import UserError
from gan.optimizers import load_state
from gan.runtime import check_precision, resolve_precision
from gan.schedule import Schedule
from gan.trainer import METRICS, GANTrainer

CPU = torch.device("cpu")


def _trainer(precision: str = "fp32", **changes) -> GANTrainer:
    """A small mlp's trainer: the YAML's trainer section, batches of 16, ``changes``."""
    torch.manual_seed(0)
    g, d = nets.mlp(
        (1, 8, 8),
        z_dim=8,
        g_widths=[32, 64],
        d_widths=[32],
        slope=0.2,
        g_norm="batch",
        d_norm="none",
    )
    images = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    section = preset(TrainerConfig, "trainer", batch_size=16, **changes)
    return GANTrainer(g, d, images, section, seed=0, precision=precision)


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
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert "~20× slower" in check_precision("bf16", CPU)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert check_precision("bf16", CPU) is None
    assert check_precision("fp32", CPU) is None


def test_the_precision_name_is_checked_with_the_trainer_section():
    with pytest.raises(
        UserError, match="trainer.precision must be one of auto, fp32, bf16, got 'fp16'"
    ):
        preset(TrainerConfig, "trainer", precision="fp16")


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
    eager, compiled = _trainer(), _trainer(compile=True)
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
    result = _trainer(compile=True).run(schedule, sink, progress=False)
    assert result.status == "finished" and sink.metrics == [3, 6]
    regular = [(step, values) for step, values in sink.diagnostics if values]
    assert [step for step, _ in regular] == [0, 3, 5]  # the eager, hooked modules; 5: the end
    assert all("diag/G/fc1/act_std" in values for _, values in regular)


@pytest.mark.slow
def test_a_failing_compiler_is_a_clear_error(monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=broken_backend))
    torch._dynamo.reset()
    trainer = _trainer(compile=True)
    with pytest.raises(
        UserError,
        match=r"trainer.compile=true: torch.compile failed at step 1 "
        r"\(RuntimeError: no C\+\+ compiler\); .*trainer.compile=false",
    ):
        trainer.run(Schedule(steps=2, log_every=1, sample_every=100), _Recorder(), progress=False)
    torch._dynamo.reset()


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    # On CUDA bf16 measured slower for these small models (README, Speed): auto stays fp32.
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"


def test_the_trainer_takes_a_resolved_precision_only():
    # The section's "auto" is the setting: resolved once, by the run, for its device.
    with pytest.raises(ValueError, match="fp32 or bf16, resolved for the device; got 'auto'"):
        _trainer(precision="auto")


@pytest.mark.skipif(
    not runtime.cpu_has_native_bf16(),
    reason="this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is emulated, not what auto runs",
)
def test_bf16_runs_on_a_native_cpu_are_reproducible():
    runs = []
    for _ in range(2):
        trainer = _trainer(precision="bf16")
        trainer.run(Schedule(steps=6, log_every=3, sample_every=100), _Recorder(), progress=False)
        runs.append((trainer.g.state_dict(), trainer.d.state_dict(), trainer.last))
    (g1, d1, last1), (g2, d2, last2) = runs
    assert all(torch.equal(g1[k], g2[k]) for k in g1) and all(torch.equal(d1[k], d2[k]) for k in d1)
    assert last1 == last2


def _poison(trainer: GANTrainer, step: int, poison) -> None:
    """``poison(metrics)`` at the end of step ``step``, after its updates."""
    original = trainer.gan_step

    def poisoned(real, eager=False):
        metrics = original(real, eager)
        if trainer.step + 1 == step:
            poison(metrics)
        return metrics

    trainer.gan_step = poisoned


def test_the_window_finds_the_exact_first_non_finite_step():
    trainer = _trainer()
    sink = _Recorder()
    _poison(trainer, 5, lambda metrics: metrics.update(loss_G=torch.tensor(float("inf"))))
    result = trainer.run(Schedule(steps=12, log_every=4, sample_every=100), sink, progress=False)
    assert (result.status, result.diverged_step, result.step) == ("diverged", 5, 8)
    assert sink.metrics == [4, 8]  # the first window logged, the second reported the divergence


def test_a_window_that_diverged_closes_early_before_evaluation_reads_the_weights():
    # Evaluation every 3 steps, windows of 10: G's weights go NaN in step 2's update.
    trainer = _trainer()
    sink = _Recorder()
    _poison(trainer, 2, lambda _: next(trainer.g.parameters()).data.fill_(float("nan")))

    class Evaluations:
        steps = []

        def evaluate(self, step, generator):
            assert all(torch.isfinite(p).all() for p in generator.parameters())
            self.steps.append(step)

        def checkpoint(self, step): ...
        def should_stop(self):
            return False

    schedule = Schedule(steps=12, log_every=10, sample_every=100, eval_every=3)
    result = trainer.run(schedule, sink, Evaluations(), progress=False)
    assert (result.status, result.step, result.diverged_step) == ("diverged", 3, 3)
    assert sink.metrics == [3] and Evaluations.steps == []  # its divergence, not its means


def test_loaded_moments_follow_their_weights_layout():
    # Adam's state saved from a contiguous weight, loaded for the same weight in channels_last
    # (a population member resumed solo): the fused step must equal the contiguous one.
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3)
    grads = [torch.randn_like(weight) for _ in range(2)]
    plain = nn.Parameter(weight.clone())
    plain_opt = torch.optim.Adam([plain], lr=0.1, fused=True)
    plain.grad = grads[0]
    plain_opt.step()
    saved = copy.deepcopy(plain_opt.state_dict())
    laid = nn.Parameter(plain.detach().contiguous(memory_format=torch.channels_last))
    laid_opt = torch.optim.Adam([laid], lr=0.1, fused=True)
    load_state(laid_opt, saved)
    plain.grad, laid.grad = grads[1], grads[1].contiguous(memory_format=torch.channels_last)
    plain_opt.step()
    laid_opt.step()
    assert torch.equal(plain, laid)


def test_a_checkpoint_of_the_older_window_format_resumes_with_the_same_means():
    class StopAtThree:  # stops mid-window, as a preemption would
        def evaluate(self, step, generator): ...
        def checkpoint(self, step): ...
        def should_stop(self):
            return split.step == 3

    schedule = Schedule(steps=6, log_every=6, sample_every=100)
    straight, split = _trainer(), _trainer()
    straight.run(schedule, _Recorder(), progress=False)
    assert split.run(schedule, _Recorder(), StopAtThree(), progress=False).status == "stopped"
    assert split.window_steps == 3
    old = split.state_dict()
    old["window"] = old.pop("window_rows").sum(0)  # format 1: the open window's sums
    resumed = _trainer()
    resumed.load_state_dict(old)
    resumed.run(schedule, _Recorder(), progress=False)
    for key, value in straight.last.items():
        assert resumed.last[key] == pytest.approx(value, rel=1e-6), key


def test_the_window_buffer_is_sized_by_the_run_not_by_a_never_period():
    trainer = _trainer()
    trainer.run(Schedule(steps=4, log_every=10**9, sample_every=10**9), _Recorder(), progress=False)
    assert trainer.rows.shape == (4, len(METRICS))


def test_the_schedule_is_its_trainer_sections_length_and_periods():
    section = preset(TrainerConfig, "trainer", steps=60, log_every=7, diag_every=0, eval_every=30)
    schedule = Schedule.of(section)
    assert (schedule.steps, schedule.log_every, schedule.diag_every, schedule.eval_every) == (
        60,
        7,
        0,
        30,
    )
    assert (schedule.sample_every, schedule.ckpt_every) == (
        section.sample_every,
        section.ckpt_every,
    )
