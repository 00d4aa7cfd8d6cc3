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


@pytest.fixture(scope="module")
def digits():
    source = conftest.data_source("digits", conftest.DATA_DIR)
    classifier = quality.load_classifier(source, progress=False)
    test, train = data.load(source, train=False), data.load(source, train=True)
    return classifier, quality.Evaluator(classifier, test.images), train


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
