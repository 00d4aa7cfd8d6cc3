"""The textbook experiment on why init matters, reproducible: `python -m gan.probe`.

Activations mode (default): a deep MLP (5 layers of 100 units) fed standard-normal inputs, for
every activation × init, records each layer's activation statistics and draws their histograms in
one grid (rows = activation × init, columns = layers). Writes ``probe.png`` and ``probe.json``.

Training mode (``--train digits``): the same MLP with ReLU as a classifier, trained by plain SGD
under N(0, 0.01), Xavier and He; writes ``probe_train.png`` and ``probe_train.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gan.config import CONF_DIR, DataConfig, entry_default, preset
from gan.data import DATASETS
from gan.diagnostics import ACT_MEAN, ACT_STD, DEAD_FRAC, SATURATED_FRAC, activation_stats
from gan.errors import UserError, exits_on_user_error
from gan.figures import pyplot
from gan.init import Scheme, SoftmaxInLoss
from gan.init_call import initialize
from gan.init_options import resolve_scheme
from gan.runtime import derive_seed

SCHEME_DIR = CONF_DIR / "init"  # the init options, wherever the configs are installed
ACTIVATION_MODULES = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
PROBE_INITS = ("normal_large", "normal_small", "xavier", "he")
TRAIN_INITS = ("normal_small", "xavier", "he")


def load_scheme(name: str, scheme_dir: Path = SCHEME_DIR) -> Scheme:
    """An init option from conf/init (the generator's section), as the trainer would use it."""
    return resolve_scheme(name, "generator", scheme_dir, name)


def deep_mlp(
    activation: str, depth: int, width: int, n_in: int, n_out: int | None = None
) -> nn.Sequential:
    """``depth`` blocks Linear(width) → activation; with ``n_out``, a classifier head on top."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, depth + 1):
        layers[f"fc{i}"] = nn.Linear(n_in if i == 1 else width, width)
        layers[f"act{i}"] = ACTIVATION_MODULES[activation]()
    if n_out:
        layers["head"] = nn.Linear(width, n_out)
        layers["softmax"] = SoftmaxInLoss()
    return nn.Sequential(layers)


def probe_activations(
    depth: int = 5,
    width: int = 100,
    samples: int = 1000,
    seed: int = 0,
    activations: tuple[str, ...] = tuple(ACTIVATION_MODULES),
    inits: tuple[str, ...] = PROBE_INITS,
) -> tuple[list[dict], dict[tuple[str, str], list[torch.Tensor]]]:
    """Records of each layer's activation statistics, and the activations themselves."""
    # Inputs and weights from streams of their own: from one seed, the first layer's weights
    # would be a scaled copy of the first inputs.
    inputs = torch.Generator().manual_seed(derive_seed(seed, "probe/inputs"))
    x = torch.randn(samples, width, generator=inputs)
    records, outputs = [], {}
    for activation in activations:
        for init in inits:
            net = deep_mlp(activation, depth, width, width)
            generator = torch.Generator().manual_seed(seed)
            initialize(net, load_scheme(init), network="probe", generator=generator)
            layers = _activations(net, x)
            outputs[(activation, init)] = layers
            records += [
                _layer_record(activation, init, layer, y) for layer, y in enumerate(layers, start=1)
            ]
    return records, outputs


@torch.no_grad()
def _activations(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of each activation module of ``net`` on ``x``, first layer first."""
    h, layers = x, []
    for module in net:
        h = module(h)
        if isinstance(module, tuple(ACTIVATION_MODULES.values())):
            layers.append(h)
    return layers


def _layer_record(activation: str, init: str, layer: int, y: torch.Tensor) -> dict:
    stats = {k: v.item() for k, v in activation_stats(y, activation).items()}
    return {
        "activation": activation,
        "init": init,
        "layer": layer,
        "mean": stats[ACT_MEAN],
        "std": stats[ACT_STD],
        SATURATED_FRAC: stats.get(SATURATED_FRAC),  # the same quantities, named alike
        DEAD_FRAC: stats.get(DEAD_FRAC),
    }


def plot_activations(outputs: dict[tuple[str, str], list[torch.Tensor]], path: Path) -> None:
    plt = pyplot()
    rows = list(outputs)
    depth = len(outputs[rows[0]])
    fig, axes = plt.subplots(
        len(rows), depth, figsize=(2.1 * depth, 1.25 * len(rows)), squeeze=False
    )
    for r, (activation, init) in enumerate(rows):
        layers = outputs[(activation, init)]
        lo, hi = _hist_range(activation, layers)
        for c, y in enumerate(layers):
            ax = axes[r][c]
            ax.hist(y.flatten().clamp(lo, hi).numpy(), bins=40, range=(lo, hi), color=f"C{r % 4}")
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            ax.set_title(f"layer {c + 1}: std {y.std():.2g}", fontsize=7)
            if c == 0:
                ax.set_ylabel(
                    f"{activation}\n{init}", fontsize=8, rotation=0, ha="right", va="center"
                )
    samples, width = outputs[rows[0]][0].shape
    title = f"Activations per layer: {depth} layers × {width} units, {samples} N(0, 1) inputs"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hist_range(activation: str, layers: list[torch.Tensor]) -> tuple[float, float]:
    """One x-range per row, so the layers of a row compare at a glance.

    ReLU rows are heavy-tailed: their range ends at the 99.5th percentile (the rest in the last
    bin).
    """
    if activation in ("sigmoid", "tanh"):
        return (0.0 if activation == "sigmoid" else -1.0), 1.0
    return 0.0, max(float(torch.quantile(y.flatten(), 0.995)) for y in layers) or 1.0


def train_classifiers(
    dataset: str = "digits",
    data_dir: Path | str | None = None,  # None: the YAML's data_dir
    depth: int = 5,
    width: int = 100,
    steps: int = 2000,
    batch_size: int = 100,
    lr: float = 0.05,
    seed: int = 0,
    inits: tuple[str, ...] = TRAIN_INITS,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Training loss per step of a ReLU classifier under each init (plain SGD, same batches)."""
    from tqdm.auto import tqdm

    from gan import data

    root = entry_default("data_dir") if data_dir is None else data_dir
    split = data.load(preset(DataConfig, "dataset", dataset, root=root), train=True)
    x, y = split.images.flatten(1), split.labels
    curves = {}
    for init in inits:
        net = deep_mlp("relu", depth, width, x.shape[1], n_out=int(y.max()) + 1)
        initialize(
            net,
            load_scheme(init),
            network="classifier",
            generator=torch.Generator().manual_seed(seed),
        )
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        # The same batches for every init, from a stream apart from the weights'.
        rng = torch.Generator().manual_seed(derive_seed(seed, "probe/batches"))
        losses = torch.empty(steps)
        for step in tqdm(range(steps), desc=f"probe {init}", disable=not progress, leave=False):
            idx = torch.randint(len(x), (batch_size,), generator=rng)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.detach()
        curves[init] = losses.tolist()
    return curves


def plot_training(curves: dict[str, list[float]], dataset: str, depth: int, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for init, losses in curves.items():
        smooth = torch.tensor(losses).unfold(0, min(50, len(losses)), 1).mean(1)  # 50-step mean
        ax.plot(range(len(smooth)), smooth.numpy(), label=init)
    ax.axhline(math.log(10), color="grey", lw=0.8, ls="--", label="chance (ln 10)")
    ax.set(
        xlabel="step",
        ylabel="training loss (50-step mean)",
        title=f"{depth}-layer ReLU MLP on {dataset}: plain SGD under each init",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan.probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1000, help="inputs in activations mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("probe"), help="output directory")
    parser.add_argument(
        "--train",
        metavar="DATASET",
        choices=DATASETS,
        help="training mode on this dataset instead of the activations probe",
    )
    parser.add_argument("--steps", type=int, default=2000, help="SGD steps in training mode")
    parser.add_argument("--data-dir", type=Path, default=Path(entry_default("data_dir")))
    return parser


def _training_mode(args: argparse.Namespace) -> None:
    curves = train_classifiers(
        args.train, args.data_dir, args.depth, args.width, args.steps, seed=args.seed
    )
    (args.out / "probe_train.json").write_text(json.dumps(curves))
    plot_training(curves, args.train, args.depth, args.out / "probe_train.png")
    for init, losses in curves.items():
        last = losses[-50:]
        print(f"{init:>13}: loss {losses[0]:.3f} → {sum(last) / len(last):.3f}")
    print(f"wrote {args.out / 'probe_train.png'} and probe_train.json")


def _activations_mode(args: argparse.Namespace) -> None:
    records, outputs = probe_activations(args.depth, args.width, args.samples, args.seed)
    (args.out / "probe.json").write_text(json.dumps(records, indent=1))
    plot_activations(outputs, args.out / "probe.png")
    for r in records:
        if r["layer"] in (1, args.depth):
            print(f"{r['activation']:>8} {r['init']:>13} layer {r['layer']}: std {r['std']:.3g}")
    print(f"wrote {args.out / 'probe.png'} and probe.json")


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("depth", "width", "samples", "steps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    weights = args.depth * args.width**2 * 4  # float32 bytes of the probe's weight matrices
    if weights > MAX_WEIGHT_BYTES:
        raise UserError(
            f"--width {args.width} with --depth {args.depth} needs {weights / 2**30:,.0f} GiB "
            f"for the weights alone (at most {MAX_WEIGHT_BYTES / 2**30:.0f} GiB); use a smaller "
            "--width"
        )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.train:
            _training_mode(args)
        else:
            _activations_mode(args)
    except OSError as err:
        raise UserError(
            f"--out {args.out}: cannot write there ({err.strerror or err}); give a writable "
            "directory"
        ) from None
    return 0


MAX_WEIGHT_BYTES = 2 * 2**30  # a probe larger than this would exhaust a laptop's memory


if __name__ == "__main__":
    sys.exit(main())
