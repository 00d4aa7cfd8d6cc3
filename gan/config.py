"""Typed run configuration, built once from a plain mapping (Hydra's resolved config).

The YAML files in ``conf/`` are the one source of every default: these dataclasses have none, so a
key missing from the YAML is an error here rather than a silent second default. Library code takes
these objects (or plain arguments), never a DictConfig. Every check on user input that can be made
before touching data happens here, with a message naming the key and the valid values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gan.errors import UserError
from gan.init import Scheme
from gan.init_options import NETWORKS, check_parameters, resolve_scheme
from gan.typed import build, coerce


def _conf_dir() -> Path:
    """The YAML files: ``gan/conf`` in an installed wheel (pyproject.toml maps the checkout's
    top-level ``conf/`` there), ``conf/`` beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(
        f"gan-init's configs are missing: neither {here / 'conf'} nor "
        f"{here.parent / 'conf'} holds config.yaml; reinstall the package"
    )


CONF_DIR = _conf_dir()  # the one owner of the configs' location: every default lives there


def _hydra_run_dir(resume: str | None, new_run: str, stamp: str) -> str:
    """Hydra's directory for this invocation: ``new_run`` for a new run; for ``resume=DIR``, a
    record of the invocation inside DIR (``DIR/resumes/<stamp>``), so that resuming neither
    leaves a stray directory under outputs/ nor lets Hydra overwrite DIR's own .hydra files
    before the resume has been accepted."""
    return new_run if resume is None else str(Path(resume) / "resumes" / stamp)


if not OmegaConf.has_resolver("gan_run_dir"):  # conf/config.yaml: hydra.run.dir
    OmegaConf.register_new_resolver("gan_run_dir", _hydra_run_dir)

LOGGER_MODES = ("auto", "online", "offline", "disabled")
WANDB_TAG_LENGTH = 64  # W&B's limit: a longer tag fails the run when W&B starts
SWEEP_TAG_PREFIX = "sweep:"  # the W&B tag every job of one sweep shares: sweep:<sweep id>
PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST_SETTINGS = CUDA_GRAPH_SETTINGS = ("auto", "on", "off")
G_NORMS = ("batch", "none")  # the generator's normalization (model.g_norm)
D_NORMS = ("none", "batch", "spectral")  # the discriminator's (model.d_norm)
OPTIMIZERS = ("adam", "sgd")  # trainer.optimizer, for both networks


@dataclass(frozen=True)
class DataConfig:
    name: str  # digits | mnist | fashion_mnist
    root: Path  # data_dir: datasets and feature classifiers are stored here
    download_timeout: float  # seconds per network operation; a download never hangs
    offline_dir: Path | None  # a local copy of the dataset's files (Debian's package), if any

    def __post_init__(self) -> None:
        _positive(self, "download_timeout", "dataset")


@dataclass(frozen=True)
class ModelConfig:
    name: str  # mlp | dcgan
    z_dim: int
    slope: float  # Leaky ReLU negative slope
    generator_widths: tuple[int, ...]
    discriminator_widths: tuple[int, ...]
    g_norm: str  # one of G_NORMS
    d_norm: str  # one of D_NORMS

    def __post_init__(self) -> None:
        _positive(self, "z_dim", "model")
        _one_of(self, "g_norm", G_NORMS, "model")
        _one_of(self, "d_norm", D_NORMS, "model")
        if not 0 <= self.slope < 1:
            raise UserError(f"model.slope must be in [0, 1), got {self.slope}")
        for key in ("generator_widths", "discriminator_widths"):
            widths = getattr(self, key)
            if not widths or any(w <= 0 for w in widths):
                raise UserError(
                    f"model.{key} must be a non-empty list of positive sizes, got {list(widths)}"
                )


