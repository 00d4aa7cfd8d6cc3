"""Typed run configuration, built once from a plain mapping (Hydra's resolved config).

Library code takes these objects (or plain arguments), never a DictConfig. Every check on user
input that can be made before touching data happens here, with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan.errors import UserError
from gan.init import Scheme
from gan.trainer import CHANNELS_LAST_SETTINGS, check_precision_name

NETWORKS = ("generator", "discriminator")
LOGGER_MODES = ("auto", "online", "offline", "disabled")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | mnist | fashion_mnist
    root: Path = Path("data")
    download_timeout: float = 60.0  # seconds per network operation; a download never hangs
    offline_dir: Path = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist

    def __post_init__(self) -> None:
        _positive(self, "download_timeout", "dataset")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # mlp | dcgan
    z_dim: int = 100
    slope: float = 0.2  # Leaky ReLU negative slope
    generator_widths: tuple[int, ...] = (128, 256, 512, 1024)
    discriminator_widths: tuple[int, ...] = (512, 256)

    def __post_init__(self) -> None:
        _positive(self, "z_dim", "model")
        if not 0 <= self.slope < 1:
            raise UserError(f"model.slope must be in [0, 1), got {self.slope}")
        for key in ("generator_widths", "discriminator_widths"):
            widths = getattr(self, key)
            if not widths or any(w <= 0 for w in widths):
                raise UserError(f"model.{key} must be a non-empty list of positive sizes, got {list(widths)}")


@dataclass(frozen=True)
class TrainerConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    log_every: int = 50  # metrics are averaged over this many steps
    sample_every: int = 500  # sample grid from fixed noise
    diag_every: int = 500  # per-layer diagnostics (0: off)
    threads: int = 0  # torch CPU threads (0: torch's default); 1 for parallel local jobs
    channels_last: str = "auto"  # auto (on for dcgan) | on | off
    compile: bool = False  # torch.compile G and D (slower on 2 CPU cores: see README "Speed")
    precision: str = "fp32"  # fp32 | bf16 (autocast; for GPUs / CPUs with native bf16)
    eval_every: int = 1000  # FCD and class coverage (0: off); also at the end
    ckpt_every: int = 1000  # checkpoint period (0: only at the end and on SIGINT/SIGTERM)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "lr", "log_every", "sample_every"):
            _positive(self, key, "trainer")
        if self.batch_size < 2:
            raise UserError("trainer.batch_size must be >= 2: BatchNorm needs two samples per batch")
        if self.ckpt_every < 0:
            raise UserError(f"trainer.ckpt_every must be >= 0 (0: only at the end and on preemption), got {self.ckpt_every}")
        if self.eval_every < 0:
            raise UserError(f"trainer.eval_every must be >= 0 (0 turns evaluation off), got {self.eval_every}")
        if self.channels_last not in CHANNELS_LAST_SETTINGS:
            raise UserError(f"trainer.channels_last must be auto, on or off, got {self.channels_last!r}")
        check_precision_name(self.precision)
        if self.threads < 0:
            raise UserError(f"trainer.threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.diag_every < 0:
            raise UserError(f"trainer.diag_every must be >= 0 (0 turns diagnostics off), got {self.diag_every}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"trainer.betas must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 10_000  # generated images per evaluation (at most the test split's size)
    batch_size: int = 1000

    def __post_init__(self) -> None:
        if self.num_samples < 2:
            raise UserError(f"eval.num_samples must be >= 2 (a covariance needs two samples), got {self.num_samples}")
        _positive(self, "batch_size", "eval")


@dataclass(frozen=True)
class LoggerConfig:
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "gan-init"
    entity: str | None = None
    group: str | None = None  # None: the init arm
    tags: tuple[str, ...] = ()
    job_type: str = "train"
    sweep_id: str | None = None  # shared by every job of a sweep (a tag): None = the sweep dir's name

    def __post_init__(self) -> None:
        if self.mode not in LOGGER_MODES:
            raise UserError(f"logger.mode must be one of {', '.join(LOGGER_MODES)}, got {self.mode!r}")
        if not self.project:
            raise UserError("logger.project must not be empty")


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
    eval: EvalConfig = field(default_factory=EvalConfig)
    resume: bool = False  # continue the run in out_dir from its checkpoint
    resolved: Mapping[str, Any] = field(default_factory=dict, compare=False)  # for W&B's config

    @property
    def run_name(self) -> str:
        return f"{self.init.arm}-{self.model.name}-{self.data.name}-s{self.seed}"


def _positive(obj: Any, key: str, group: str) -> None:
    value = getattr(obj, key)
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"{group}.{key} must be > 0, got {value}")


# --------------------------------------------------------------------------------------------
# Plain mapping → typed objects
# --------------------------------------------------------------------------------------------


# Scalar field type → (accepted YAML values, how the error names it); bools are handled apart,
# since isinstance(True, int) holds.
_SCALARS = {int: (int, "an integer"), float: ((int, float), "a number"), str: (str, "a string"),
            Path: ((str, Path), "a path")}


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _coerce(value, kind, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        if args[-1] is Ellipsis:
            item_kinds = (args[0],) * len(value)
        elif len(value) == len(args):
            item_kinds = args
        else:
            raise UserError(f"{where} must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(v, k, f"{where}[{i}]") for i, (v, k) in enumerate(zip(value, item_kinds)))
    if kind is bool or isinstance(value, bool):
        if kind is not bool or not isinstance(value, bool):
            raise UserError(f"{where} must be {kind.__name__}, got {value!r}")
        return value
    accepted, noun = _SCALARS[kind]
    if not isinstance(value, accepted):
        raise UserError(f"{where} must be {noun}, got {value!r}")
    return kind(value)


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Constructs dataclass ``cls`` from ``data``, checking unknown keys and every type."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown key(s) in {where}: {sorted(unknown)}; valid: {sorted(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


# --------------------------------------------------------------------------------------------
# Init schemes by name
# --------------------------------------------------------------------------------------------


def scheme_names(scheme_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(scheme_dir).glob("*.yaml"))


def load_init_file(name: str, scheme_dir: Path) -> dict[str, Any]:
    """The mapping in ``<scheme_dir>/<name>.yaml`` (one ``init=`` option), its own parameters
    (such as ``dist``, used as ``${init.dist}``) resolved."""
    path = Path(scheme_dir) / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        raise UserError(
            f"unknown init scheme {name!r}; valid: {', '.join(scheme_names(scheme_dir))} "
            f"(files in {scheme_dir})"
        )
    try:
        return OmegaConf.to_container(OmegaConf.create({"init": OmegaConf.load(path)}), resolve=True)["init"]
    except OmegaConfBaseException as err:
        raise UserError(f"cannot read init option {name!r} ({path}): {err}") from None


def resolve_scheme(spec: Any, network: str, scheme_dir: Path, name: str) -> Scheme:
    """A network's scheme from its config entry: inline rules, or the name of another init option.

    ``init.discriminator=default`` names the option ``default``; its ``discriminator`` section is
    used. Names may chain; a cycle is an error.
    """
    seen = []
    while isinstance(spec, str):
        if spec in seen:
            raise UserError(f"init.{network}: names form a cycle: {' -> '.join(seen + [spec])}")
        seen.append(spec)
        name = spec
        spec = load_init_file(spec, scheme_dir).get(network)
        if spec is None:
            raise UserError(f"init option {name!r} has no '{network}' section")
    return Scheme.parse(name, spec, f"init.{network}")


def arm_name(init_choice: str, init_overrides: list[str]) -> str:
    """``he_xavier``, or ``he_xavier,discriminator=default`` when init.* was overridden."""
    extras = [o.removeprefix("init.") for o in init_overrides]
    return ",".join([init_choice, *extras])


def run_config(
    cfg: Mapping[str, Any], *, out_dir: Path, init_choice: str, init_overrides: list[str],
    scheme_dir: Path,
) -> RunConfig:
    """The typed run configuration from Hydra's resolved config (a plain mapping)."""
    known = {"seed", "data_dir", "dataset", "model", "init", "trainer", "logger", "eval", "resume"}
    unknown = set(cfg) - known
    if unknown:
        raise UserError(f"unknown top-level key(s) {sorted(unknown)}; valid: {sorted(known)}")
    seed = _coerce(cfg.get("seed", 0), int, "seed")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    init_cfg = cfg.get("init") or {}
    # Besides the two networks, an init option may hold scalar parameters (dist, gain, std…) that
    # its sections use through ${init.<name>}; a mapping under any other key is a typo.
    stray = [k for k, v in init_cfg.items() if k not in NETWORKS and isinstance(v, (Mapping, list))]
    if stray:
        raise UserError(f"unknown section(s) in init: {stray}; valid: {list(NETWORKS)}")
    schemes = {
        net: resolve_scheme(init_cfg.get(net, init_choice), net, scheme_dir, init_choice)
        for net in NETWORKS
    }
    data = dict(cfg.get("dataset") or {})
    data["root"] = cfg.get("data_dir", "data")
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
    )
