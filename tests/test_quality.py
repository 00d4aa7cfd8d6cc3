"""FCD and class coverage: sanity on real and corrupted data, the classifier cache."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
import torch

import conftest
from gan import data, quality
from gan.config import EvalConfig, preset


@pytest.fixture(scope="module")
def digits():
    source = conftest.data_source("digits", conftest.DATA_DIR)
    classifier = quality.load_classifier(source, progress=False)
    test, train = data.load(source, train=False), data.load(source, train=True)
    batch = preset(EvalConfig, "eval").batch_size
    return classifier, quality.Evaluator(classifier, test.images, batch), train


def test_the_digits_classifier_is_good_and_identified(digits):
    classifier, _, _ = digits
    assert classifier.test_accuracy >= 0.95
    assert classifier.identity.startswith(f"digits-v{quality.CLASSIFIER_VERSION}-")


def test_fcd_of_real_data_is_near_zero_and_far_below_noise(digits):
    _, evaluator, train = digits
    real = evaluator.score(train.images[:360])["eval/fcd"]
    noise = evaluator.score(
        torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )["eval/fcd"]
    assert real < 0.05 * noise


def test_fcd_grows_monotonically_with_gaussian_corruption(digits):
    _, evaluator, train = digits
    images = train.images[:360]
    gen = torch.Generator().manual_seed(1)
    scores = [
        evaluator.score((images + s * torch.randn(images.shape, generator=gen)).clamp(-1, 1))[
            "eval/fcd"
        ]
        for s in (0.0, 0.1, 0.3, 0.6, 1.0)
    ]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores


def test_a_generator_of_one_class_is_caught(digits):
    _, evaluator, train = digits
    threes = train.images[train.labels == 3]
    scores = evaluator.score(threes)
    assert scores["eval/classes_covered"] == 1
    assert scores["eval/class_kl"] > 0.9 * math.log(10)  # log 10 when a single class takes all
    balanced = evaluator.score(train.images[:360])
    assert balanced["eval/classes_covered"] == 10 and balanced["eval/class_kl"] < 0.05


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert quality.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
        expected
    )


def test_frechet_distance_matches_the_sqrtm_formula_on_full_rank_covariances():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 20)), rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20))
    mu1, mu2, cov1, cov2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    usual = ((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1 @ cov2).real)
    assert quality.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(usual, rel=1e-8)


def test_the_cache_is_reused_and_a_corrupt_one_retrained(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gan")
    source = conftest.data_source("digits", tmp_path)
    first = quality.load_classifier(source, progress=False)
    cache = tmp_path / "classifiers" / f"digits-v{quality.CLASSIFIER_VERSION}.pt"
    assert quality.load_classifier(source, progress=False).identity == first.identity
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    again = quality.load_classifier(source, progress=False)
    assert "is unreadable" in caplog.text
    assert again.identity == first.identity  # deterministic training: the same classifier
    assert quality.load_classifier(source, progress=False).identity == first.identity


# --- KCD: the unbiased kernel distance ---------------------------------------------------------


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² written out pair by pair, as in its definition (Gretton et al. 2012)."""

    def k(a, b):
        return (a @ b / len(a) + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 2.0, size=(9, 5))
    assert quality.mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-10)


def test_mmd2_is_unbiased_for_equal_distributions():
    # Over many tiny draws of one distribution the mean is 0 within its standard error; the
    # biased estimate (which keeps the k(a, a) terms) is clearly positive on the same draws.
    def mean_k(a, b):
        return ((a @ b.T / a.shape[1] + 1) ** 3).mean()

    def biased(x, y):
        return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)

    rng = np.random.default_rng(1)
    pairs = [rng.normal(size=(2, 8, 4)) for _ in range(4000)]
    unbiased = np.array([quality.mmd2_unbiased(x, y) for x, y in pairs])
    assert abs(unbiased.mean()) < 3 * unbiased.std() / math.sqrt(len(pairs))
    assert np.mean([biased(x, y) for x, y in pairs]) > 10 * unbiased.std() / math.sqrt(len(pairs))


def test_kernel_distance_separates_distributions_and_is_seeded():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(400, 6))
    same, same_std = quality.kernel_distance(a, b)
    shifted, _ = quality.kernel_distance(a, b + 0.5)
    assert abs(same) < 3 * same_std and shifted > 10 * same_std
    assert quality.kernel_distance(a, b) == (same, same_std)  # deterministic
    assert quality.kernel_distance(a[:3], b[:3], subsets=4)[1] >= 0  # tiny samples: subsets of 2


def test_kcd_of_real_data_is_near_zero_and_logged_with_its_spread(digits):
    _, evaluator, train = digits
    real = evaluator.score(train.images[:360])
    noise = evaluator.score(
        torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )
    assert abs(real["eval/kcd"]) < 3 * real["eval/kcd_std"]  # 0 within its spread
    assert noise["eval/kcd"] > 20 * abs(real["eval/kcd"]) and noise["eval/kcd"] > 0
    assert real["eval/kcd_std"] > 0  # subsets differ even when the whole test split is scored


def test_a_populations_members_are_scored_as_each_alone(digits):
    # One classifier pass over every member's images (eval mode: each image on its own) gives
    # each member the scores it gets alone, up to summation order (FCD is in float64).
    _, evaluator, train = digits
    noise = torch.rand(2, 300, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    images = torch.stack([train.images[:300], noise[0], noise[1] * 0.5])  # (3, 300, 1, 8, 8)
    together = evaluator.score_members(images)
    for member, scores in zip(images, together):
        alone = evaluator.score(member)
        assert scores.keys() == alone.keys()
        for key, value in alone.items():
            assert scores[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
