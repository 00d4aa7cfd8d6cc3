"""Shared fixtures: W&B never reaches a server, configs compose through the CLI's own path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
sys.path.insert(0, str(ROOT))  # train.py is a script at the top level, not part of the package

import train  # noqa: E402


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path_factory, monkeypatch):
    """Offline W&B in a throw-away dir, no telemetry, and no credentials visible."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path_factory.mktemp("home") / "no-netrc"))


def run_config(overrides: list[str], out_dir: Path):
    """The typed RunConfig for ``overrides``, exactly as ``python train.py <overrides>`` builds it."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    return train.to_run_config(cfg, cfg.hydra, out_dir)


def wandb_records(run_root: Path) -> list[dict]:
    """The records of the one offline W&B run under ``run_root``, read from its .wandb file."""
    import json
    import subprocess

    (log,) = run_root.rglob("run-*.wandb")
    out = subprocess.run(["wandb", "leet", "inspect", "--json", str(log)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]
