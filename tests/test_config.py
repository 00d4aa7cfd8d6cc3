"""Every config option composes and builds; bad values are clear errors naming the key."""

from __future__ import annotations

import itertools

import pytest

from conftest import CONF_DIR, run_config
from gan import config, data, nets
from gan.config import LoggerConfig, ModelConfig
from gan.errors import UserError
from gan.run import build_networks


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_have_the_public_options():
    assert {"default", "he_xavier"} <= set(options("init"))
    assert {"dcgan", "mlp", "mlp_deep"} <= set(options("model"))
    assert options("model") == sorted(nets.MODELS)  # each YAML has its architecture, and back
    assert options("dataset") == ["digits", "fashion_mnist", "mnist"]


@pytest.mark.parametrize(
    ("init", "model", "dataset"),
    # every init option on both models, and every model × dataset
    sorted(
        {
            *itertools.product(options("init"), options("model"), ["digits"]),
            *itertools.product(["he_xavier"], options("model"), options("dataset")),
        }
    ),
)
def test_every_option_composes_and_builds(init, model, dataset, tmp_path):
    cfg = run_config([f"init={init}", f"model={model}", f"dataset={dataset}"], tmp_path)
    assert (cfg.init.arm, cfg.model.name, cfg.data.name) == (init, model, dataset)
    assert cfg.run_name == f"{init}-{model}-{dataset}-s0"
    g, d, records = build_networks(cfg)
    z = g(__import__("torch").randn(2, cfg.model.z_dim))
    assert tuple(z.shape[1:]) == data.image_shape(dataset)
    assert d(z).shape == (2, 1)
    assert len(records) == len(list(g.parameters())) + len(list(d.parameters()))


def test_run_config_is_typed(tmp_path):
    cfg = run_config(["trainer.steps=10", "trainer.lr=0.001", "logger.tags=[a,b]"], tmp_path)
    assert cfg.trainer.steps == 10 and cfg.trainer.lr == 0.001 and cfg.trainer.betas == (0.5, 0.999)
    assert cfg.logger.tags == ("a", "b") and cfg.model.generator_widths == (128, 256, 512, 1024)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.batch_size=0", "trainer.batch_size must be > 0, got 0"),
        ("trainer.batch_size=1", "trainer.batch_size must be >= 2: BatchNorm needs two samples"),
        ("eval.num_samples=1", r"eval.num_samples must be >= 2 \(a covariance needs two samples\)"),
        ("trainer.lr=-0.1", "trainer.lr must be > 0"),
        ("trainer.steps=abc", "trainer.steps must be an integer, got 'abc'"),
        ("trainer.betas=[0.5]", "trainer.betas must have 2 items"),
        ("model.slope=1.5", r"model.slope must be in \[0, 1\)"),
        ("model.generator_widths=[]", "model.generator_widths must be a non-empty list"),
        ("trainer.precision=fp16", "trainer.precision must be one of auto, fp32, bf16, got 'fp16'"),
        ("trainer.compile=yes", "trainer.compile must be bool, got 'yes'"),
        ("trainer.cuda_graph=maybe", "trainer.cuda_graph must be one of auto, on, off"),
        ("trainer.cuda_graph=false", "trainer.cuda_graph must be a word, got the boolean False"),
        ("logger.mode=cloud", "logger.mode must be one of auto, online, offline, disabled"),
        ("seed=-1", r"seed must be in \[0, 2\*\*64\), got -1"),
        ("seed=18446744073709551616", r"seed must be in \[0, 2\*\*64\)"),
        ("data_dir=''", "data_dir must not be empty"),
        ("+init.std=0.1", r"init=he_xavier has no parameter std \(its parameters: none\)"),
        ("+init.foo=1", "init=he_xavier has no parameter foo"),
        (
            "init.discriminator=he_xavir",
            r"unknown init scheme 'he_xavir'; valid: .*default, .*he_xavier",
        ),
        ("init.generator.weights.tanh.gain=-1", "gain must be a number > 0 or 'auto'"),
        ("+init.generator.weights.selu=xavier_normal", r"unknown activation\(s\) \['selu'\]"),
    ],
)
def test_bad_values_are_errors_naming_the_key(override, message, tmp_path):
    with pytest.raises(UserError, match=message):
        run_config(["init=he_xavier", override], tmp_path)


def test_a_scheme_s_dist_is_refused_by_its_own_name(tmp_path):
    # Not as the unknown rule 'xavier_gaussian' it would otherwise make.
    with pytest.raises(UserError, match="init.dist must be one of normal, uniform, trunc_normal"):
        run_config(["init=xavier", "init.dist=gaussian"], tmp_path)


def test_dcgan_refuses_an_image_side_its_stages_cannot_halve():
    with pytest.raises(UserError, match="side is divisible by 8; got 28×28"):
        nets.build(ModelConfig("dcgan", 8, 0.2, (8, 8, 8), (8,), "batch", "batch"), (1, 28, 28))


