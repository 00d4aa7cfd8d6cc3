"""What reaches W&B, read back from offline runs: metric definitions, each job's own overrides and
command, a config a `wandb agent` sweep cannot overwrite, artifacts, and the online line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import conftest
from conftest import ROOT, run_config, wandb_records
from gan import dashboard, tracking
from gan.config import LoggerConfig, preset
from gan.run import run

QUICK = [
    "trainer.steps=20",
    "trainer.log_every=10",
    "trainer.sample_every=10",
    "trainer.eval_every=0",
]


def one(records: list[dict], kind: str) -> dict:
    (record,) = [r[kind] for r in records if r["type"] == kind]
    return record


def final_summary(records: list[dict]) -> dict:
    summary: dict = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"].get("update", {}))
    return summary


def definitions(records: list[dict]) -> dict[str, dict]:
    """Metric name or glob → its definition, as recorded."""
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    return {m.get("name") or m["glob_name"]: m for m in metrics}


def program_args(records: list[dict]) -> list[str]:
    environments = [r["environment"] for r in records if r["type"] == "environment"]
    (args,) = [e["args"] for e in environments if "args" in e]
    return args


def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "train.py", *args, f"data_dir={conftest.DATA_DIR}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


# --------------------------------------------------------------------------------------------
# Without a run
# --------------------------------------------------------------------------------------------


def test_the_wandb_config_holds_groups_by_name_and_their_contents_apart():
    resolved = {
        "seed": 3,
        "init": {"generator": {"bias": "zeros"}},
        "model": {"name": "mlp", "z_dim": 8},
        "trainer": {"steps": 5},
    }
    config = tracking.wandb_config(
        resolved,
        choices={"init": "he_xavier", "model": "mlp"},
        arm="he_xavier,discriminator=default",
        overrides=["init=he_xavier", "init.discriminator=default"],
    )
    assert config == {
        "seed": 3,
        "trainer": {"steps": 5},
        "init": "he_xavier",  # what a sweep over init= sets and locks: the same value
        "init_config": {"generator": {"bias": "zeros"}},
        "model": "mlp",
        "model_config": {"name": "mlp", "z_dim": 8},
        "arm": "he_xavier,discriminator=default",
        "hydra_overrides": ["init=he_xavier", "init.discriminator=default"],
    }


def test_runs_of_a_named_setting_are_grouped_under_it(tmp_path):
    # W&B averages a group's runs: an atlas's settings must not share one group per arm
    assert run_config(["init=he_xavier"], tmp_path).wandb_group == "he_xavier"
    named = run_config(["setting=mlp_g_none", "init=he_xavier"], tmp_path)
    assert (named.setting, named.wandb_group) == ("mlp_g_none", "mlp_g_none/he_xavier")
    own = run_config(["setting=mlp_g_none", "logger.group=mine"], tmp_path)
    assert own.wandb_group == "mine"


@pytest.mark.parametrize(
    ("overrides", "group"),
    [
        (["model=dcgan", "seed=2", "trainer.threads=1"], "model=dcgan/he_xavier"),
        (["trainer.optimizer=sgd", "logger.mode=disabled"], "trainer.optimizer=sgd/he_xavier"),
        (["setting=mlp_g_none", "trainer.lr=0.001"], "mlp_g_none,trainer.lr=0.001/he_xavier"),
        (
            ["init.discriminator=default", "trainer.eval_every=0"],
            "trainer.eval_every=0/he_xavier,discriminator=default",
        ),
    ],
)
def test_runs_of_other_settings_never_share_a_group(tmp_path, overrides, group):
    # One sweep over models (or optimizers, lrs…) without a named setting: its arms' groups
    # must not pool them. Seeds, threads, logging and init.* (part of the arm) make no setting.
    assert run_config(["init=he_xavier", *overrides], tmp_path).wandb_group == group


def test_program_args_are_replaced_only_during_the_call():
    before = list(sys.argv)
    with pytest.raises(RuntimeError), tracking._program_args(["seed=1"]):
        assert sys.argv[1:] == ["seed=1"] and sys.argv[0] == before[0]
        raise RuntimeError
    assert sys.argv == before


def test_an_online_run_prints_its_url_and_an_offline_run_where_it_is(tmp_path):
    online = SimpleNamespace(mode="online", wandb_run=SimpleNamespace(url="https://w/r/abc"))
    assert tracking.online_hint(online, "W&B credentials found") == (
        "W&B online (W&B credentials found): https://w/r/abc"
    )
    assert tracking.offline_hint(online, "x") is None
    offline = SimpleNamespace(mode="offline", wandb_run=object(), wandb_dir=tmp_path)
    assert tracking.online_hint(offline, "x") is None


def test_the_config_records_this_runs_overrides(tmp_path):
    overrides = ["init=he_xavier", "init.discriminator=default", "seed=4"]
    cfg = run_config([*overrides, "resume=null"], tmp_path)
    assert cfg.overrides == (f"data_dir={conftest.DATA_DIR}", *overrides)  # resume= is no setting
    assert cfg.logger.log_artifacts is False  # off unless asked


# --------------------------------------------------------------------------------------------
# A run, read back
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_defines_its_metrics_records_its_overrides_and_artifacts(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifacts' staging copy
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    overrides = [
        "init=he_xavier",
        "trainer.steps=40",
        "trainer.log_every=10",
        "trainer.sample_every=40",
        "trainer.diag_every=20",
        "trainer.eval_every=20",
        "logger.log_artifacts=true",
    ]
    summary = run(run_config(overrides, tmp_path / "run"), progress=False)
    assert summary["status"] == "finished"
    records = wandb_records(wandb_dir)

    defined = definitions(records)
    assert defined["trainer/step"]["options"]["hidden"] is True
    for name in ("train/*", "eval/*", "eval/fcd", "eval/kcd", "diag/*", "hist/*"):
        assert defined[name]["step_metric"] == "trainer/step", name
    assert defined["eval/fcd"]["summary"] == {"min": True, "last": True}
    assert defined["eval/kcd"]["summary"] == {"min": True, "last": True}
    assert defined["diag/*"]["summary"] == {"first": True, "last": True}

    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert all(h["trainer/step"] == h["_step"] for h in history)
    fcd = [h["eval/fcd"] for h in history if "eval/fcd" in h]
    act_std = [h["diag/G/fc1/act_std"] for h in history if "diag/G/fc1/act_std" in h]
    assert len(fcd) == 2 and len(act_std) == 3  # steps 20 and 40; 0, 20 and the end (39)
    final = final_summary(records)
    assert final["eval/fcd"] == {"min": min(fcd), "last": fcd[-1]}
    assert final["diag/G/fc1/act_std"] == {"first": act_std[0], "last": act_std[-1]}
    assert final["train/loss_D"] == [h for h in history if "train/loss_D" in h][-1]["train/loss_D"]

    config = one(records, "run")["config"]["update"]
    job = [f"data_dir={conftest.DATA_DIR}", *overrides]
    assert config["hydra_overrides"] == job and program_args(records) == job
    assert (config["init"], config["model"], config["dataset"]) == ("he_xavier", "mlp", "digits")
    assert config["init_config"]["generator"]["weights"]["tanh"]["rule"] == "xavier_normal"
    assert config["trainer"]["steps"] == 40

    artifacts = {a["name"]: a for a in (r["artifact"] for r in records if r["type"] == "artifact")}
    ckpt = artifacts[f"checkpoint-{summary['wandb']['id']}"]
    assert ckpt["type"] == "model" and set(ckpt["aliases"]) == {"final", "latest"}
    (entry,) = ckpt["manifest"]["contents"]
    assert entry["path"] == "checkpoint.pt"
    assert int(entry["size"]) == (tmp_path / "run" / "checkpoint.pt").stat().st_size
    classifier = artifacts["classifier-digits"]
    identity = final["eval/classifier"]
    assert classifier["type"] == "classifier" and identity in classifier["aliases"]
    assert json.loads(classifier["metadata"])["identity"] == identity

    # Every dashboard panel has data in such a run.
    keys = {k for h in history for k in h}
    assert set(dashboard.TRAINING) | set(dashboard.EVALUATION) <= keys
    for network in dashboard.NETWORKS:
        for statistic in dashboard.DIAGNOSTICS:
            pattern = re.compile(f"^diag/{network}/.+/{statistic}$")
            assert any(pattern.match(k) for k in keys), (network, statistic)


@pytest.mark.slow
def test_each_job_of_a_multirun_records_its_own_overrides(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    # A W&B service inherited from the process that started the command (a notebook's, this
    # test runner's) is not the command's: it starts its own (tracking.own_wandb_service).
    monkeypatch.setenv(tracking.WANDB_SERVICE_ENV, "not-a-service")
    sweep = tmp_path / "sweep"
    train("-m", "init=default,he_xavier", *QUICK, f"hydra.sweep.dir={sweep}")
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted(s["arm"] for s in summaries) == ["default", "he_xavier"]
    for summary in summaries:
        records = wandb_records(wandb_dir / "wandb" / Path(summary["wandb"]["dir"]).name)
        config = one(records, "run")["config"]["update"]
        own = config["hydra_overrides"]
        assert f"init={summary['arm']}" in own and set(QUICK) <= set(own)
        assert not any("," in o for o in own)  # not the sweep's init=default,he_xavier
        assert program_args(records) == own  # W&B's recorded command: this job's
        assert config["init"] == summary["arm"] and "generator" in config["init_config"]
        assert "eval/fcd" in definitions(records)
        assert not [
            r
            for r in records
            if r["type"] == "artifact"
            and r["artifact"]["type"]
            in (
                "model",
                "classifier",
            )
        ]  # logger.log_artifacts is off by default


def agent_run(params: dict, sweep_id: str, run_id: str, wandb_dir: Path) -> tuple[list, dict]:
    """The command line and environment `wandb agent` gives one run of sweep.yaml with ``params``,
    made by W&B's own agent helpers (as wandb/wandb_agent.py does), offline instead of online."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    from wandb.sdk.lib import config_util

    sweep = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    assert set(params) == set(sweep["parameters"])
    command = {"args": {k: {"value": v} for k, v in params.items()}}
    param_path = wandb_dir / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
    param_path.parent.mkdir(parents=True)
    config_util.save_config_file_from_dict(str(param_path), command["args"])
    macros = {
        **sweep_utils.create_sweep_command_args(command),
        "env": [],
        "program": [sweep["program"]],
    }
    argv = []
    for part in sweep_utils.create_sweep_command(sweep["command"]):
        argv += macros.get(part[2:-1]) or [] if part.startswith("${") else [part]
    argv = [
        {"python": sys.executable, "logger.mode=online": "logger.mode=offline"}.get(a, a)
        for a in argv
    ]
    env = {
        "WANDB_SWEEP_ID": sweep_id,
        "WANDB_RUN_ID": run_id,
        "WANDB_SWEEP_PARAM_PATH": str(param_path),
        "WANDB_PROJECT": sweep["project"],
    }
    return argv, env


