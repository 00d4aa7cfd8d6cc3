"""``trainer.cuda_graph``: the training step captured once in a CUDA graph and replayed.

A CPU has no CUDA graphs, so most tests here put a rehearsal in the capture's place: it runs the
step when the graph would capture it and again at each replay, on the graph's static inputs and
into its static output. That checks what the graph's owners must get right on any device: each
call's batch and noise reach the captured step, its output is read before the next call, the
tensors the step keeps are updated in place or the graph is reset, a population's mask of frozen
members is part of the capture. The rehearsal runs the eager step's own kernels, so a graphed run
must equal its eager run exactly. It runs the step's Python again at each replay, so it cannot show
a value that a real graph would freeze at capture, nor an op that cannot be captured: the last
tests capture real graphs where CUDA is present.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from test_population import DIVERGING, NoBar, NoEvents, Sink, assert_close_runs, members

from conftest import run_config
from gan import cuda_graph, run
from gan.config import TrainerConfig, preset
from gan.cuda_graph import GraphedStep, uses_cuda_graph
from gan.errors import UserError
from gan.population.trainer import PopulationTrainer
from gan.schedule import Schedule

GRAPHED = ["trainer.cuda_graph=on"]


class Rehearsal:
    """CudaCapture's stand-in on a CPU (see the module's docstring)."""

    captures = replays = 0

    def warm_up(self, step, inputs):
        return step(*inputs)

    def capture(self, step, inputs):
        Rehearsal.captures += 1
        self.step, self.inputs = step, inputs
        self.output = step(*inputs)  # the call that captures is served by this run of the step
        self.served = True
        return self.output

    def replay(self):
        Rehearsal.replays += 1
        if self.served:
            self.served = False
            return
        self.output.copy_(self.step(*self.inputs))


class FailingCapture(Rehearsal):
    def capture(self, step, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture
def rehearsed(monkeypatch):
    """CUDA graphs on this CPU, as rehearsals."""
    monkeypatch.setattr(cuda_graph, "CAPTURE", Rehearsal)
    monkeypatch.setattr(cuda_graph, "_why_not", lambda trainer, device: None)
    monkeypatch.setattr(Rehearsal, "captures", 0)
    monkeypatch.setattr(Rehearsal, "replays", 0)


def trainers(tmp_path, jobs: list[list[str]], common: list[str], device: str = "cpu"):
    """One solo trainer per job, as a run builds it."""
    return [trainer for *_, trainer in members(tmp_path, jobs, common, device)]


def weights(trainer) -> list[torch.Tensor]:
    return [t.detach() for net in (trainer.g, trainer.d) for t in net.state_dict().values()]


def test_the_setting_captures_only_where_it_can_and_on_says_why_not():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def section(**changes) -> TrainerConfig:
        return preset(TrainerConfig, "trainer", **changes)

    assert not uses_cuda_graph(section(cuda_graph="off"), cpu)
    assert not uses_cuda_graph(section(cuda_graph="auto"), cpu)
    assert uses_cuda_graph(section(cuda_graph="auto"), cuda)
    assert not uses_cuda_graph(section(cuda_graph="auto", compile=True), cuda)
    with pytest.raises(UserError, match="needs a CUDA device, and this run trains on cpu"):
        uses_cuda_graph(section(cuda_graph="on"), cpu)
    with pytest.raises(UserError, match="trainer.compile=true compiles the step instead"):
        uses_cuda_graph(section(cuda_graph="on", compile=True), cuda)


def test_a_run_asking_for_a_graph_on_a_cpu_is_refused_before_it_starts(tmp_path):
    cfg = run_config([*GRAPHED, "trainer.device=cpu"], tmp_path / "run")
    with pytest.raises(UserError, match="trainer.cuda_graph=on: a CUDA graph needs a CUDA device"):
        run.prepare(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "common",
    [[], ["model.d_norm=spectral", "trainer.optimizer=sgd"], ["model=dcgan"]],
    ids=["mlp-adam", "mlp-spectral-sgd", "dcgan"],
)
def test_a_graphed_run_trains_exactly_as_its_eager_run(tmp_path, rehearsed, common):
    schedule = Schedule(24, log_every=4, sample_every=100, diag_every=10)
    (eager,) = trainers(tmp_path / "eager", [common], [])
    (graphed,) = trainers(tmp_path / "graphed", [common], GRAPHED)
    assert eager.graph is None and graphed.graph is not None
    eager_sink, graphed_sink = Sink(), Sink()
    eager.run(schedule, eager_sink, progress=False)
    graphed.run(schedule, graphed_sink, progress=False)
    # One capture; every plain step after the warm-up replayed it (diagnostic steps ran eagerly).
    plain = [step for step in range(1, 25) if not any(schedule.diag_due(step))]
    assert Rehearsal.captures == 1 and Rehearsal.replays == len(plain) - cuda_graph.WARMUP_STEPS
    assert graphed_sink.rows == eager_sink.rows  # every window's metrics, exactly
    assert all(torch.equal(a, b) for a, b in zip(weights(graphed), weights(eager)))


def test_a_checkpoint_resumes_with_or_without_the_graph_exactly(tmp_path, rehearsed):
    schedule = Schedule(20, log_every=5, sample_every=100)
    straight, first, graphed_again, captured = trainers(tmp_path, [[]] * 4, GRAPHED)
    (eager_again,) = trainers(tmp_path / "eager", [[]], ["trainer.cuda_graph=off"])
    straight.run(schedule, Sink(), progress=False)
    first.run(Schedule(10, log_every=5, sample_every=100), Sink(), progress=False)
    state = first.state_dict()
    # ``captured`` has a graph already: loading replaces its optimizers' state, so it must reset.
    captured.run(Schedule(10, log_every=5, sample_every=100), Sink(), progress=False)
    assert captured.graph.captured
    for resumed in (graphed_again, eager_again, captured):
        resumed.load_state_dict(copy.deepcopy(state))  # as from a file: nothing shared
        resumed.run(schedule, Sink(), progress=False)
        assert all(torch.equal(a, b) for a, b in zip(weights(resumed), weights(straight)))
    # Each optimizer keeps its own choice, whatever the checkpoint's run made.
    assert graphed_again.g_opt.param_groups[0]["capturable"]
    assert not eager_again.g_opt.param_groups[0]["capturable"]


@pytest.mark.parametrize(
    "common", [["model.d_norm=spectral"], ["model=dcgan"]], ids=["mlp-spectral", "dcgan"]
)
def test_a_graphed_population_trains_exactly_as_its_eager_population(tmp_path, rehearsed, common):
    # A diverging member is frozen in place (its mask is part of the capture); diagnostic steps
    # and sample grids run eagerly between replays.
    jobs = [["init=he_xavier", "seed=0"], DIVERGING, ["init=default", "seed=1"]]
    schedule = Schedule(30, log_every=5, sample_every=15, diag_every=12)
    runs = {}
    for name, graph in (("eager", []), ("graphed", GRAPHED)):
        population = PopulationTrainer(trainers(tmp_path / name, jobs, [*common, *graph]))
        sinks = [Sink() for _ in jobs]
        results = population.run(schedule, sinks, NoEvents(), NoBar())
        runs[name] = (population, sinks, results)
    (eager, eager_sinks, eager_results), (graphed, sinks, results) = runs.values()
    assert eager.graph is None and graphed.graph.captured and Rehearsal.captures == 1
    assert [r.status for r in results] == ["finished", "diverged", "finished"]
    assert [r.diverged_step for r in results] == [r.diverged_step for r in eager_results]
    # Exactly, NaNs of the diverged member's diagnostics included (repr round-trips floats).
    assert repr([s.rows for s in sinks]) == repr([s.rows for s in eager_sinks])
    for k in (0, 2):
        assert all(
            torch.equal(a, b)
            for a, b in zip(weights(graphed.sync_to_solo(k)), weights(eager.sync_to_solo(k)))
        )


def test_a_state_tensor_replaced_behind_the_graph_is_caught_at_the_next_window(tmp_path, rehearsed):
    (trainer,) = trainers(tmp_path, [[]], GRAPHED)
    trainer.run(Schedule(10, log_every=5, sample_every=100), Sink(), progress=False)
    state = trainer.g_opt.state[next(trainer.g.parameters())]
    state["exp_avg"] = state["exp_avg"].clone()  # as a careless restack would
    with pytest.raises(RuntimeError, match="replaced after the step was captured"):
        trainer.run(Schedule(15, log_every=5, sample_every=100), Sink(), progress=False)


def test_a_failed_capture_goes_on_eagerly_under_auto_and_stops_under_on(
    tmp_path, rehearsed, monkeypatch, caplog
):
    monkeypatch.setattr(cuda_graph, "CAPTURE", FailingCapture)
    schedule = Schedule(12, log_every=4, sample_every=100)
    settings = [["trainer.cuda_graph=off"], ["trainer.cuda_graph=auto"], GRAPHED]
    eager, auto, on = trainers(tmp_path, settings, [])
    eager.run(schedule, eager_sink := Sink(), progress=False)
    with caplog.at_level(logging.WARNING, logger="gan.cuda_graph"):
        auto.run(schedule, auto_sink := Sink(), progress=False)
    assert auto_sink.rows == eager_sink.rows and auto.graph.capture_failed
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "trainer.cuda_graph=auto: capturing the training step failed (RuntimeError: " in warning
    assert "goes on without a CUDA graph" in warning
    with pytest.raises(UserError, match="train without it: trainer.cuda_graph=off"):
        on.run(schedule, Sink(), progress=False)


def test_a_step_that_fails_midway_gives_d_its_gradients_back(tmp_path, monkeypatch):
    # As a capture failing inside the G update would: D's weights must need gradients again, or
    # the eager steps after it would never update D.
    solo, *members_ = trainers(tmp_path, [[], ["seed=1"], ["seed=2"]], [])
    population = PopulationTrainer(members_)

    def failing(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    for module in ("gan.trainer", "gan.population.trainer"):
        monkeypatch.setattr(f"{module}.generator_loss", failing)
    for step, d in (
        (lambda: solo.gan_step(solo._next_batch()), solo.d),
        (population.gan_step, population.d),
    ):
        with pytest.raises(RuntimeError, match="not permitted"):
            step()
        assert all(p.requires_grad for p in d.parameters())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA_BF16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def first_windows_agree(graphed: Sink, eager: Sink, rel: float = 1e-3) -> bool:
    """The first logging window's metrics, before rounding differences can grow."""
    (_, got), (_, want) = graphed.rows[0], eager.rows[0]
    return got.keys() == want.keys() and all(
        abs(got[k] - v) <= rel * (abs(v) + 1) for k, v in want.items() if isinstance(v, float)
    )


