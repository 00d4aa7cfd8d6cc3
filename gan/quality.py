"""What the generator learned: a Fréchet distance (FCD) and an unbiased kernel distance (KCD) in a
dataset classifier's feature space, class coverage and classifier confidence — with no downloaded
weights.

The classifier is trained by the project on the dataset's training split on first use and cached
in ``data_dir/classifiers/`` with its version, seed, test accuracy and a hash of its weights; the
identity string (e.g. ``fashion_mnist-v1-3f2a9c01d4e5``) goes with every score, since scores are
only comparable under the same classifier.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan import data
from gan.config import DataConfig
from gan.errors import UserError
from gan.files import atomic_file
from gan.nets import Generator, generate

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 1  # bump when the architecture or training recipe changes: caches go stale
# Training recipe per dataset: epochs, and the test accuracy the classifier must reach.
RECIPES = {"digits": (60, 0.95), "mnist": (3, 0.985), "fashion_mnist": (5, 0.89)}

# The evaluation metrics (``Evaluator.score``), logged under eval/.
EVAL_PREFIX = "eval/"
FCD = "eval/fcd"
KCD = "eval/kcd"
KCD_STD = "eval/kcd_std"
CLASS_KL = "eval/class_kl"
CLASSES_COVERED = "eval/classes_covered"
CONFIDENCE = "eval/confidence"
# What the scores were computed with: the classifier's identity (a string: W&B keeps it in the
# run's summary, not its charts) and its test accuracy.
CLASSIFIER = "eval/classifier"
CLASSIFIER_TEST_ACCURACY = "eval/classifier_test_accuracy"
# The run's best FCD so far and its step (``gan.run`` keeps them: GANs can worsen).
FCD_BEST = "eval/fcd_best"
FCD_BEST_STEP = "eval/fcd_best_step"


class FeatureClassifier(nn.Module):
    """Classifier whose penultimate activations are the feature space of the Fréchet distance."""

    def __init__(self, image_shape: tuple[int, int, int], classes: int = 10):
        super().__init__()
        channels, side, _ = image_shape
        if side >= 28:  # LeNet-style: (1, 28, 28) → 32×14×14 → 64×7×7 → 128 features
            self.features = nn.Sequential(
                OrderedDict(
                    conv1=nn.Conv2d(channels, 32, 5, padding=2),
                    act1=nn.ReLU(),
                    pool1=nn.MaxPool2d(2),
                    conv2=nn.Conv2d(32, 64, 5, padding=2),
                    act2=nn.ReLU(),
                    pool2=nn.MaxPool2d(2),
                    flatten=nn.Flatten(),
                    drop=nn.Dropout(0.3),
                    fc=nn.Linear(64 * (side // 4) ** 2, 128),
                    act3=nn.ReLU(),
                )
            )
            width = 128
        else:  # small MLP for 8×8 digits: 64 → 256 → 64 features
            self.features = nn.Sequential(
                OrderedDict(
                    flatten=nn.Flatten(),
                    fc1=nn.Linear(channels * side * side, 256),
                    act1=nn.ReLU(),
                    drop=nn.Dropout(0.2),
                    fc2=nn.Linear(256, 64),
                    act2=nn.ReLU(),
                )
            )
            width = 64
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, width), logits (B, classes)) for images in [-1, 1]."""
        f = self.features(x)
        return f, self.head(f)


@dataclass
class Classifier:
    model: FeatureClassifier
    identity: str
    test_accuracy: float


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@torch.no_grad()
def _accuracy(model: FeatureClassifier, split: data.Split, batch: int = 2000) -> float:
    model.eval()
    correct = sum(
        int((model(split.images[i : i + batch])[1].argmax(1) == split.labels[i : i + batch]).sum())
        for i in range(0, len(split), batch)
    )
    return correct / len(split)


