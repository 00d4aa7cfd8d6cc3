"""Populations: K runs trained as one batched model are still K runs, each its solo run.

Tolerance: a population sums in another order than a solo run (batched matmuls, grouped
convolutions), so a member's metrics are close to its solo run's, not equal, and GAN training
amplifies the rounding differences step by step (the BatchNorm DCGAN's losses: 3e-7 apart at
step 5, 1e-3 at step 33). Stated once here: |population - solo| <= ABS + REL·|solo| for every
logged value over 50 steps; per-layer diagnostics (gradient norms of BatchNorm'd layers amplify
most) within DIAG_REL.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import logging
import pickle
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import run_config, torch_threads
from gan import nets, record, run, signals, sweeps
from gan.config import ModelConfig, preset
from gan.errors import UserError
from gan.population import enrollment
from gan.population import stacked as stacking
from gan.population.stacked import StackedNet
from gan.population.trainer import PopulationTrainer
from gan.record import Ending
from gan.schedule import Schedule

ABS, REL = 0.05, 0.15
DIAG_REL = 0.35
SHAPE = (1, 8, 8)
NORMS = list(itertools.product(("batch", "none"), ("none", "batch", "spectral")))


class Sink:
    """Keeps what a run logs: (step, metrics) rows."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    def log_samples(self, step, images):
        self.rows.append((step, {"samples": tuple(images.shape)}))

    def log_diagnostics(self, step, values, samples):
        if values:
            self.rows.append((step, dict(values)))


class NoEvents:
    def evaluate(self, *args): ...
    def checkpoint(self, *args): ...
    def diverged(self, *args): ...
    def should_stop(self):
        return False


class NoBar:
    def update(self, n): ...


def members(tmp_path, jobs: list[list[str]], common: list[str], device: str = "cpu"):
    """(cfg, env, solo trainer) per job, each as a run builds it, on ``device``."""
    built = []
    for i, job in enumerate(jobs):
        cfg = run_config([*common, *job, f"trainer.device={device}"], tmp_path / f"m{i}")
        env = run.prepare(cfg)
        images, _ = run.load_data(cfg, env.device, progress=False)
        trainer, _ = run.build_trainer(cfg, env, images, allow_channels_last=False)
        built.append((cfg, env, trainer))
    return built


def close(a: float, b: float, key: str = "") -> bool:
    rel = DIAG_REL if key.startswith("diag/") else REL
    return abs(a - b) <= ABS + rel * abs(b)


def assert_close_runs(population_rows, solo_rows):
    assert [s for s, _ in population_rows] == [s for s, _ in solo_rows]
    for (step, got), (_, want) in zip(population_rows, solo_rows):
        assert got.keys() == want.keys(), step
        for key, value in want.items():
            if isinstance(value, float):
                assert close(got[key], value, key), (step, key, got[key], value)
            else:
                assert got[key] == value, (step, key)