@dataclass(frozen=True)
class TrainerConfig:
    steps: int
    batch_size: int
    lr: float
    betas: tuple[float, float]  # Adam's
    optimizer: str  # one of OPTIMIZERS
    default_lr: Mapping[str, float]  # per optimizer: what lr resolves to unless set (the YAML)
    momentum: float  # SGD's
    log_every: int  # metrics are averaged over this many steps
    sample_every: int  # sample grid from fixed noise
    diag_every: int  # per-layer diagnostics (0: off)
    eval_every: int  # FCD and class coverage (0: off); also at the end
    ckpt_every: int  # checkpoint period (0: only at the end and on SIGINT/SIGTERM)
    device: str  # auto | cpu | cuda | cuda:N
    threads: int  # torch CPU threads (0: torch's default)
    channels_last: str  # one of CHANNELS_LAST_SETTINGS
    compile: bool  # torch.compile G and D
    cuda_graph: str  # one of CUDA_GRAPH_SETTINGS: the step replayed from a CUDA graph
    precision: str  # one of PRECISIONS

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "lr", "log_every", "sample_every"):
            _positive(self, key, "trainer")
        if self.batch_size < 2:
            raise UserError(
                "trainer.batch_size must be >= 2: BatchNorm needs two samples per batch"
            )
        for key, zero in (
            ("ckpt_every", "only at the end and on preemption"),
            ("eval_every", "turns evaluation off"),
            ("diag_every", "turns diagnostics off"),
            ("threads", "torch's default"),
        ):
            if getattr(self, key) < 0:
                raise UserError(f"trainer.{key} must be >= 0 (0: {zero}), got {getattr(self, key)}")
        for key, valid in (
            ("channels_last", CHANNELS_LAST_SETTINGS),
            ("cuda_graph", CUDA_GRAPH_SETTINGS),
            ("precision", PRECISIONS),  # the one check of its name
            ("optimizer", OPTIMIZERS),
        ):
            _one_of(self, key, valid, "trainer")
        if set(self.default_lr) != set(OPTIMIZERS) or not all(
            lr > 0 for lr in self.default_lr.values()
        ):
            raise UserError(
                f"trainer.default_lr must give each of {', '.join(OPTIMIZERS)} a learning rate "
                f"> 0, got {dict(self.default_lr)}"
            )
        if not 0 <= self.momentum < 1:
            raise UserError(f"trainer.momentum must be in [0, 1), got {self.momentum}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"trainer.betas must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int  # generated images per evaluation (at most the test split's size)
    batch_size: int

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise UserError(
                "eval.num_samples must be >= 2 (a covariance needs two samples), "
                f"got {self.num_samples}"
            )
        _positive(self, "batch_size", "eval")


@dataclass(frozen=True)
class LoggerConfig:
    mode: str  # one of LOGGER_MODES
    project: str
    entity: str | None
    group: str | None  # None: the init arm
    tags: tuple[str, ...]
    job_type: str
    sweep_id: str | None  # shared by every job of a sweep (a tag): None = the sweep dir's name
    log_artifacts: bool  # the final checkpoint and the feature classifier as W&B artifacts

    def __post_init__(self) -> None:
        _one_of(self, "mode", LOGGER_MODES, "logger")
        if not self.project:
            raise UserError("logger.project must not be empty")
        long = [t for t in self.tags if len(str(t)) > WANDB_TAG_LENGTH]
        if long:
            raise UserError(
                f"logger.tags: W&B refuses tags longer than {WANDB_TAG_LENGTH} characters, and "
                f"{str(long[0])[:80]!r} has {len(str(long[0]))}; shorten it"
            )
        w_and_b = self.mode != "disabled"
        if w_and_b and self.sweep_tag and len(self.sweep_tag) > WANDB_TAG_LENGTH:
            raise UserError(
                f"logger.sweep_id: the W&B tag {self.sweep_tag[:80]!r} would have "
                f"{len(self.sweep_tag)} characters, and W&B refuses more than {WANDB_TAG_LENGTH}; "
                "set a shorter logger.sweep_id (by default the sweep directory's last two names)"
            )

    @property
    def sweep_tag(self) -> str | None:
        """The tag every job of one sweep shares."""
        return f"{SWEEP_TAG_PREFIX}{self.sweep_id}" if self.sweep_id else None


@dataclass(frozen=True)
class InitConfig:
    arm: str  # the ablation arm's name, e.g. he_xavier or he_xavier,discriminator=default
    generator: Scheme
    discriminator: Scheme


@dataclass(frozen=True)
class RunConfig:
    seed: int
    out_dir: Path
    data: DataConfig
    model: ModelConfig
    init: InitConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    eval: EvalConfig
    resume: bool  # continue the run in out_dir from its checkpoint
    resolved: Mapping[str, Any] = dataclasses.field(compare=False)  # for W&B's config
    # This job's own Hydra overrides (in a multirun, not the whole sweep's), for W&B.
    overrides: tuple[str, ...] = dataclasses.field(compare=False)

    @property
    def run_name(self) -> str:
        """``<arm>-<model>-<dataset>-s<seed>``, after ``<setting>/`` for a named setting (as
        its W&B group): an atlas runs every arm and seed once per setting."""
        name = f"{self.init.arm}-{self.model.name}-{self.data.name}-s{self.seed}"
        return f"{self.setting}/{name}" if self.setting else name

    @property
    def setting(self) -> str | None:
        return setting_name(self.overrides)

    @property
    def wandb_group(self) -> str:
        """``logger.group``, else the arm after what makes its setting: the named setting and the
        overrides that make one (``mlp_g_none/he_xavier``, ``model=dcgan/he_xavier``). W&B
        averages the runs of a group, and runs of different settings must never be pooled."""
        if self.logger.group:
            return self.logger.group
        label = ",".join([*filter(None, [self.setting]), *setting_overrides(self.overrides)])
        return f"{label}/{self.init.arm}" if label else self.init.arm


def setting_name(overrides: Sequence[str]) -> str | None:
    """The named setting (``setting=NAME``, conf/setting/) among a run's overrides, if any."""
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("setting=")]
    return names[-1] if names else None


