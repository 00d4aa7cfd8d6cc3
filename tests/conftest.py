"""Shared fixtures: W&B never reaches a server, configs compose through the CLI's own path."""

from __future__ import annotations

import contextlib
import os
import sys
import time
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
        timeout=180,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# --- processes a test started, as Linux's /proc sees them -------------------------------------


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie, ended but not yet reaped, is not)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            running.add(pid)
    return running


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def children_with(pid: int, marker: str) -> set[int]:
    """The live child processes of ``pid`` whose command line has ``marker``."""
    found = set()
    for child in children(pid):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{child}/cmdline").read_text():
                found.add(child)
    return found


def stopped_while_signals_held(pid: int, marker: str, count: int = 2) -> set[int]:
    """Stops (SIGSTOP) each of the first ``count`` child processes of ``pid`` whose command line
    has ``marker`` as soon as it is seen, and checks that it then still held SIGINT and SIGTERM
    back (a signal sent now waits for its handlers); returns them, stopped."""
    import signal

    stopped: set[int] = set()

    def stop_new() -> bool:
        for child in children_with(pid, marker) - stopped:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGSTOP)
                stopped.add(child)
        return len(stopped) >= count

    try:
        wait_for(stop_new)
        for child in stopped:
            wait_for(lambda child=child: _status(child)["State"].startswith("T"))
            held = int(_status(child)["SigBlk"], 16)
            assert all(held >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM)), child
    except BaseException:
        for child in stopped:  # not left stopped for the rest of the session
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        raise
    return stopped


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def workers_importing_torch(pid: int, marker: str, count: int = 2) -> set[int]:
    """Waits until ``count`` child processes of ``pid`` whose command line has ``marker`` are
    loading torch (past the interpreter's own start: a signal there is beyond any handler);
    returns them."""

    def found() -> set[int]:
        started = set()
        for child in children_with(pid, marker):
            with contextlib.suppress(OSError):
                if "libtorch" in Path(f"/proc/{child}/maps").read_text():
                    started.add(child)
        return started

    wait_for(lambda: len(found()) >= count)
    return found()