def check_stacked_against_solos(cfg: ModelConfig) -> None:
    """Three members stacked: each member's images, logits and tensors are its solo modules'."""
    solos = []
    for seed in range(3):
        torch.manual_seed(seed)
        solos.append(nets.build(cfg, SHAPE))
    g = StackedNet([s[0] for s in solos], "generator")
    d = StackedNet([s[1] for s in solos], "discriminator")
    z = torch.randn(3, 16, cfg.z_dim)
    images = g(z)
    logits = d(images.detach())
    assert images.shape == (3, 16, *SHAPE) and logits.shape == (3, 16, 1)
    for k, (solo_g, solo_d) in enumerate(solos):
        torch.testing.assert_close(images[k], solo_g(z[k]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[k], solo_d(images[k].detach()), rtol=1e-4, atol=1e-5)
        for stacked, solo in ((g, solo_g), (d, solo_d)):  # running stats, spectral u and v
            state = solo.state_dict()
            for name, tensor in stacked.tensors():
                torch.testing.assert_close(tensor[k], state[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", nets.MODELS)  # every model, a new one included
@pytest.mark.parametrize("g_norm,d_norm", NORMS)
def test_stacked_networks_compute_each_members_own_function(model, g_norm, d_norm):
    cfg = dataclasses.replace(preset(ModelConfig, "model", model), g_norm=g_norm, d_norm=d_norm)
    check_stacked_against_solos(cfg)


@pytest.mark.parametrize("model", nets.MODELS)
def test_spectral_norm_under_bf16_runs_its_power_iteration_in_fp32_as_a_solo_run_does(model):
    # CPU autocast lowers bmm to bf16 but not torch.mv, which a solo run's parametrization uses:
    # the stacked power iteration must stay in fp32 too, or every step's sigma drifts.
    cfg = dataclasses.replace(preset(ModelConfig, "model", model), d_norm="spectral")
    solos = []
    for seed in range(2):
        torch.manual_seed(seed)
        solos.append(nets.build(cfg, SHAPE)[1])
    d = StackedNet(solos, "discriminator")
    images = torch.randn(2, 16, *SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d(images)
        for k, solo in enumerate(solos):
            solo(images[k])
    for k, solo in enumerate(solos):
        state = solo.state_dict()
        for name, tensor in d.tensors():
            if name.endswith(("_u", "_v")):
                assert tensor.dtype == torch.float32
                torch.testing.assert_close(tensor[k], state[name], rtol=1e-5, atol=1e-6)


def test_a_layer_without_a_batched_form_is_refused_by_name():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    with pytest.raises(UserError, match=r"generator\.1 is a Dropout, which has no batched form"):
        StackedNet([net, net], "generator")


@pytest.mark.parametrize("model", nets.MODELS)
@pytest.mark.parametrize("g_norm,d_norm", NORMS)
def test_a_members_initial_weights_are_bit_identical_to_its_solo_runs(
    tmp_path, model, g_norm, d_norm
):
    jobs = [["init=default", "seed=0"], ["init=he_xavier", "seed=1"], ["init=orthogonal", "seed=2"]]
    common = [f"model={model}", f"model.g_norm={g_norm}", f"model.d_norm={d_norm}"]
    built = members(tmp_path, jobs, common)
    population = PopulationTrainer([t for _, _, t in built])
    for k, (cfg, _, _) in enumerate(built):
        g, d, _ = run.build_networks(cfg)  # a fresh solo build
        mirror = population.sync_to_solo(k)
        for mine, solo in ((mirror.g, g), (mirror.d, d)):
            for (name, a), (_, b) in zip(mine.state_dict().items(), solo.state_dict().items()):
                assert torch.equal(a, b), (model, k, name)


CASES = {
    "mlp-adam": ["model=mlp"],
    "mlp-sgd-spectral": [
        "model=mlp",
        "model.g_norm=none",
        "model.d_norm=spectral",
        "trainer.optimizer=sgd",
    ],
    "mlp_deep": ["model=mlp_deep"],
    "dcgan-batch": pytest.param(["model=dcgan"], marks=pytest.mark.slow),
    "dcgan-sgd-spectral": pytest.param(
        ["model=dcgan", "model.d_norm=spectral", "trainer.optimizer=sgd"], marks=pytest.mark.slow
    ),
}
ARMS_AND_SEEDS = [
    ["init=default", "seed=0"],
    ["init=default", "seed=1"],
    ["init=he_xavier", "seed=0"],
    ["init=he_xavier", "seed=1"],
]


@pytest.mark.parametrize("common", CASES.values(), ids=CASES.keys())
def test_a_population_of_four_follows_its_four_solo_runs(tmp_path, common):
    schedule = Schedule(50, log_every=10, sample_every=25, diag_every=20)
    solo_sinks = []
    for _, _, trainer in members(tmp_path / "solo", ARMS_AND_SEEDS, common):
        solo_sinks.append(Sink())
        trainer.run(schedule, solo_sinks[-1], progress=False)
        solo_sinks[-1].state = (trainer.rng.get_state(), trainer.order.clone(), trainer.cursor)
    built = members(tmp_path / "population", ARMS_AND_SEEDS, common)
    sinks = [Sink() for _ in built]
    results = PopulationTrainer([t for _, _, t in built]).run(schedule, sinks, NoEvents(), NoBar())
    assert [r.status for r in results] == ["finished"] * 4
    for (_, _, trainer), sink, solo in zip(built, sinks, solo_sinks):
        rng, order, cursor = solo.state  # the same batches and noise were drawn
        assert torch.equal(trainer.rng.get_state(), rng) and torch.equal(trainer.order, order)
        assert trainer.cursor == cursor
        assert_close_runs(sink.rows, solo.rows)


def test_a_members_solo_view_holds_exactly_its_stacked_state(tmp_path):
    built = members(tmp_path, ARMS_AND_SEEDS[:2], ["model.d_norm=spectral"])
    population = PopulationTrainer([t for *_, t in built])
    population.run(
        Schedule(7, log_every=7, sample_every=100, diag_every=3), [Sink()] * 2, NoEvents(), NoBar()
    )
    for k in range(2):
        solo = population.sync_to_solo(k)
        for stacked, opt, net in (
            (population.g_opt, solo.g_opt, solo.g),
            (population.d_opt, solo.d_opt, solo.d),
        ):
            for p, transposed, mine in zip(stacked.params, stacked.transposed, net.parameters()):
                want = p[k].T if transposed else p[k]
                assert torch.equal(mine, want)
                for key, value in opt.state[mine].items():
                    state = stacked.opt.state[p][key]
                    if value.dim():  # a fused optimizer walks state and weight in one order
                        assert value.is_contiguous() and value.shape == mine.shape
                        assert torch.equal(value, state[k].T if transposed else state[k])


def test_a_bf16_population_follows_its_solo_runs(tmp_path):
    # Short: on a CPU without native bf16 (AVX2 only) bf16 is emulated and slow.
    common = ["trainer.precision=bf16"]
    schedule = Schedule(10, log_every=5, sample_every=100, diag_every=5)
    jobs = ARMS_AND_SEEDS[1:3]
    solo_sinks = []
    for _, env, trainer in members(tmp_path / "solo", jobs, common):
        assert env.precision == "bf16"
        solo_sinks.append(Sink())
        trainer.run(schedule, solo_sinks[-1], progress=False)
    built = members(tmp_path / "population", jobs, common)
    sinks = [Sink() for _ in built]
    population = PopulationTrainer([t for _, _, t in built])
    assert population.bf16
    population.run(schedule, sinks, NoEvents(), NoBar())
    for sink, solo in zip(sinks, solo_sinks):
        assert_close_runs(sink.rows, solo.rows)


DIVERGING = ["init=normal_large", "init.std=1e30", "seed=5"]


def test_a_diverging_member_is_recorded_at_its_solo_step_and_leaves_the_others_alone(tmp_path):
    schedule = Schedule(30, log_every=5, sample_every=100)
    healthy = [["init=he_xavier", "seed=0"], ["init=he_xavier", "seed=1"]]
    ((_, _, alone),) = members(tmp_path / "solo", [DIVERGING], [])
    solo_result = alone.run(schedule, Sink(), progress=False)
    assert solo_result.status == "diverged"

    without = [Sink(), Sink()]
    PopulationTrainer([t for *_, t in members(tmp_path / "a", healthy, [])]).run(
        schedule, without, NoEvents(), NoBar()
    )
    sinks = [Sink(), Sink(), Sink()]
    built = members(tmp_path / "b", [healthy[0], DIVERGING, healthy[1]], [])
    population = PopulationTrainer([t for *_, t in built])
    results = population.run(schedule, sinks, NoEvents(), NoBar())

    assert [r.status for r in results] == ["finished", "diverged", "finished"]
    assert results[1].diverged_step == solo_result.diverged_step
    assert sinks[1].rows[-1][1] == {"diverged": True, "diverged_step": solo_result.diverged_step}
    assert_close_runs(sinks[0].rows, without[0].rows)
    assert_close_runs(sinks[2].rows, without[1].rows)
    # Once frozen, the diverged member's parameters stop moving (NaN and inf included).
    before = [p.clone() for p in parameters(population.sync_to_solo(1))]
    population.run(Schedule(35, log_every=5, sample_every=100), [Sink()] * 3, NoEvents(), NoBar())
    after = parameters(population.sync_to_solo(1))
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, after))


def test_a_member_that_diverged_mid_window_is_frozen_before_evaluation_as_its_solo_run(tmp_path):
    # Evaluation every 3 steps, windows of 10: the solo run closes its window early to record
    # the divergence; in the population only that member is recorded, the others' windows go on.
    schedule = Schedule(20, log_every=10, sample_every=100, eval_every=3)
    ((_, _, alone),) = members(tmp_path / "solo", [DIVERGING], [])
    solo_sink = Sink()
    solo_result = alone.run(schedule, solo_sink, progress=False)
    assert solo_result.status == "diverged" and solo_result.step % 10

    class Evaluations(NoEvents):
        evaluated: list[list[int]] = []

        def evaluate(self, step, trainer, members):
            self.evaluated.append(list(members))

    healthy = ["init=he_xavier", "seed=0"]
    without = Sink()
    PopulationTrainer([t for *_, t in members(tmp_path / "a", [healthy], [])]).run(
        schedule, [without], NoEvents(), NoBar()
    )
    sinks = [Sink(), Sink()]
    built = members(tmp_path / "b", [healthy, DIVERGING], [])
    results = PopulationTrainer([t for *_, t in built]).run(schedule, sinks, Evaluations(), NoBar())
    assert (results[1].status, results[1].step) == ("diverged", solo_result.step)
    assert results[1].diverged_step == solo_result.diverged_step
    assert sinks[1].rows[-1] == solo_sink.rows[-1]
    assert all(1 not in evaluated for evaluated in Evaluations.evaluated)
    assert [step for step, _ in sinks[0].rows] == [10, 20, 20]  # its two windows, its samples
    assert_close_runs(sinks[0].rows, without.rows)


def test_a_dcgan_member_resumes_alone_with_its_moments_laid_out_as_its_weights(tmp_path):
    # A member's moments are saved contiguous; its solo resume lays out the convolutions'
    # weights channels_last, and a fused step pairs weights and moments by storage order
    # (tests/test_trainer.py: test_loaded_moments_follow_their_weights_layout).
    ((cfg, env, _),) = built = members(tmp_path / "p", [["seed=0"]], ["model=dcgan"])
    population = PopulationTrainer([t for *_, t in built])
    population.run(Schedule(3, log_every=3, sample_every=100), [Sink()], NoEvents(), NoBar())
    saved = copy.deepcopy(population.sync_to_solo(0).state_dict())
    images, _ = run.load_data(cfg, env.device, progress=False)
    solo, _ = run.build_trainer(cfg, env, images)
    solo.load_state_dict(copy.deepcopy(saved))
    checked = 0
    for opt, key in ((solo.g_opt, "g_opt"), (solo.d_opt, "d_opt")):
        for i, param in enumerate(opt.param_groups[0]["params"]):
            for name, moment in opt.state[param].items():
                if moment.dim():
                    assert moment.stride() == param.stride(), (key, i, name)
                    assert torch.equal(moment, saved[key]["state"][i][name])
                    checked += param.dim() == 4 and not param.is_contiguous()
    assert checked  # channels_last weights were among them


def parameters(trainer) -> list[torch.Tensor]:
    return [p.detach() for p in (*trainer.g.parameters(), *trainer.d.parameters())]


@pytest.mark.parametrize(
    "override,key",
    [("trainer.compile=true", "trainer.compile"), ("trainer.channels_last=on", "channels_last")],
)
def test_options_a_population_cannot_honour_make_the_job_invalid(tmp_path, override, key):
    cfg = run_config([override], tmp_path / "run")
    with enrollment.gathering() as gathered, pytest.raises(UserError, match=key):
        run.run(cfg, progress=False)
    assert gathered == [] and not (tmp_path / "run").exists()


def test_jobs_are_grouped_by_all_but_arm_and_seed_and_cut_to_size(tmp_path, monkeypatch):
    from gan.population import launcher
    from gan.population.run import populations

    jobs = [
        ["init=default", "seed=0"],
        ["init=he_xavier", "seed=0"],
        ["seed=1"],
        ["trainer.lr=1e-3"],
    ]
    enrolled = [enrollment.Enrolled(cfg, env, None) for cfg, env, _ in members(tmp_path, jobs, [])]
    groups = populations(enrolled, max_members=2)
    assert [[e.cfg.seed for e in g] for g in groups] == [[0, 0], [1], [0]]
    assert groups[2][0].cfg.trainer.lr == 1e-3  # another lr: a population of its own
    # Resumed at one step: one stopped there with its window open, one that finished there.
    stopped, finished = {"step": 20, "window_steps": 5}, {"step": 20, "window_steps": 0}
    resumed = [
        dataclasses.replace(e, env=dataclasses.replace(e.env, resumed={"trainer": trainer}))
        for e, trainer in zip(enrolled, (stopped, finished))
    ]
    assert [len(g) for g in populations(resumed, max_members=2)] == [1, 1]
    solos = [t for *_, t in members(tmp_path / "apart", [["seed=0"], ["seed=1"]], [])]
    solos[1].window_steps = 1
    with pytest.raises(ValueError, match="one open window"):
        PopulationTrainer(solos)

    # Sized to memory: room for exactly 3 members' planned tensors at memory_fraction 0.5.
    per_member = launcher.member_bytes(enrolled[0].cfg)
    monkeypatch.setattr(launcher, "free_bytes", lambda device: 2 * 3 * per_member)
    fitted = launcher.PopulationLauncher(max_members=64)._fit(enrolled[:3] * 2, processes=1)
    assert [len(p) for p in fitted] == [3, 3]
    # Three populations at once share that room: one member each.
    fitted = launcher.PopulationLauncher(max_members=64)._fit(enrolled[:3] * 2, processes=3)
    assert [len(p) for p in fitted] == [1] * 6


def test_a_cpu_population_is_sized_to_available_memory_within_its_cgroups(tmp_path):
    from gan.population import launcher

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemFree: 1000 kB\nMemAvailable: 6000000 kB\n")
    assert launcher._available_memory(meminfo) == 6000000 * 1024  # the page cache counts

    def cgroup(directory: Path, limit: str, usage: int, stat: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        names = (
            ("memory.max", "memory.current")
            if "v2" in directory.parts
            else (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        )
        (directory / names[0]).write_text(f"{limit}\n")
        (directory / names[1]).write_text(f"{usage}\n")
        (directory / "memory.stat").write_text(stat)

    # cgroup v1, no namespace (a SLURM job): the job's limit, two levels above the process.
    v1, own = tmp_path / "v1", tmp_path / "cgroup"
    own.write_text("4:memory:/slurm/job_7/step_0\n3:cpu:/\n0::/\n")
    cgroup(v1 / "memory" / "slurm" / "job_7" / "step_0", "9223372036854771712", 10**9, "")
    cgroup(v1 / "memory" / "slurm" / "job_7", "4000000000", 3 * 10**9, "total_inactive_file 10")
    cgroup(v1 / "memory" / "slurm", "9223372036854771712", 5 * 10**9, "")
    # Its usage counts page cache it can drop: not taken as used.
    assert launcher._cgroup_room(v1, own) == 4 * 10**9 - (3 * 10**9 - 10)
    # cgroup v2 in a container (its own cgroup at the mount's top), page cache in its usage.
    v2 = tmp_path / "v2"
    own.write_text("0::/\n")
    cgroup(v2, "3000000000", 2 * 10**9, "anon 1\ninactive_file 500000000\n")
    assert launcher._cgroup_room(v2, own) == 15 * 10**8
    (v2 / "memory.max").write_text("max\n")  # no limit
    assert launcher._cgroup_room(v2, own) == 1 << 62
    assert launcher._cgroup_room(v2, tmp_path / "none") == 1 << 62  # no /proc/self/cgroup


def in_process_sweep(tmp_path, monkeypatch, train) -> tuple[list, list, list]:
    """Three one-member populations, launched in this process with ``train`` standing in for
    ``workers.train``: (the groups trained, all groups, each member's return value)."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from gan.population import launcher, workers

    trained = []

    def recording(group, progress=True):
        trained.append(group)
        return train(group)

    monkeypatch.setattr(workers, "train", recording)
    groups = []
    for i in range(3):
        (tmp_path / f"job{i}").mkdir()
        groups.append([SimpleNamespace(cfg=SimpleNamespace(out_dir=tmp_path / f"job{i}"))])
    enrolled = {"status": enrollment.ENROLLED}  # what each job's task returned meanwhile
    returns = {
        id(m): JobReturn(status=JobStatus.COMPLETED, _return_value=enrolled)
        for g in groups
        for m in g
    }
    sweep = launcher.PopulationLauncher(n_jobs=1)
    sweep.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweep._train_all(groups, 1, returns)
    return trained, groups, [returns[id(g[0])].return_value for g in groups]


def test_a_signal_as_a_population_ends_starts_no_other_in_the_sweeps_process(tmp_path, monkeypatch):
    from gan.population.workers import FINISHED, Outcome

    def finished_as_signalled(group):  # the signal came after the last step
        return Outcome(FINISHED, [{"status": "finished"}], signum=signal.SIGTERM)

    trained, groups, values = in_process_sweep(tmp_path, monkeypatch, finished_as_signalled)
    assert trained == groups[:1] and values[0] == {"status": "finished"}
    assert sweeps.stop_request(tmp_path)["signal"] == signal.SIGTERM
    assert not (tmp_path / "job1").exists()  # not started: Hydra's empty directory removed


def test_a_stopping_sweep_starts_no_population_in_its_own_process(tmp_path, monkeypatch):
    sweeps.request_stop(tmp_path, signal.SIGTERM, "a test")
    trained, _, _ = in_process_sweep(tmp_path, monkeypatch, lambda group: None)
    assert trained == []


def test_members_stopped_at_once_return_the_summaries_they_wrote(tmp_path, monkeypatch):
    from gan.population.workers import PREEMPTED, Outcome

    def stopped_at_once(group):  # a second signal: the summaries are on disk, none sent back
        record.Summary(group[0].cfg.out_dir).write({"status": "preempted", "steps": 20})
        return Outcome(PREEMPTED, signum=signal.SIGTERM)

    trained, _, values = in_process_sweep(tmp_path, monkeypatch, stopped_at_once)
    assert len(trained) == 1 and values[0] == {"status": "preempted", "steps": 20}
    assert sweeps.stop_request(tmp_path)["signal"] == signal.SIGTERM


@pytest.mark.parametrize("error", [signals.Interrupted(signal.SIGTERM), RuntimeError("boom")])
def test_a_member_that_diverged_keeps_its_result_when_the_population_stops_later(tmp_path, error):
    from gan.population.run import Member, _record_failure
    from gan.trainer import TrainResult

    members = []
    for name in ("diverged", "healthy"):
        out_dir = tmp_path / name
        out_dir.mkdir()
        (out_dir / record.METRICS_FILE).write_text("")
        cfg = SimpleNamespace(out_dir=out_dir, run_name=name)
        members.append(
            Member(
                cfg,
                SimpleNamespace(resumed=None),
                summary={"status": "running"},
                saved={"step": 20},
            )
        )
    diverged = TrainResult(Ending.diverged, 15, 1.5, {}, diverged_step=12)
    trainer = SimpleNamespace(results=[diverged, None], step=30)
    _record_failure(members, trainer, error)
    gone, healthy = (record.Summary(m.cfg.out_dir).read() for m in members)
    assert (gone["status"], gone["steps"], gone["diverged_step"]) == ("diverged", 15, 12)
    assert gone["outcome"] == "diverged"
    want = "preempted" if isinstance(error, signals.Interrupted) else "failed"
    assert healthy["status"] == want


def test_a_failed_population_reports_a_diverged_members_result_not_a_failure(tmp_path):
    from gan.population.launcher import failed_summary

    record.Summary(tmp_path).write({"status": "diverged", "steps": 15})
    assert failed_summary(tmp_path, RuntimeError("boom")) == {"status": "diverged", "steps": 15}
    record.Summary(tmp_path).write({"status": "running", "steps": 15})
    assert failed_summary(tmp_path, RuntimeError("boom"))["status"] == "failed"


def test_a_signal_after_a_populations_last_step_comes_back_with_its_outcome(tmp_path, monkeypatch):
    import os

    from gan.population import workers

    (cfg, env, _), *_ = members(tmp_path, [["trainer.threads=1"]], [])

    def run_population(group, progress, on_steps):  # its training over, a signal arrives
        with signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
        return [{"status": "finished"}]

    monkeypatch.setattr(workers, "run_population", run_population)
    with torch_threads():
        outcome = workers.train([enrollment.Enrolled(cfg, env, None)])
    assert (outcome.status, outcome.signum) == (workers.FINISHED, signal.SIGTERM)
    assert outcome.summaries == [{"status": "finished"}]


def test_a_population_trains_at_its_members_thread_count(tmp_path, monkeypatch):
    from gan.population import workers

    (cfg, env, _), *_ = members(tmp_path, [["trainer.threads=1"]], [])
    seen = []

    def run_population(group, progress, on_steps):
        seen.append(torch.get_num_threads())
        return [{"status": "finished"}]

    monkeypatch.setattr(workers, "run_population", run_population)
    with torch_threads(2):  # another job's count, left by the process
        outcome = workers.train([enrollment.Enrolled(cfg, env, None)])
    assert seen == [1] and outcome.status == workers.FINISHED


def test_populations_are_halved_until_every_worker_has_one(tmp_path, monkeypatch):
    from gan.population import launcher

    groups = [list(range(16)), list(range(3))]
    assert [len(g) for g in launcher.spread(groups, 1)] == [16, 3]
    assert [len(g) for g in launcher.spread(groups, 3)] == [8, 8, 3]
    assert [len(g) for g in launcher.spread(groups, 4)] == [4, 4, 8, 3]
    assert [len(g) for g in launcher.spread([[0, 1]], 4)] == [1, 1]  # a member is not split
    assert sorted(sum(launcher.spread(groups, 5), [])) == sorted(sum(groups, []))

    # n_jobs unset: one population per trainer.threads cores on a CPU.
    (cfg, env, _), *_ = members(tmp_path, [["trainer.threads=1"]], [])
    enrolled = [enrollment.Enrolled(cfg, env, None)]
    monkeypatch.setattr(launcher, "cpu_cores", lambda: 8)
    assert launcher.PopulationLauncher()._processes(enrolled) == 8
    assert launcher.PopulationLauncher(n_jobs=3)._processes(enrolled) == 3
    two = dataclasses.replace(env, threads=2)
    assert launcher.PopulationLauncher()._processes([enrollment.Enrolled(cfg, two, None)]) == 4


@pytest.mark.parametrize("option", [{"n_jobs": 0}, {"max_members": 0}, {"memory_fraction": 2}])
def test_bad_launcher_options_are_refused_by_name(option):
    from gan.population import launcher

    with pytest.raises(UserError, match=f"hydra.launcher.{next(iter(option))}"):
        launcher.PopulationLauncher(**option)


def test_convolutions_are_cut_into_calls_of_a_few_members_only_on_a_one_thread_cpu():
    cpu = torch.device("cpu")
    with torch_threads(1):
        assert stacking.conv_chunk(34, cpu) == stacking.CPU_CONV_MEMBERS
        assert stacking.conv_chunk(3, cpu) == 3
    with torch_threads(2):
        assert stacking.conv_chunk(34, cpu) == 34
        assert stacking.conv_chunk(34, torch.device("meta")) == 34


def test_a_convolution_cut_into_several_calls_computes_each_members_own_function(monkeypatch):
    monkeypatch.setattr(stacking, "CPU_CONV_MEMBERS", 2)  # 3 members: calls of 2 and 1
    with torch_threads(1):
        check_stacked_against_solos(preset(ModelConfig, "model", "dcgan"))


TINY = [
    "trainer.steps=4",
    "trainer.log_every=2",
    "trainer.sample_every=100",
    "trainer.diag_every=0",
    "trainer.eval_every=0",
    "trainer.ckpt_every=0",
    "logger.mode=disabled",
    "trainer.threads=1",
]


def test_a_member_whose_directory_is_not_this_process_s_is_left_out_alone(tmp_path):
    from gan import files
    from gan.population.run import run_population

    built = members(tmp_path, [["seed=0"], ["seed=1"], ["seed=2"]], TINY)
    taken, unwritable = built[1][0].out_dir, built[2][0].out_dir
    unwritable.write_text("a file where the run directory would be")
    with files.claimed(taken):  # another sweep's process is training this job
        claim = (taken / files.CLAIM_FILE).read_bytes()
        with torch_threads():
            summaries = run_population(
                [enrollment.Enrolled(cfg, env, None) for cfg, env, _ in built], progress=False
            )
        assert (taken / files.CLAIM_FILE).read_bytes() == claim  # still the other process's
    # As in a solo sweep: the taken job's summary is its process's, the other one is invalid.
    assert summaries[1] is None and not (taken / record.SUMMARY_FILE).exists()
    assert summaries[2]["status"] == "invalid" and "cannot be written" in summaries[2]["error"]
    assert (summaries[0]["status"], summaries[0]["population"]) == ("finished", 1)
    assert record.Summary(built[0][0].out_dir).read() == summaries[0]


def test_a_member_refused_at_its_build_is_invalid_alone_and_keeps_its_run_unchanged(
    tmp_path, caplog
):
    from gan.population.run import run_population

    caplog.set_level(logging.INFO, logger="gan")  # as a worker logs

    built = members(tmp_path, [["seed=0"], ["seed=1"], ["seed=2"]], TINY)
    accepted = []
    enrolled = [
        enrollment.Enrolled(cfg, env, lambda name=cfg.run_name: accepted.append(name))
        for cfg, env, _ in built
    ]
    # Member 1 resumes a checkpoint whose trainer state this version cannot load.
    unloadable = dataclasses.replace(built[1][1], resumed={"trainer": {}, "rng": {}, "best": {}})
    enrolled[1] = dataclasses.replace(enrolled[1], env=unloadable)
    with torch_threads():
        summaries = run_population(enrolled, progress=False)
    refused = summaries[1]
    assert refused["status"] == "invalid" and "does not hold the state" in refused["error"]
    assert [(s["status"], s["population"]) for s in (summaries[0], summaries[2])] == [
        ("finished", 2),
        ("finished", 2),
    ]
    assert accepted == [built[0][0].run_name, built[2][0].run_name]  # never member 1's
    assert "does not hold the state" in (built[1][0].out_dir / record.LOG_FILE).read_text()
    for cfg, _, _ in (built[0], built[2]):  # each member's log ends with its result, as solo
        assert f"done {cfg.run_name}: 4 steps" in (cfg.out_dir / record.LOG_FILE).read_text()


def test_a_members_divergence_is_on_disk_before_the_population_ends(tmp_path, monkeypatch):
    # A worker killed later must not leave it "running", to be trained again by a rerun.
    from gan.population import run as population_run

    built = members(tmp_path, [["seed=0"], DIVERGING], TINY)
    seen = {}
    checkpoint = population_run.MemberEvents.checkpoint

    def checkpoint_and_look(self, step, active):
        seen[step] = record.Summary(built[1][0].out_dir).read()
        checkpoint(self, step, active)

    monkeypatch.setattr(population_run.MemberEvents, "checkpoint", checkpoint_and_look)
    with torch_threads():
        summaries = population_run.run_population(
            [enrollment.Enrolled(cfg, env, None) for cfg, env, _ in built], progress=False
        )
    assert summaries[1]["status"] == "diverged"
    assert seen[4] == summaries[1]  # at the last step's checkpoint, the others still training


def test_a_population_whose_data_cannot_load_records_every_member_invalid(tmp_path):
    from gan.population.run import run_population

    jobs = [["seed=0", "trainer.batch_size=5000"], ["seed=1", "trainer.batch_size=5000"]]
    configs = [run_config([*TINY, *job], tmp_path / f"m{i}") for i, job in enumerate(jobs)]
    enrolled = [enrollment.Enrolled(cfg, run.prepare(cfg), None) for cfg in configs]
    summaries = run_population(enrolled, progress=False)
    assert [s["status"] for s in summaries] == ["invalid", "invalid"]
    assert all("exceeds the 1437 training images" in s["error"] for s in summaries)
    assert all(record.Summary(cfg.out_dir).read() == s for cfg, s in zip(configs, summaries))


def full_disk_for(monkeypatch, run_name: str, status: str | None = None) -> None:
    """Every write of ``run_name``'s summary (with ``status``, if given) fails: a full disk."""
    write = record.Summary.write

    def full_disk(self, summary):
        if summary["run_name"] == run_name and status in (None, summary["status"]):
            raise OSError(28, "No space left on device")
        write(self, summary)

    monkeypatch.setattr(record.Summary, "write", full_disk)


def three_members(tmp_path):
    from gan.population.run import Member

    built = members(tmp_path, [["seed=0"], ["seed=1"], ["seed=2"]], TINY)
    for cfg, _, _ in built:
        cfg.out_dir.mkdir(parents=True)
    return [Member(cfg, env, trainer) for cfg, env, trainer in built]


def test_a_failed_start_summary_write_fails_every_member_not_leaves_one_running(
    tmp_path, monkeypatch
):
    from gan.population.run import train_members

    pop = three_members(tmp_path)
    full_disk_for(monkeypatch, pop[1].cfg.run_name)  # its failure is not written either
    with pytest.raises(OSError), signals.stop_on_signals() as asked:
        train_members(pop, asked, progress=False)
    for m in (pop[0], pop[2]):
        summary = record.Summary(m.cfg.out_dir).read()
        assert (summary["status"], summary["steps"]) == ("failed", 0)
        assert "No space left on device" in summary["error"]


def test_a_failed_final_summary_write_leaves_the_other_members_results(tmp_path, monkeypatch):
    from gan.population.run import train_members

    pop = three_members(tmp_path)
    full_disk_for(monkeypatch, pop[1].cfg.run_name, status="finished")
    with torch_threads(), pytest.raises(OSError), signals.stop_on_signals() as asked:
        train_members(pop, asked, progress=False)
    for m in (pop[0], pop[2]):
        assert record.Summary(m.cfg.out_dir).read()["status"] == "finished"
    assert record.Summary(pop[1].cfg.out_dir).read()["status"] == "running"  # killed, to a sweep


def test_a_job_another_launch_finished_since_its_enrollment_is_kept_not_trained(tmp_path):
    from contextlib import ExitStack

    from gan import files
    from gan.population.run import accept

    finished = {"status": "finished", "steps": 40, "run_name": "theirs"}
    record.Summary(tmp_path).write(finished)
    accepted = []
    job = enrollment.Enrolled(SimpleNamespace(out_dir=tmp_path), None, lambda: accepted.append(1))
    with ExitStack() as claims:
        assert accept(job, claims) == finished
        assert not (tmp_path / files.CLAIM_FILE).exists()  # released at once
    assert accepted == [] and record.Summary(tmp_path).read() == finished


def test_a_workers_steps_reach_the_sweeps_bar_and_its_outcome_ends_the_reading():
    import multiprocessing

    from gan.population import workers

    theirs, ours = multiprocessing.Pipe()
    sent = workers.StepsSent(workers.WorkerPipe(theirs), every=3600)
    sent.add(6)
    assert not ours.poll()  # held back until its interval passed
    sent.add(3)
    sent.send()
    worker = workers.Worker.__new__(workers.Worker)  # its reading only, no process spawned
    worker.conn, worker.process = ours, SimpleNamespace(is_alive=lambda: True)
    told = []
    assert worker.read(told.append) is None and told == [9]
    theirs.send_bytes(workers._pickled(workers.Outcome(workers.FINISHED, [{"status": "x"}])))
    assert worker.read(told.append).summaries == [{"status": "x"}]

    def sends_its_outcome_and_exits():  # while the parent looks: gone, its Outcome sent
        theirs.send_bytes(workers._pickled(workers.Outcome(workers.FINISHED, [{"status": "y"}])))
        return False

    worker.process = SimpleNamespace(
        is_alive=sends_its_outcome_and_exits, join=lambda: None, exitcode=0
    )
    assert worker.read(told.append).summaries == [{"status": "y"}]

    theirs.close()  # exited without an Outcome: killed
    worker.process = SimpleNamespace(is_alive=lambda: False, join=lambda: None, exitcode=-9)
    assert worker.read(told.append).status == workers.KILLED
    to_nobody, gone = multiprocessing.Pipe()
    gone.close()  # the sweep's process is gone: nothing raised, its watchdog stops the job
    workers.StepsSent(workers.WorkerPipe(to_nobody), every=0).add(1)


@pytest.mark.parametrize("worker_does", ["dies-first", "reads-late", "dies-reading"])
def test_a_big_group_never_blocks_or_breaks_the_sweep_as_its_worker_starts(
    worker_does, monkeypatch
):
    # A resumed group (its checkpoints) is more than a pipe holds; the worker reads it only once
    # it has imported torch, or dies before, or while it reads. None of it stops the sweep's
    # process or raises in it, and the worker is closed while the group may still be in flight.
    import multiprocessing
    import os
    import threading

    from gan.population import workers

    raised = []
    monkeypatch.setattr(threading, "excepthook", raised.append)

    class Process:  # a spawned worker, played in this process: its end of the pipe is ``kept``
        def __init__(self, target, args, name):
            self.child, self.exitcode, self.kept = args[0], -9, None

        def start(self):
            if worker_does != "dies-first":
                self.kept = multiprocessing.connection.Connection(os.dup(self.child.fileno()))

        def is_alive(self):
            return worker_does == "reads-late"

        def join(self):
            if worker_does == "dies-reading" and not self.kept.closed:
                os.read(self.kept.fileno(), 1 << 20)  # a part of the group, then it dies
                self.kept.close()

    context = SimpleNamespace(Pipe=multiprocessing.Pipe, Process=Process)
    group = [b"\0" * (8 << 20)]  # 8 MiB: past any pipe's buffer
    made = []
    starting = threading.Thread(target=lambda: made.append(workers.Worker(context, None, group)))
    starting.start()
    starting.join(timeout=30)
    assert made, "the sweep's process waited for its worker to read"
    (worker,) = made
    if worker_does == "reads-late":
        assert pickle.loads(worker.process.kept.recv_bytes()) == group  # whole, when it reads
    else:
        assert worker.read(lambda steps: None).status == workers.KILLED
    worker.close()  # the group's thread ended too
    assert not worker.sender.is_alive() and raised == []


def test_a_workers_console_lines_reach_the_sweeps_terminal_whole_and_above_its_bar(capsys):
    import multiprocessing

    from gan.population import workers

    theirs, ours = multiprocessing.Pipe()
    pipe = workers.WorkerPipe(theirs)
    out, err = workers.PipedStream(pipe, workers.STDOUT), workers.PipedStream(pipe, workers.STDERR)
    out.write("population of 2 (mlp on cpu)\ndone ")
    err.write("warning: a member diverged\n")
    assert ours.poll()  # whole lines at once; "done " waits for its end
    out.write("s0")
    out.finish()  # the last line goes, even without its end
    worker = workers.Worker.__new__(workers.Worker)  # its reading only, no process spawned
    worker.conn, worker.process = ours, SimpleNamespace(is_alive=lambda: True)
    assert worker.read(lambda count: None) is None
    printed = capsys.readouterr()
    assert printed.out == "population of 2 (mlp on cpu)\ndone s0\n"
    assert printed.err == "warning: a member diverged\n"
    out.own, err.own = io.StringIO(), io.StringIO()  # the worker's own streams
    out.write("after its Outcome\n")  # finished: to its own stream, not the pipe
    assert not ours.poll() and out.own.getvalue() == "after its Outcome\n"
    ours.close()
    err.write("the sweep is gone\n")  # best-effort: its own stream, nothing raised
    assert err.own.getvalue() == "the sweep is gone\n"


def test_a_worker_is_read_to_its_outcome_when_the_terminal_is_gone_or_its_message_cut(monkeypatch):
    import multiprocessing

    from gan.population import workers

    def gone(text, stream):
        raise BrokenPipeError("the terminal's pipe is closed")

    monkeypatch.setattr(workers, "write_above_bars", gone)
    theirs, ours = multiprocessing.Pipe()
    pipe = workers.WorkerPipe(theirs)
    pipe.send(workers.Text(workers.STDOUT, "a line nobody sees\n"))
    pipe.send_bytes(workers._pickled(workers.Outcome(workers.FINISHED, [{"status": "x"}])))
    worker = workers.Worker.__new__(workers.Worker)  # its reading only, no process spawned
    worker.conn, worker.process = ours, SimpleNamespace(is_alive=lambda: False)
    assert worker.read(lambda count: None).summaries == [{"status": "x"}]

    theirs.send_bytes(b"not a pickle")  # a message cut short: the worker is stopped, not trusted
    stopped = []
    worker.process = SimpleNamespace(
        is_alive=lambda: True, terminate=lambda: stopped.append(1), join=lambda: None, exitcode=-15
    )
    assert worker.read(lambda count: None).status == workers.KILLED and stopped == [1]
    assert ours.closed  # read no further, so that a worker writing on cannot block its exit