@pytest.mark.slow
def test_a_wandb_agent_sweep_cannot_overwrite_the_nested_config(tmp_path, monkeypatch):
    import os

    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    # dataset=digits: the sweep's fashion_mnist would need a download; the key is what matters.
    params = {"init": "he_xavier", "seed": 1, "dataset": "digits"}
    argv, env = agent_run(params, "swp123", "agentrun1", wandb_dir)
    assert argv[:2] == [sys.executable, "train.py"]
    proc = subprocess.run(
        [*argv, *QUICK, f"data_dir={conftest.DATA_DIR}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    assert "locked by 'sweep'" not in proc.stderr  # nothing of ours was refused
    records = wandb_records(wandb_dir / "wandb")
    run_record = one(records, "run")
    assert run_record["sweep_id"] == "swp123" and "sweep:swp123" in run_record["tags"]
    config = run_record["config"]["update"]
    assert (config["init"], config["seed"], config["dataset"]) == ("he_xavier", 1, "digits")
    assert config["init_config"]["discriminator"]["weights"]["leaky_relu"] == "kaiming_normal"
    assert config["dataset_config"]["name"] == "digits"
    assert config["hydra_overrides"][:3] == ["init=he_xavier", "seed=1", "dataset=digits"]


def test_an_artifact_that_cannot_be_logged_is_a_warning_not_a_failed_run(
    tmp_path, monkeypatch, caplog
):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    section = preset(LoggerConfig, "logger", project="p", job_type="t")
    identity = tracking.RunIdentity(tmp_path / "run", name="n", group="g", tags=(), config={})
    classifier = tmp_path / "digits-v1.pt"
    classifier.write_bytes(b"weights")
    with tracking.RunLogger(section, identity, mode="offline") as logger:
        logger.log_artifact(tmp_path / "gone.pt", name="checkpoint-x", kind="model")
        logger.log_artifact(
            classifier, name="classifier-digits", kind="classifier", aliases=("digits-v1-abc",)
        )
    assert "W&B artifact checkpoint-x not logged (ValueError" in caplog.text
    records = wandb_records(wandb_dir)
    logged = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert [(a["name"], set(a["aliases"])) for a in logged] == [
        ("classifier-digits", {"digits-v1-abc", "latest"})
    ]
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


def test_a_group_longer_than_w_and_b_takes_is_cut_to_it_and_kept_apart():
    long = "model.generator_widths=[1024,1024,1024],trainer.lr=0.0001," * 3
    cut = [tracking.within_wandb_limit(f"{long}/{arm}") for arm in ("default", "he_xavier")]
    assert all(len(c) == tracking.WANDB_GROUP_LENGTH for c in cut) and cut[0] != cut[1]
    assert tracking.within_wandb_limit("mlp_g_none/he_xavier") == "mlp_g_none/he_xavier"