@cuda
@pytest.mark.parametrize(
    "common",
    [
        [],
        pytest.param(
            ["model=dcgan", "trainer.precision=bf16"],
            marks=pytest.mark.skipif(not CUDA_BF16, reason="needs a GPU with bf16"),
        ),
    ],
)
def test_on_cuda_a_captured_run_follows_its_eager_run(tmp_path, common):
    schedule = Schedule(60, log_every=10, sample_every=30, diag_every=25)
    sinks = []
    for name, graph in (("eager", "off"), ("graphed", "on")):
        (trainer,) = trainers(tmp_path / name, [common], [f"trainer.cuda_graph={graph}"], "cuda")
        sinks.append(Sink())
        trainer.run(schedule, sinks[-1], progress=False)
    assert trainer.graph.captured
    assert first_windows_agree(sinks[1], sinks[0])
    assert_close_runs(sinks[1].rows, sinks[0].rows)


@cuda
def test_on_cuda_a_captured_population_follows_its_eager_population(tmp_path):
    jobs = [["init=he_xavier", "seed=0"], DIVERGING, ["init=default", "seed=1"]]
    schedule = Schedule(60, log_every=10, sample_every=30, diag_every=25)
    all_sinks = []
    for name, graph in (("eager", "off"), ("graphed", "on")):
        population = PopulationTrainer(
            trainers(tmp_path / name, jobs, [f"trainer.cuda_graph={graph}"], "cuda")
        )
        all_sinks.append([Sink() for _ in jobs])
        results = population.run(schedule, all_sinks[-1], NoEvents(), NoBar())
        assert [r.status for r in results] == ["finished", "diverged", "finished"]
    assert population.graph.captured
    for k, (graphed, eager) in enumerate(zip(*reversed(all_sinks))):
        assert k == 1 or first_windows_agree(graphed, eager)  # member 1 diverges at once
        assert_close_runs(graphed.rows, eager.rows)


@cuda
def test_on_cuda_a_step_that_cannot_be_captured_runs_eagerly_under_auto(caplog):
    total = torch.zeros(4, device="cuda")

    def step(x):
        total.add_(x)
        if total.sum().item() < 0:  # a host sync, which a capture refuses
            total.zero_()
        return total * 1

    graphed = GraphedStep(step, lambda: [total], required=False)
    stream = torch.cuda.current_stream()
    with caplog.at_level(logging.WARNING, logger="gan.cuda_graph"):
        for _ in range(cuda_graph.WARMUP_STEPS + 3):
            out = graphed(torch.ones(4, device="cuda"))
    assert graphed.capture_failed and torch.cuda.current_stream() == stream  # not the capture's
    assert out.tolist() == [6.0] * 4  # each call ran once, the one whose capture failed too
    assert "capturing the training step failed" in caplog.text