def train_classifier(source: DataConfig, *, seed: int = 0, progress: bool = True) -> Classifier:
    """Trains the feature classifier of ``source``'s dataset and checks its test accuracy."""
    dataset = source.name
    train, test = data.load(source, train=True), data.load(source, train=False)
    torch.manual_seed(seed)
    model = FeatureClassifier(data.image_shape(dataset))
    epochs, required = RECIPES[dataset]
    _fit(model, train, epochs, seed, f"feature classifier ({dataset}, first use)", progress)
    accuracy = _accuracy(model, test)
    model.eval()
    if accuracy < required:
        raise UserError(
            f"the {dataset} feature classifier reached {accuracy:.2%} test accuracy, below the "
            f"required {required:.1%}; its scores would not be trustworthy"
        )
    return Classifier(model, f"{dataset}-v{CLASSIFIER_VERSION}-{_weights_hash(model)}", accuracy)


def _fit(
    model: FeatureClassifier, train: data.Split, epochs: int, seed: int, desc: str, progress: bool
) -> None:
    """Adam at 1e-3, batches of 128 in a seeded random order per epoch."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(seed)
    batches = math.ceil(len(train) / 128)
    bar = tqdm(total=epochs * batches, desc=desc, disable=not progress)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=rng)
        for i in range(batches):
            idx = order[i * 128 : (i + 1) * 128]
            loss = F.cross_entropy(model(train.images[idx])[1], train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()


def classifier_path(source: DataConfig) -> Path:
    """Where the dataset's classifier is cached (``data_dir/classifiers/``)."""
    return Path(source.root) / "classifiers" / f"{source.name}-v{CLASSIFIER_VERSION}.pt"


def load_classifier(source: DataConfig, *, progress: bool = True) -> Classifier:
    """The dataset's cached classifier, trained anew when missing, stale or corrupt."""
    path = classifier_path(source)
    if path.is_file():
        cached, reason = _read_cache(path, source.name)
        if cached is not None:
            return cached
        log.info("feature classifier cache %s is %s: training it again", path, reason)
    classifier = train_classifier(source, progress=progress)
    _write_cache(classifier, path)
    log.info(
        "feature classifier %s: %.2f %% test accuracy, cached in %s",
        classifier.identity,
        100 * classifier.test_accuracy,
        path,
    )
    return classifier


def _read_cache(path: Path, dataset: str) -> tuple[Classifier | None, str]:
    """The classifier cached at ``path``, or None and why it cannot be used."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = FeatureClassifier(data.image_shape(dataset))
        model.load_state_dict(blob["state_dict"])
        model.eval()
        if blob["version"] != CLASSIFIER_VERSION or blob["hash"] != _weights_hash(model):
            return None, "stale"
        identity = f"{dataset}-v{CLASSIFIER_VERSION}-{blob['hash']}"
        return Classifier(model, identity, blob["test_accuracy"]), ""
    except Exception as err:  # noqa: BLE001 - any unreadable cache is retrained, never trusted
        return None, f"unreadable ({type(err).__name__})"


def _write_cache(classifier: Classifier, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    blob = {
        "version": CLASSIFIER_VERSION,
        "seed": 0,
        "test_accuracy": classifier.test_accuracy,
        "hash": classifier.identity.rsplit("-", 1)[1],
        "state_dict": classifier.model.state_dict(),
    }
    torch.save(blob, buffer)
    with atomic_file(path) as f:  # a half-written cache never carries the final name
        f.write(buffer.getbuffer())


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 − mu2||² + Tr(cov1) + Tr(cov2) − 2 Tr((cov1 cov2)^½).

    Tr((cov1 cov2)^½) is the sum of the square roots of the eigenvalues of the symmetric PSD
    matrix cov1^½ cov2 cov1^½ (similar to cov1 cov2). Unlike a general matrix square root
    (scipy's sqrtm, the usual FID code), this stays exact when the covariances are singular, as
    they are when some ReLU features never fire.
    """
    from scipy import linalg

    w, v = linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = linalg.eigvalsh(root1 @ cov2 @ root1)
    trace_root = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)


