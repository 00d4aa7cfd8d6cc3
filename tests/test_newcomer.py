"""What a newcomer meets in the first hour (issue 22): the --help page, run names that carry the
setting, a resume that leaves no stray directory and reports its time honestly, the thread count
as part of a run, reports that say when there are too few seeds and never claim impossible
values, the download error's cause, digits through scikit-learn's public loader."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_report import make_run

import conftest
import train
from conftest import ROOT, run_config, torch_threads
from gan import checkpoint, config, console, data, probe, report
from gan.errors import UserError
from gan.report import columns, comparisons, figures
from gan.run import run

QUICK = [
    "logger.mode=disabled",
    "trainer.log_every=5",
    "trainer.sample_every=100",
    "trainer.diag_every=0",
    "trainer.eval_every=0",
    "trainer.ckpt_every=5",
]


@pytest.fixture
def threads():
    """A run sets torch's thread count for the whole process: put it back afterwards."""
    with torch_threads():
        yield


def train_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


# --- the command line -----------------------------------------------------------------------


def test_help_starts_with_what_this_tool_is_and_its_main_overrides(tmp_path):
    proc = train_py("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Trains one GAN")
    head = proc.stdout.split("== Configuration groups ==")[0]
    for override in ("init=he_xavier", "setting=", "trainer.threads=1", "resume=", "-m "):
        assert override in head
    assert "-sc install=bash" in head
    assert not (tmp_path / "outputs").exists()


def test_one_conf_dir_serves_train_py_the_probe_and_the_presets():
    assert config.CONF_DIR == ROOT / "conf"
    assert train.CONF_DIR is config.CONF_DIR
    assert probe.SCHEME_DIR == config.CONF_DIR / "init"
    assert (config.CONF_DIR / "hydra" / "help" / "gan.yaml").is_file()


def test_run_names_carry_the_setting_when_there_is_one(tmp_path):
    plain = run_config(["init=he_xavier"], tmp_path)
    assert plain.run_name == "he_xavier-mlp-digits-s0"
    cell = run_config(["setting=mlp_g_none", "init=he_xavier", "seed=3"], tmp_path)
    assert cell.run_name == "mlp_g_none/he_xavier-mlp-digits-s3"
    assert cell.wandb_group == "mlp_g_none/he_xavier"


# --- resume ---------------------------------------------------------------------------------


def test_a_resumed_summary_reports_the_whole_runs_time_and_names_the_resumed_part(
    tmp_path, threads
):
    first = run(run_config(["trainer.steps=5", *QUICK], tmp_path), progress=False)
    assert "resumed" not in first and first["steps_per_second"] > 0
    summary = run(run_config(["trainer.steps=10", "resume=x", *QUICK], tmp_path), progress=False)
    part = summary["resumed"]
    assert (part["from_step"], part["steps"]) == (5, 5)
    assert summary["seconds"] > part["seconds"] > 0  # the whole run, beyond the part
    assert summary["steps_per_second"] == pytest.approx(10 / summary["seconds"], rel=0.01)
    assert json.loads((tmp_path / "summary.json").read_text())["resumed"] == part


def test_a_checkpoint_without_time_says_the_seconds_are_the_resumed_parts(tmp_path, threads):
    from gan import checkpoint

    run(run_config(["trainer.steps=5", *QUICK], tmp_path), progress=False)
    blob = checkpoint.load(tmp_path)
    del blob["seconds"]  # as an older version wrote it
    checkpoint.save(tmp_path, blob)
    summary = run(run_config(["trainer.steps=10", "resume=x", *QUICK], tmp_path), progress=False)
    assert summary["seconds"] == summary["resumed"]["seconds"]
    assert "resumed part" in summary["seconds_of"]


def test_the_thread_count_is_recorded_and_a_resume_may_not_change_it(tmp_path, threads):
    summary = run(run_config(["trainer.steps=5", "trainer.threads=1", *QUICK], tmp_path))
    assert summary["threads"] == 1
    from gan import checkpoint

    assert checkpoint.load(tmp_path)["threads"] == 1
    with pytest.raises(UserError, match=r"trained with 1 CPU thread.*trainer.threads=1"):
        run(run_config(["trainer.steps=10", "trainer.threads=2", "resume=x", *QUICK], tmp_path))