def setting_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides besides ``setting=`` and ``experiment=`` (a sweep's preset) that change a
    run's setting (``model=dcgan``, ``trainer.lr=0.001``; not ``seed=3`` or ``init=…``)."""
    quiet = (*not_setting(), "setting", "experiment")
    return [o for o in overrides if not among(o.lstrip("+~").split("=", 1)[0], quiet)]


def among(key: str, keys: Sequence[str]) -> bool:
    """Whether the dotted ``key`` is one of ``keys`` or lies inside one (a section's key)."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


# --------------------------------------------------------------------------------------------
# What a key is besides its value: whether a resume may change it, whether it makes the setting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUse:
    resumable: bool  # a resumed run may change it and still continue the same run
    setting: bool  # it changes what a run measures: runs that differ in it are other settings


# The keys of the resolved config that a resumed run may change or that make no setting, each
# declared once (a section's name covers its every key); every other key is part of the
# experiment, fixed on resume, and of its setting. resume_may_change() and not_setting() list
# them in this order.
KEY_USES = {
    # The run's length and periods. The evaluation period decides which FCDs a run has.
    "trainer.steps": KeyUse(resumable=True, setting=True),
    "trainer.sample_every": KeyUse(resumable=True, setting=False),
    "trainer.diag_every": KeyUse(resumable=True, setting=False),
    "trainer.eval_every": KeyUse(resumable=True, setting=True),
    "trainer.ckpt_every": KeyUse(resumable=True, setting=False),
    # Where and how it computes. threads and precision may change on resume as settings only:
    # what they resolve to (torch's CPU threads, the precision) must stay, as both change the
    # numbers (gan.run checks); the report reads the resolved precision from summary.json.
    "trainer.threads": KeyUse(resumable=True, setting=False),
    "trainer.device": KeyUse(resumable=True, setting=False),
    "trainer.precision": KeyUse(resumable=True, setting=False),
    "trainer.cuda_graph": KeyUse(resumable=True, setting=False),  # the same math, replayed
    "eval.batch_size": KeyUse(resumable=True, setting=False),
    # Paths and logging.
    "data_dir": KeyUse(resumable=True, setting=False),
    "logger": KeyUse(resumable=True, setting=False),
    # Fixed on resume, yet no setting: the init arm is compared within a setting and the seed
    # repeats it; default_lr gives way to the resolved trainer.lr; the rest are speed knobs,
    # download details and the logging window (a checkpoint carries its open window).
    "init": KeyUse(resumable=False, setting=False),
    "seed": KeyUse(resumable=False, setting=False),
    "resume": KeyUse(resumable=False, setting=False),
    "dataset.download_timeout": KeyUse(resumable=False, setting=False),
    "dataset.offline_dir": KeyUse(resumable=False, setting=False),
    "trainer.default_lr": KeyUse(resumable=False, setting=False),
    "trainer.channels_last": KeyUse(resumable=False, setting=False),
    "trainer.compile": KeyUse(resumable=False, setting=False),
    "trainer.log_every": KeyUse(resumable=False, setting=False),
}
SECTIONS = ("dataset", "model", "init", "trainer", "logger", "eval")  # the config's mappings


def resume_may_change() -> tuple[str, ...]:
    """Dotted prefixes of the keys a resumed run may change; a section's ends with a dot, so
    that it matches its own keys only."""
    return tuple(
        f"{key}." if key in SECTIONS else key for key, use in KEY_USES.items() if use.resumable
    )


def not_setting() -> tuple[str, ...]:
    """The keys (a section: its every key) that do not change what a run measures."""
    return tuple(key for key, use in KEY_USES.items() if not use.setting)


def _one_of(obj: Any, key: str, valid: Sequence[str], group: str) -> None:
    value = getattr(obj, key)
    if value not in valid:
        raise UserError(f"{group}.{key} must be one of {', '.join(valid)}, got {value!r}")


def _positive(obj: Any, key: str, group: str) -> None:
    value = getattr(obj, key)
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"{group}.{key} must be > 0, got {value}")


# --------------------------------------------------------------------------------------------
# The YAML's defaults as typed objects (gan.typed builds them)
# --------------------------------------------------------------------------------------------


def preset(cls: type, group: str, option: str | None = None, **extra: Any) -> Any:
    """The YAML's defaults as a typed object, for library use without Hydra: one option of a
    config group, read from ``conf/<group>/<option>.yaml`` (``preset(ModelConfig, "model",
    "dcgan")`` is what ``model=dcgan`` builds), or without ``option`` a section of
    ``conf/config.yaml`` (``preset(TrainerConfig, "trainer")``). ``extra`` sets keys: ones that
    live outside the group (``root`` for a dataset), or changes (``batch_size=16``), which the
    section's interpolations follow (``optimizer="sgd"`` gets SGD's ``lr``)."""
    if option is None:
        return build(cls, _section(group, extra), group)
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        valid = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise UserError(f"unknown {group} {option!r}; valid: {valid}")
    return build(cls, {**OmegaConf.to_container(OmegaConf.load(path)), **extra}, group)


def entry_default(key: str) -> Any:
    """A top-level value of conf/config.yaml (``seed``, ``data_dir``), for tools' defaults."""
    entry = OmegaConf.load(CONF_DIR / "config.yaml")
    if key not in entry or isinstance(entry.get(key), Mapping):
        raise KeyError(f"conf/config.yaml has no top-level value {key!r}")
    return entry[key]


