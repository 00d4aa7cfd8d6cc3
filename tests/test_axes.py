"""The setting axes: G and D normalization, the optimizer, the deep preset and the named settings
(conf/setting/): what each builds, that the defaults are today's networks, and bad values."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF_DIR, run_config
from gan import nets
from gan.config import D_NORMS, G_NORMS, OPTIMIZERS, ModelConfig, TrainerConfig, preset
from gan.errors import UserError
from gan.init import trainable_weight
from gan.run import build_networks
from gan.schedule import Schedule
from gan.trainer import GANTrainer

IMAGE = (1, 8, 8)


def settings() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "setting").glob("*.yaml"))


def spectral_layers(net: nn.Module) -> list[str]:
    return [
        path
        for path, m in net.named_modules()
        if torch.nn.utils.parametrize.is_parametrized(m, "weight")
    ]


@pytest.mark.parametrize("model", nets.MODELS)  # every model, a new one included
def test_the_builders_take_every_default_from_the_yaml(model):
    # No keyword default restates conf/model/<model>.yaml: a library caller builds with preset.
    builder = nets.architecture(model).builder
    parameters = inspect.signature(builder).parameters.values()
    assert [p.name for p in parameters if p.default is not p.empty] == []
    cfg = preset(ModelConfig, "model", model)
    torch.manual_seed(0)
    via_config = nets.build(cfg, IMAGE)
    torch.manual_seed(0)
    norms = {"g_norm": cfg.g_norm, "d_norm": cfg.d_norm}
    plain = builder(
        IMAGE, cfg.z_dim, cfg.generator_widths, cfg.discriminator_widths, cfg.slope, **norms
    )
    for a, b in zip(via_config, plain):
        assert [n for n, _ in a.named_modules()] == [n for n, _ in b.named_modules()]
        assert all(
            torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values())
        )


@pytest.mark.parametrize("model", nets.MODELS)
@pytest.mark.parametrize("d_norm", D_NORMS)
def test_spectral_norm_sits_on_every_discriminator_weight_layer_and_nowhere_else(model, d_norm):
    cfg = dataclasses.replace(preset(ModelConfig, "model", model), d_norm=d_norm)
    g, d = nets.build(cfg, IMAGE)
    weighted = [p for p, m in d.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert spectral_layers(d) == (weighted if d_norm == "spectral" else [])
    assert spectral_layers(g) == []


def test_the_deep_preset_is_deep_narrow_and_unnormalized():
    cfg = preset(ModelConfig, "model", "mlp_deep")
    g, d = nets.build(cfg, IMAGE)
    for net, widths in ((g, cfg.generator_widths), (d, cfg.discriminator_widths)):
        assert len(widths) >= 6 and max(widths) <= 128
        assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules())


def test_every_setting_is_a_valid_run_config(tmp_path):
    seen = set()
    for name in settings():
        cfg = run_config([f"setting={name}"], tmp_path)
        m, t = cfg.model, cfg.trainer
        seen.add((m.name, m.g_norm, m.d_norm, m.generator_widths, t.optimizer, t.lr))
        assert t.lr == t.default_lr[t.optimizer]
    assert len(seen) == len(settings()), "two settings are the same run"
    assert run_config(["setting=mlp"], tmp_path).model == run_config([], tmp_path).model


def test_the_learning_rate_follows_the_optimizer_unless_set(tmp_path):
    default_lr = OmegaConf.load(CONF_DIR / "config.yaml").trainer.default_lr
    assert run_config([], tmp_path).trainer.lr == default_lr.adam == 2e-4  # as it always was
    assert run_config(["trainer.optimizer=sgd"], tmp_path).trainer.lr == default_lr.sgd
    assert run_config(["trainer.optimizer=sgd", "trainer.lr=0.3"], tmp_path).trainer.lr == 0.3
    assert (
        run_config(["trainer.default_lr.sgd=0.2", "trainer.optimizer=sgd"], tmp_path).trainer.lr
        == 0.2
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.g_norm=layer", "model.g_norm must be one of batch, none, got 'layer'"),
        ("model.d_norm=weight", "model.d_norm must be one of none, batch, spectral, got 'weight'"),
        ("trainer.optimizer=rmsprop", "trainer.optimizer must be one of adam, sgd, got 'rmsprop'"),
        ("trainer.momentum=1", r"trainer.momentum must be in \[0, 1\), got 1"),
        ("trainer.momentum=-0.1", r"trainer.momentum must be in \[0, 1\)"),
        ("trainer.default_lr.sgd=0", "trainer.default_lr must give each of adam, sgd a learning"),
        ("+trainer.default_lr.rmsprop=1", "trainer.default_lr must give each of adam, sgd"),
    ],
)
def test_bad_values_are_errors_naming_the_key_and_the_valid_ones(override, message, tmp_path):
    with pytest.raises(UserError, match=message):
        run_config([override], tmp_path)


def test_an_unknown_setting_lists_the_valid_ones(tmp_path):
    # Hydra's own message for an option that is not a file, as for model= or init=.
    with pytest.raises(MissingConfigException, match=r"(?s)'setting/mlp_gnone'.*mlp_g_none"):
        run_config(["setting=mlp_gnone"], tmp_path)


def test_the_lists_of_valid_values_are_the_documented_ones():
    assert (G_NORMS, D_NORMS, OPTIMIZERS) == (
        ("batch", "none"),
        ("none", "batch", "spectral"),
        ("adam", "sgd"),
    )


SMALL = ["model.generator_widths=[32,64]", "model.discriminator_widths=[64,32]"]


def _trainer(overrides: list[str], tmp_path) -> GANTrainer:
    cfg = run_config(["init=he_xavier", *overrides], tmp_path)
    g, d, _ = build_networks(cfg)
    images = torch.rand(128, *IMAGE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    section = dataclasses.replace(cfg.trainer, batch_size=16)
    return GANTrainer(g, d, images, section, seed=0, precision="fp32")


def test_the_optimizer_is_the_one_asked_for(tmp_path):
    adam = _trainer(SMALL, tmp_path)
    assert isinstance(adam.d_opt, torch.optim.Adam)
    assert adam.d_opt.defaults["betas"] == (0.5, 0.999) and adam.d_opt.defaults["lr"] == 2e-4
    sgd = _trainer(["trainer.optimizer=sgd", "trainer.momentum=0.7", *SMALL], tmp_path)
    assert isinstance(sgd.g_opt, torch.optim.SGD) and sgd.g_opt.defaults["momentum"] == 0.7
    assert sgd.g_opt.defaults["weight_decay"] == 0 and not sgd.g_opt.defaults["nesterov"]


def test_the_trainer_reads_its_section_and_the_preset_is_the_yamls():
    g, d = nets.build(preset(ModelConfig, "model", "mlp"), IMAGE)
    section = preset(TrainerConfig, "trainer", batch_size=8, betas=[0.5, 0.9], momentum=0.5)
    trainer = GANTrainer(g, d, torch.zeros(32, *IMAGE), section, seed=0, precision="fp32")
    assert isinstance(trainer.g_opt, torch.optim.Adam) and trainer.batch_size == 8
    assert trainer.g_opt.defaults["betas"] == (0.5, 0.9) and trainer.g_opt.defaults["lr"] == 2e-4
    sgd = preset(TrainerConfig, "trainer", optimizer="sgd", momentum=0.5)
    assert sgd.lr == sgd.default_lr["sgd"] == 0.05  # the lr follows the optimizer, as in a run
    trainer = GANTrainer(g, d, torch.zeros(32, *IMAGE), sgd, seed=0, precision="fp32")
    assert isinstance(trainer.d_opt, torch.optim.SGD) and trainer.d_opt.defaults["momentum"] == 0.5
    assert trainer.d_opt.defaults["lr"] == 0.05


@pytest.mark.parametrize("setting", settings())
def test_every_setting_trains_a_few_steps_with_diagnostics(setting, tmp_path):
    trainer = _trainer([f"setting={setting}"], tmp_path)
    schedule = Schedule(steps=2, log_every=2, sample_every=100, diag_every=1)
    logged = []

    class Sink:
        def log(self, step, metrics):
            logged.append(metrics)

        def log_samples(self, step, images):
            pass

        def log_diagnostics(self, step, values, samples):
            logged.append(values)

    result = trainer.run(schedule, Sink(), progress=False)
    assert result.status == "finished" and result.step == 2
    assert all(math.isfinite(v) for values in logged for v in values.values())
    diag = {k for values in logged for k in values if k.startswith("diag/D/")}
    weighted = [p for p, m in trainer.d.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in weighted:  # under spectral norm too: weight and gradient of the trained tensor
        assert {f"diag/D/{layer}/weight_std", f"diag/D/{layer}/grad_norm"} <= diag


def test_diagnostics_do_not_move_spectral_norms_power_iteration(tmp_path):
    # Reading layer.weight in training mode would advance u and v: recording must read the
    # original instead, so that a diagnosed run trains exactly as an undiagnosed one.
    overrides = ["model.d_norm=spectral", "model.g_norm=none", *SMALL]
    plain, watched = _trainer(overrides, tmp_path), _trainer(overrides, tmp_path)
    diagnostics = watched.layer_diagnostics()
    for _ in range(3):
        plain._step(plain._next_batch())
        with diagnostics.recording():
            watched._step(watched._next_batch(), eager=True)
        plain.window_steps = watched.window_steps = 0
    assert diagnostics.results()["diag/D/fc1/grad_norm"] > 0
    for a, b in ((plain.d, watched.d), (plain.g, watched.g)):
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(p, q), name
    assert trainable_weight(watched.d.fc1) is watched.d.fc1.parametrizations.weight.original


def test_a_spectral_norm_trainer_resumes_exactly(tmp_path):
    overrides = ["model.d_norm=spectral", "trainer.optimizer=sgd", *SMALL]
    straight, first = _trainer(overrides, tmp_path), _trainer(overrides, tmp_path)
    for _ in range(2):
        straight._step(straight._next_batch())
        first._step(first._next_batch())
    resumed = _trainer(overrides, tmp_path)
    resumed.load_state_dict(first.state_dict())
    for _ in range(2):
        straight._step(straight._next_batch())
        resumed._step(resumed._next_batch())
    for (name, p), (_, q) in zip(straight.d.state_dict().items(), resumed.d.state_dict().items()):
        assert torch.equal(p, q), name  # u and v included
