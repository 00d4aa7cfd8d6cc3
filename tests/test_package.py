"""The project as a package: a wheel built from this checkout, installed into a fresh virtual
environment outside it, trains and reports from another directory with its own entry points.

The venv sees the system's site-packages, so torch and the other dependencies come from there and
nothing is downloaded (pip installs the wheel with --no-deps, offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import conftest
from conftest import ROOT


def sh(*args, cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_installed_wheel_trains_and_reports_outside_the_checkout(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("gan", "conf", "hydra_plugins"):
        if not (ROOT / name).is_dir():
            continue
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", wheels, source, cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("gan_init-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gan/conf/config.yaml" in names and "gan/conf/init/he_xavier.yaml" in names
    assert "gan/conf/hydra/help/gan.yaml" in names
    # Every package of the checkout ships: pyproject.toml lists them by hand (gan.conf is mapped).
    for init in [*ROOT.glob("gan/**/__init__.py"), *ROOT.glob("hydra_plugins/**/__init__.py")]:
        assert str(init.relative_to(ROOT)) in names, f"{init.parent} is not in pyproject.toml"
    assert any(n.endswith("licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path)
    bin_dir = venv / "bin"
    sh(bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel,
       cwd=tmp_path)  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    # The checkout must not be importable from here: only the installed package may answer.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    where = sh(bin_dir / "python", "-c", "import gan.config as c; print(c.CONF_DIR)",
               cwd=work, env=env)  # fmt: skip
    assert Path(where.strip()).is_relative_to(venv)

    run_dir = work / "run"
    sh(bin_dir / "gan-train", "init=he_xavier", "trainer.steps=20", "trainer.log_every=10",
       "trainer.eval_every=20", "trainer.diag_every=10", "trainer.threads=1",
       "logger.mode=disabled", f"data_dir={conftest.DATA_DIR}", f"hydra.run.dir={run_dir}",
       cwd=work, env=env)  # fmt: skip
    for name in ("summary.json", "metrics.jsonl", "init_report.json", "checkpoint.pt", "train.log"):
        assert (run_dir / name).is_file(), name
    assert sh(bin_dir / "gan-train", "--help", cwd=work, env=env).startswith("Trains one GAN")

    sh(bin_dir / "gan-report", run_dir, "--out", work / "report", cwd=work, env=env)
    assert sh(bin_dir / "gan-report", "--help", cwd=work, env=env).startswith("usage: gan-report")
    for name in ("report.md", "report.html", "curves.png", "summary.csv"):
        assert (work / "report" / name).is_file(), name