def test_the_default_is_one_thread():
    assert run_config([], Path("x")).trainer.threads == 1


@pytest.mark.slow
def test_resume_leaves_no_stray_directory_and_keeps_the_runs_hydra_files(tmp_path):
    common = [*QUICK, "trainer.threads=1", f"data_dir={conftest.DATA_DIR}"]
    proc = train_py("init=he_xavier", "trainer.steps=5", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    # A refused resume must not rewrite the run's own record of what it is.
    before = (run_dir / ".hydra" / "config.yaml").read_text()
    proc = train_py(f"resume={run_dir}", "trainer.lr=0.5", cwd=tmp_path)
    assert proc.returncode == 2 and (run_dir / ".hydra" / "config.yaml").read_text() == before
    proc = train_py(f"resume={run_dir}", "trainer.steps=10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # no outputs/..._default_s0
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 10
    assert (run_dir / "resumes").is_dir()  # each resume's own Hydra record, inside its run


# --- reports at small n ---------------------------------------------------------------------


@pytest.fixture
def two_seeds(tmp_path):
    """Two arms of two seeds whose coverage and accuracies spread widely."""
    root = tmp_path / "sweep"
    arms = (("default", (6.0, 10.0), (0.9, 0.99)), ("he_xavier", (9.0, 10.0), (1.0, 1.0)))
    for arm, covered, acc in arms:
        for seed in range(2):
            evals = {"eval/classes_covered": covered[seed], "eval/kcd": 1.0 + seed}
            make_run(root, arm, seed, [30.0, 20.0 + seed], acc_d=acc[seed], evals=evals)
    return root


def test_fewer_than_five_seeds_are_warned_about_on_every_page(two_seeds, caplog):
    with caplog.at_level(logging.WARNING):
        assert report.main([str(two_seeds), "--out", str(two_seeds / "out")]) == 0
    text = (two_seeds / "out" / "report.md").read_text()
    lines = text.splitlines()
    warning = next(i for i, x in enumerate(lines) if x.startswith("> **Warning: fewer than 5"))
    assert warning < lines.index("![curves](curves.png)")  # before anything it qualifies
    assert "default: 2, he_xavier: 2" in lines[warning]
    page = (two_seeds / "out" / "report.html").read_text()
    assert '<div class="warning" role="alert"><strong>Warning: fewer than 5' in page
    assert any("fewer than 5 finished seeds" in r.message for r in caplog.records)


def test_an_atlas_warns_on_every_page_and_once_on_the_console(tmp_path, caplog):
    for dataset in ("digits", "mnist"):  # two settings
        for arm in ("default", "he_xavier"):
            for seed in range(2):
                make_run(tmp_path / dataset, arm, seed, [20.0 + seed], dataset=dataset)
    runs, _ = report.load_runs([tmp_path])
    with caplog.at_level(logging.WARNING):
        top = report.write_reports(runs, [], tmp_path, None)
    assert "> **Warning: fewer than 5" in top
    pages = [p.read_text() for p in tmp_path.glob("*/report.md")]  # one per setting
    assert len(pages) == 2 and all("> **Warning: fewer than 5" in page for page in pages)
    assert sum("fewer than 5 finished seeds" in r.message for r in caplog.records) == 1


def test_five_seeds_per_arm_get_no_warning(tmp_path):
    for arm in ("default", "he_xavier"):
        for seed in range(5):
            make_run(tmp_path, arm, seed, [20.0 + seed])
    runs, _ = report.load_runs([tmp_path])
    assert "Warning" not in report.write_report(runs, [], tmp_path, None)


def test_intervals_are_clipped_to_what_each_metric_can_take(two_seeds):
    runs, _ = report.load_runs([two_seeds])
    text = report.write_report(runs, [], two_seeds, None)
    # 8.00 ± 25.41 would claim up to 33 of 10 classes; an accuracy of 0.945 ± 0.572 above 1.
    assert "8.00 [0.00, 10.00]" in text
    assert "0.945 [0.373, 1.000]" in text
    (tested,) = comparisons.pairwise(
        report.arms_of(runs), [("default", "he_xavier")], ["eval/classes_covered"]
    )
    assert tested.tests["ci_low"] >= -10 and tested.tests["ci_high"] <= 10


def test_curve_bands_stay_in_range_and_every_axis_says_what_it_shows(two_seeds, tmp_path):
    arms = report.arms_of(report.load_runs([two_seeds])[0])
    fig = figures.plot_curves(arms, columns.CURVES, tmp_path / "curves.png")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    for key, ax in panels.items():
        assert ax.get_ylabel(), key
    acc = panels["train/acc_D"]
    edges = np.concatenate([p.get_paths()[0].vertices[:, 1] for p in acc.collections])
    assert edges.max() <= 1.0 and edges.min() >= 0.0
    mean, half = np.array([20.0, 1.0]), np.array([5.0, 4.0])
    low, high = figures.band_limits(mean, half, "eval/fcd")
    assert list(low) == [15.0, 0.0] and list(high) == [25.0, 5.0]


def test_each_metric_has_its_range():
    from gan.report.stats import clip_difference, clip_interval

    assert clip_interval(-3.0, 12.0, "eval/classes_covered") == (0.0, 10.0)
    assert clip_interval(-0.1, 0.4, "eval/kcd") == (-0.1, 0.4)  # unbiased: may be below 0
    assert clip_difference(-1.5, 0.2, "train/acc_G") == (-1.0, 0.2)
    assert clip_difference(-900.0, 5.0, "eval/fcd") == (-900.0, 5.0)
    assert math.isinf(clip_interval(1.0, math.inf, "eval/fcd")[1])


# --- data -----------------------------------------------------------------------------------


def test_digits_come_from_sklearns_loader_bit_identical_to_its_csv():
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        pytest.skip("this scikit-learn ships no digits.csv.gz to compare against")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # what data.py read before
    order = np.random.default_rng(0).permutation(len(table))
    for train_split, rows in ((True, order[:-360]), (False, order[-360:])):
        split = data.load(conftest.data_source("digits"), train=train_split)
        expected = torch.from_numpy(table[rows, :64]).reshape(-1, 1, 8, 8) / 8.0 - 1.0
        assert split.images.dtype == torch.float32 and torch.equal(split.images, expected)
        assert torch.equal(split.labels, torch.from_numpy(table[rows, 64]).long())


def test_a_failed_download_says_why(tmp_path, monkeypatch):
    from torchvision import datasets

    class Offline:
        def __init__(self, root, train, download):
            if download:
                raise RuntimeError(
                    "Error downloading train-images-idx3-ubyte.gz:\n"
                    "Tried https://mirror.one/, got:\n"
                    "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
                    "Tried https://mirror.two/, got:\n"
                    "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
                )
            raise RuntimeError("Dataset not found.")

    monkeypatch.setattr(datasets, "MNIST", Offline)
    with pytest.raises(UserError) as err:
        data.load(conftest.data_source("mnist", root=tmp_path), train=True)
    message = str(err.value)
    assert "Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -3]" in message
    assert message.count("Temporary failure") == 1  # the same cause once, not per mirror
    assert data.download_cause(OSError()) == "OSError"


@pytest.mark.parametrize(
    ("argv0", "command"),
    [
        ("/home/me/.venv/bin/gan-train", "gan-train"),
        ("/home/me/project/gan/__main__.py", "python -m gan"),
        ("train.py", "python train.py"),
        ("/home/me/project/train.py", "python train.py"),
    ],
)
def test_printed_commands_start_as_the_user_started_training(monkeypatch, argv0, command):
    monkeypatch.setattr(sys, "argv", [argv0, "init=he_xavier"])
    assert console.train_command() == command
    assert checkpoint.resume_command("outputs/run").startswith(f"{command} resume=")