def _section(key: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Section ``key`` of conf/config.yaml with ``changes``, its interpolations resolved."""
    entry = OmegaConf.load(CONF_DIR / "config.yaml")
    if not isinstance(entry.get(key), Mapping):
        valid = ", ".join(k for k in SECTIONS if k in entry)
        raise UserError(f"conf/config.yaml has no section {key!r}; valid: {valid}")
    section = OmegaConf.to_container(entry[key])  # interpolations kept, as written
    changed = OmegaConf.create({key: {**section, **changes}})
    return OmegaConf.to_container(changed[key], resolve=True)


# --------------------------------------------------------------------------------------------
# The init arm (schemes by name: gan.init_options)
# --------------------------------------------------------------------------------------------


def arm_name(init_choice: str, init_overrides: list[str]) -> str:
    """``he_xavier``, or ``he_xavier,discriminator=default`` when init.* was overridden."""
    extras = [o.lstrip("+~").removeprefix("init.") for o in init_overrides]
    return ",".join([init_choice, *extras])


def _check_finite(tree: Any, key: str) -> None:
    """Refuses an infinite or NaN number under ``key`` (``init.std=inf``): the run would only
    diverge, and look like a result of the arm."""
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            _check_finite(value, f"{key}.{name}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _check_finite(value, f"{key}[{i}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise UserError(f"{key} must be a finite number, got {tree}; give it a finite value")


def run_config(
    cfg: Mapping[str, Any],
    *,
    out_dir: Path,
    init_choice: str,
    init_overrides: list[str],
    overrides: Sequence[str] = (),
    scheme_dir: Path,
) -> RunConfig:
    """The typed run configuration from Hydra's resolved config (a plain mapping)."""
    known = {"seed", "data_dir", "resume", *SECTIONS}
    unknown = set(cfg) - known
    if unknown:
        raise UserError(f"unknown top-level key(s) {sorted(unknown)}; valid: {sorted(known)}")
    seed = coerce(cfg.get("seed"), int, "seed")
    if not 0 <= seed < 2**64:  # torch.manual_seed's range
        raise UserError(f"seed must be in [0, 2**64), got {seed}")
    if not str(cfg.get("data_dir") or "").strip():
        raise UserError("data_dir must not be empty (it would silently mean the current directory)")
    init_cfg = cfg.get("init") or {}
    # Besides the two networks, an init option may hold scalar parameters (dist, gain, std…) that
    # its sections use through ${init.<name>}; a mapping under any other key is a typo.
    stray = [k for k, v in init_cfg.items() if k not in NETWORKS and isinstance(v, (Mapping, list))]
    if stray:
        raise UserError(f"unknown section(s) in init: {stray}; valid: {list(NETWORKS)}")
    check_parameters(init_cfg, init_choice, scheme_dir)
    _check_finite(init_cfg, "init")
    schemes = {
        net: resolve_scheme(init_cfg.get(net, init_choice), net, scheme_dir, init_choice)
        for net in NETWORKS
    }
    data = dict(cfg.get("dataset") or {})
    data["root"] = cfg.get("data_dir")
    logger = build(LoggerConfig, cfg.get("logger") or {}, "logger")
    return RunConfig(
        seed=seed,
        out_dir=Path(out_dir),
        data=build(DataConfig, data, "dataset"),
        model=build(ModelConfig, cfg.get("model") or {}, "model"),
        init=InitConfig(arm=arm_name(init_choice, init_overrides), **schemes),
        trainer=build(TrainerConfig, cfg.get("trainer") or {}, "trainer"),
        logger=logger,
        eval=build(EvalConfig, cfg.get("eval") or {}, "eval"),
        resume=cfg.get("resume") is not None,
        resolved={k: v for k, v in cfg.items() if k != "resume"},
        overrides=tuple(overrides),
    )
