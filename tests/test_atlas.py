"""The atlas: its seeds per cell come from a power calculation that is checked here, its smoke
version lists the same cells, and that smoke version runs end to end through train.py -m."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

import conftest
from conftest import CONF_DIR, ROOT
from gan import report
from gan.power import nct_cdf, power, seeds_needed, t_critical
from gan.record import Outcome


def sweep(experiment: str) -> dict[str, str]:
    text = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    return {k: str(v) for k, v in yaml.safe_load(text)["hydra"]["sweeper"]["params"].items()}


def settings() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "setting").glob("*.yaml"))


@pytest.mark.parametrize(("n", "effect"), [(5, 1.0), (17, 1.0), (40, 0.5), (9, 2.0)])
def test_power_is_scipys_noncentral_t(n, effect):
    df = 2 * n - 2
    crit = stats.t.ppf(0.975, df)
    assert t_critical(df, 0.05) == pytest.approx(crit, abs=1e-6)
    assert nct_cdf(1.3, df, 2.1) == pytest.approx(stats.nct.cdf(1.3, df, 2.1), abs=1e-7)
    nc = effect * math.sqrt(n / 2)
    expected = 1 - stats.nct.cdf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert power(n, effect) == pytest.approx(expected, abs=1e-6)


def test_seventeen_seeds_find_an_effect_of_one_with_eighty_percent_power():
    assert seeds_needed(effect=1.0, alpha=0.05, target=0.8) == 17
    assert power(16, 1.0) < 0.8 <= power(17, 1.0)


def test_welchs_test_on_simulated_arms_has_that_power():
    # 4,000 simulated ablations of 17 seeds per arm, arms one standard deviation apart: Welch's
    # test (the report's) rejects in 80 % of them, within 3 standard errors.
    rng = np.random.default_rng(0)
    n, trials = 17, 4000
    a = rng.normal(0.0, 1.0, (trials, n))
    b = rng.normal(1.0, 1.0, (trials, n))
    rate = (stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean()
    assert rate == pytest.approx(power(n, 1.0), abs=3 * math.sqrt(0.8 * 0.2 / trials))


def test_the_atlas_has_every_setting_both_arms_and_the_computed_seeds():
    atlas = sweep("atlas")
    assert sorted(atlas["setting"].split(",")) == settings()
    assert atlas["init"] == "default,he_xavier"
    assert atlas["seed"] == f"range(0,{seeds_needed()})"
    smoke = sweep("atlas_smoke")
    assert (smoke["setting"], smoke["init"]) == (atlas["setting"], atlas["init"])


@pytest.mark.slow
def test_the_atlas_smoke_runs_every_cell_to_an_outcome(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "experiment=atlas_smoke",
            f"hydra.sweep.dir={sweep_dir}",
            f"data_dir={conftest.DATA_DIR}",
            "logger.mode=disabled",
            "trainer.threads=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    assert len(summaries) == 2 * len(settings())
    for summary in summaries:
        assert summary["status"] == "finished", summary
        assert summary["outcome"] in set(Outcome)
    # The report of the whole sweep: one report per setting, and the atlas with a row for each
    report_dir = tmp_path / "report"
    assert report.main([str(sweep_dir), "--out", str(report_dir)]) == 0
    with (report_dir / "atlas.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["setting"] for r in rows) == settings()
    assert {(r["arm"], r["control"]) for r in rows} == {("he_xavier", "default")}
    for name in settings():
        assert (report_dir / name / "report.html").is_file()
    assert (report_dir / "atlas.png").is_file()