def test_the_wandb_sweep_file_calls_train_py_with_valid_overrides(tmp_path):
    import yaml

    sweep = yaml.safe_load((CONF_DIR.parent / "sweep.yaml").read_text())
    assert sweep["program"] == "train.py" and "${args_no_hyphens}" in sweep["command"]
    params = sweep["parameters"]
    grid = itertools.product(
        *[
            [(k, v) for v in (p["values"] if "values" in p else [p["value"]])]
            for k, p in params.items()
        ]
    )
    for combo in grid:  # each agent run gets `key=value` overrides: every one must compose
        cfg = run_config([f"{k}={v}" for k, v in combo], tmp_path)
        assert (cfg.init.arm, cfg.seed) == (dict(combo)["init"], dict(combo)["seed"])


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    """Every job of every sweep preset builds a valid RunConfig: a typo in a sweep list fails
    here, not after the first job of a long sweep."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    parsed = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in params["hydra"]["sweeper"]["params"].items()]
    )
    axes = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    # Seeds compose alike: the first and the last stand for all (the atlas has 17 per cell).
    axes = [sorted({a[0], a[-1]}) if a[0].startswith("seed=") else a for a in axes]
    jobs = list(itertools.product(*axes))
    assert len(jobs) >= 2
    for job in jobs:
        cfg = run_config([f"experiment={experiment}", *job], tmp_path)
        assert cfg.init.arm == dict(o.split("=", 1) for o in job).get("init", cfg.init.arm)


# The two lists as they were written by hand, in run.py and report.py, before KEY_USES.
RESUME_MAY_CHANGE_BEFORE = (
    "trainer.steps",
    "trainer.sample_every",
    "trainer.diag_every",
    "trainer.eval_every",
    "trainer.ckpt_every",
    "trainer.threads",
    "trainer.device",
    "trainer.precision",
    "trainer.cuda_graph",
    "eval.batch_size",
    "data_dir",
    "logger.",
)
NOT_SETTING_BEFORE = (
    "init",
    "seed",
    "logger",
    "data_dir",
    "resume",
    "eval.batch_size",
    "dataset.download_timeout",
    "dataset.offline_dir",
    "trainer.default_lr",
    "trainer.device",
    "trainer.threads",
    "trainer.channels_last",
    "trainer.compile",
    "trainer.precision",
    "trainer.cuda_graph",
    "trainer.log_every",
    "trainer.sample_every",
    "trainer.diag_every",
    "trainer.ckpt_every",
)


def test_the_lists_derived_from_the_key_uses_are_the_hand_kept_ones():
    from gan import resume
    from gan.report import runs

    # In order: a refused resume names the keys that may change in this order.
    assert config.resume_may_change() == resume.RESUME_MAY_CHANGE == RESUME_MAY_CHANGE_BEFORE
    # Matched with any(): the order does not matter, each key counts once.
    assert runs.NOT_SETTING == config.not_setting()
    assert sorted(config.not_setting()) == sorted(NOT_SETTING_BEFORE)
    assert len(set(config.not_setting())) == len(NOT_SETTING_BEFORE)


def test_every_declared_key_is_a_key_of_the_config(tmp_path):
    resolved = run_config([], tmp_path).resolved
    flat = {"resume"}  # in .hydra/config.yaml, not in the resolved config a run keeps
    for section, values in resolved.items():
        flat |= {f"{section}.{k}" for k in values} if isinstance(values, dict) else {section}
    stale = [k for k in config.KEY_USES if k not in flat and k not in config.SECTIONS]
    assert stale == []
    assert set(config.SECTIONS) == {k for k, v in resolved.items() if isinstance(v, dict)}


@pytest.mark.parametrize(
    ("cls", "section"),
    [
        (config.TrainerConfig, "trainer"),
        (config.EvalConfig, "eval"),
        (config.LoggerConfig, "logger"),
    ],
)
def test_a_preset_section_is_what_a_run_without_overrides_gets(cls, section, tmp_path):
    cfg = run_config([], tmp_path)
    assert config.preset(cls, section) == getattr(cfg, section)


def test_a_preset_section_takes_changes_and_refuses_what_is_no_section():
    trainer = config.preset(config.TrainerConfig, "trainer", optimizer="sgd", steps=7)
    assert (trainer.optimizer, trainer.lr, trainer.steps) == ("sgd", 0.05, 7)
    assert config.preset(config.TrainerConfig, "trainer", optimizer="sgd", lr=0.1).lr == 0.1
    with pytest.raises(UserError, match="no section 'model'; valid: trainer, logger, eval"):
        config.preset(config.ModelConfig, "model")
    with pytest.raises(UserError, match="trainer.batch_size must be >= 2"):
        config.preset(config.TrainerConfig, "trainer", batch_size=1)


def test_a_sweep_id_too_long_for_a_wandb_tag_matters_only_when_wandb_starts():
    def logger(mode: str) -> LoggerConfig:
        return LoggerConfig(mode, "p", None, None, (), "train", "s" * 60, False)

    assert logger("disabled").sweep_tag == "sweep:" + "s" * 60  # never sent to W&B
    with pytest.raises(UserError, match="set a shorter logger.sweep_id"):
        logger("offline")
