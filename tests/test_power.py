"""gan.power: the seeds-per-arm calculation behind the atlas, on scipy's noncentral t."""

from __future__ import annotations

import pytest

from gan.power import power, seeds_needed, t_critical


@pytest.mark.parametrize(
    ("n", "expected"),
    [(5, 0.286), (10, 0.562), (15, 0.753), (16, 0.781), (17, 0.807), (18, 0.830), (20, 0.869)],
)
def test_the_readme_power_table(n, expected):
    assert power(n, 1.0) == pytest.approx(expected, abs=5e-4)


def test_no_effect_is_found_at_the_test_level():
    assert power(17, 0.0) == pytest.approx(0.05, abs=1e-9)
    assert t_critical(10**6, 0.05) == pytest.approx(1.95996, abs=1e-4)


def test_seeds_needed_grows_as_the_effect_shrinks():
    assert seeds_needed(1.0) == 17
    assert seeds_needed(2.0) < 17 < seeds_needed(0.5)


@pytest.mark.parametrize(("effect", "target"), [(0.0, 0.8), (1.0, 1.0), (1.0, 0.04)])
def test_a_power_no_seed_count_reaches_is_an_error_not_an_endless_search(effect, target):
    with pytest.raises(ValueError, match="no seed count reaches"):
        seeds_needed(effect, alpha=0.05, target=target)