# KCD: subsets per score and their largest size. A subset never takes more than half of the
# smaller sample, so the subsets differ and their spread means something even when the whole test
# split is scored (digits: 360 images); with 10,000 images it is the usual 1,000.
KCD_SUBSETS = 10
KCD_SUBSET_SIZE = 1000


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between samples ``x`` (m, d) and ``y`` (n, d), m, n ≥ 2, with KID's
    polynomial kernel k(a, b) = (a·b / d + 1)³: the within-sample means leave out the diagonal
    (k(a, a)), which is what makes the estimate unbiased (its mean is 0 for equal distributions)."""
    d = x.shape[1]
    m, n = len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kernel_distance(
    x: np.ndarray,
    y: np.ndarray,
    *,
    subsets: int = KCD_SUBSETS,
    subset_size: int = KCD_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, standard deviation) of ``mmd2_unbiased`` over ``subsets`` random subsets drawn
    without replacement from each sample (seeded: the same inputs give the same score)."""
    size = max(2, min(subset_size, min(len(x), len(y)) // 2))
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if subsets > 1 else math.nan


@torch.no_grad()
def _features(
    model: FeatureClassifier, images: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    feats, probs = [], []
    for i in range(0, len(images), batch):
        f, logits = model(images[i : i + batch])
        feats.append(f.double())
        probs.append(logits.softmax(1))
    return torch.cat(feats), torch.cat(probs)


def _moments(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = features.cpu().numpy()
    return x.mean(0), np.cov(x, rowvar=False)


class Evaluator:
    """Scores generated images against a dataset's real test split (on its device), ``batch``
    images at a time (eval.batch_size)."""

    def __init__(self, classifier: Classifier, real_test: torch.Tensor, batch: int):
        self.classifier, self.batch = classifier, batch
        classifier.model.to(real_test.device)
        real_features = _features(classifier.model, real_test, batch)[0]
        self.real_moments = _moments(real_features)
        self.real_features = real_features.cpu().numpy()
        self.classes = classifier.model.head.out_features

    def score_generator(self, generator: Generator, z: torch.Tensor) -> dict[str, float]:
        """Scores ``generator``'s images of the fixed noise ``z`` (N, z_dim), made in batches."""
        images = torch.cat(
            [generate(generator, z[i : i + self.batch]) for i in range(0, len(z), self.batch)]
        )
        return self.score(images)

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """``eval/*`` metrics of ``images`` (N, C, H, W) in [-1, 1], on the classifier's device."""
        return self._scores(*_features(self.classifier.model, images, self.batch))

    def score_members(self, images: torch.Tensor) -> list[dict[str, float]]:
        """``score`` of each member's images (K, N, C, H, W) of a population: one classifier
        pass over all of them (it scores each image on its own), then each member's metrics."""
        k, n = images.shape[:2]
        features, probs = _features(self.classifier.model, images.flatten(0, 1), self.batch)
        return [
            self._scores(features[i * n : (i + 1) * n], probs[i * n : (i + 1) * n])
            for i in range(k)
        ]

    def _scores(self, features: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
        histogram = torch.bincount(probs.argmax(1), minlength=self.classes).double() / len(probs)
        nonzero = histogram[histogram > 0]
        kcd, kcd_std = kernel_distance(features.cpu().numpy(), self.real_features)
        return {
            FCD: frechet_distance(*_moments(features), *self.real_moments),
            # Unbiased, unlike FCD, whose bias is large at a few hundred images (digits' test
            # split): comparable across sample sizes; kcd_std is its spread over subsets.
            KCD: kcd,
            KCD_STD: kcd_std,
            # KL(predicted-class histogram ‖ uniform) = Σ p log(p·K): 0 for perfect balance,
            # log K = 2.30 when one class takes everything (mode dropping).
            CLASS_KL: float((nonzero * (nonzero * self.classes).log()).sum()),
            CLASSES_COVERED: int((histogram >= 0.5 / self.classes).sum()),
            CONFIDENCE: float(probs.max(1).values.mean()),
        }
