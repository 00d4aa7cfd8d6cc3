"""Shared fixtures: W&B never reaches a server, configs compose through the CLI's own path."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
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


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """Torch's thread count set to ``n`` (left as it is if None) and put back afterwards: a run
    sets it for the whole process."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


DATA_DIR: Path | None = None  # one per session: the digits feature classifier trains once


@pytest.fixture(scope="session", autouse=True)
def session_data_dir(tmp_path_factory):
    global DATA_DIR
    DATA_DIR = tmp_path_factory.mktemp("data")
    return DATA_DIR


def run_config(overrides: list[str], out_dir: Path):
    """The typed RunConfig for ``overrides``, exactly as ``python train.py <overrides>`` builds it
    (with the session's data dir)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "config", overrides=[f"data_dir={DATA_DIR}", *overrides], return_hydra_config=True
        )
    return train.to_run_config(cfg, cfg.hydra, out_dir)


def data_source(name: str, root: Path | str = "data", **changes):
    """The DataConfig that ``dataset=<name>`` builds (conf/dataset/<name>.yaml), with changes."""
    import dataclasses

    from gan.config import DataConfig, preset

    return dataclasses.replace(preset(DataConfig, "dataset", name, root=str(root)), **changes)


def wandb_records(run_root: Path) -> list[dict]:
    """The records of the one offline W&B run under ``run_root``, read from its .wandb file."""
    import json
    import subprocess

    (log,) = run_root.rglob("run-*.wandb")
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(log)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]
