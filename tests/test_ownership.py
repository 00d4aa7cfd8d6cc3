"""One owner per name: a metric name is spelled only by the module that logs it, a run-record file
name only by gan/record.py, a per-layer statistic's name only by gan/diagnostics.py; every other
module imports it from there."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

from conftest import ROOT
from gan import console, diagnostics, files, quality, record, trainer

METRIC_OWNERS = {
    "train": "gan/trainer.py",
    "eval": "gan/quality.py",
    "diag": "gan/diagnostics.py",
    "hist": "gan/diagnostics.py",
}
# A metric name in a string: the prefix at its start, or after a W&B column's "summary:" or a
# regex's "^" (not inside a path such as conf/eval/).
METRIC = re.compile(rf"(?<![\w/.-])({'|'.join(METRIC_OWNERS)})/")
RECORD_OWNER = "gan/record.py"
STATISTIC_OWNER = "gan/diagnostics.py"  # a per-layer statistic's name, a whole literal
RECORD_FILE = re.compile(
    r"(?<![\w.])(summary\.json|metrics\.jsonl|init_report\.json|checkpoint\.pt|train\.log)\b"
)


def literals(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal in ``source`` that is not a statement of its own
    (a docstring); an f-string's literal parts count one by one."""
    tree = ast.parse(source)
    statements = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in statements:
                yield node.lineno, node.value


def strays(module: str, source: str) -> list[str]:
    """The names ``module`` spells though another module owns them."""
    found = []
    for line, text in literals(source):
        for match in METRIC.finditer(text):
            if METRIC_OWNERS[match[1]] != module:
                found.append(f"{module}:{line}: {text!r} (owner: {METRIC_OWNERS[match[1]]})")
        if module != RECORD_OWNER and RECORD_FILE.search(text):
            found.append(f"{module}:{line}: {text!r} (owner: {RECORD_OWNER})")
        if module != STATISTIC_OWNER and text in diagnostics.AGGREGATION:
            found.append(f"{module}:{line}: {text!r} (owner: {STATISTIC_OWNER})")
    return found


def modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gan").rglob("*.py"))


def test_metric_and_record_file_names_are_spelled_only_by_their_owners():
    found = [s for m in modules() for s in strays(m, (ROOT / m).read_text())]
    assert not found, "import these names from their owner:\n" + "\n".join(found)


def test_the_check_finds_names_in_code_but_not_in_docstrings_or_comments():
    source = '''
"""A docstring may say eval/fcd and summary.json."""
def f(m, run_dir):
    """So may this one: train/loss_D."""
    # and a comment: diag/G
    return {"eval/fcd": 1, f"train/{m}": 2, "summary:eval/fcd_best": 3}, run_dir / "metrics.jsonl"
REGEX = f"^diag/{1}$"
PATH = "conf/eval/x.yaml"
PANELS = ("grad_norm", "grad_norm of D")
'''
    found = strays("gan/other.py", source)
    assert sorted(int(s.split(":")[1]) for s in found) == [6, 6, 6, 6, 7, 9]
    assert any("'^diag/'" in s for s in found)
    assert strays("gan/quality.py", '"eval/fcd"') == []
    assert strays(RECORD_OWNER, '"summary.json"') == []
    assert strays(STATISTIC_OWNER, '"grad_norm"') == []


def test_the_public_metric_names_are_unchanged():
    named = [
        trainer.LOSS_D,
        trainer.LOSS_G,
        trainer.ACC_D,
        trainer.ACC_D_REAL,
        trainer.ACC_D_FAKE,
        trainer.ACC_G,
        trainer.D_X,
        trainer.D_G_Z,
    ]
    assert named == [
        "train/loss_D",
        "train/loss_G",
        "train/acc_D",
        "train/acc_D_real",
        "train/acc_D_fake",
        "train/acc_G",
        "train/D_x",
        "train/D_G_z",
    ]
    assert named == list(trainer.METRIC_KEYS)
    assert (quality.FCD, quality.KCD, quality.FCD_BEST, quality.FCD_BEST_STEP) == (
        "eval/fcd",
        "eval/kcd",
        "eval/fcd_best",
        "eval/fcd_best_step",
    )
    assert diagnostics.histogram_key("diag/G/fc1") == "hist/G/fc1/act"


def test_the_record_files_keep_their_names():
    assert (record.SUMMARY_FILE, record.METRICS_FILE, record.INIT_REPORT_FILE) == (
        "summary.json",
        "metrics.jsonl",
        "init_report.json",
    )
    assert (record.CHECKPOINT_FILE, record.LOG_FILE, record.SAMPLES_DIR) == (
        "checkpoint.pt",
        "train.log",
        "samples",
    )
    assert record.sample_file(Path("run"), 200) == Path("run/samples/step_0000200.png")
    assert record.sample_step(record.sample_file("run", 200)) == 200


def test_the_train_log_lines_written_in_code_are_stamped_as_hydra_stamps_them():
    hydra_logging = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["hydra"]
    stamped = hydra_logging["job_logging"]["formatters"]["stamped"]["format"]
    assert console.STAMPED == stamped
    spelled = [m for m in modules() if "%(asctime)s" in (ROOT / m).read_text()]
    assert spelled == ["gan/console.py"]


def test_a_claim_keeps_the_hydra_files_the_record_names():
    # gan.files cannot import gan.record (which writes through gan.files): checked here instead.
    assert record.CONFIG_FILE in files.KEPT and record.OVERRIDES_FILE in files.KEPT
    assert {Path(name).parent.name for name in files.KEPT} == {record.HYDRA_DIR}


def test_the_tools_default_to_the_yamls_data_dir_and_the_bench_to_its_seed():
    from omegaconf import OmegaConf

    from gan import bench, probe
    from gan.config import CONF_DIR
    from gan.population import sweep_bench

    entry = OmegaConf.load(CONF_DIR / "config.yaml")
    timed = bench._parser().parse_args([])  # times a run: the run's seed
    assert (Path(timed.data_dir), timed.seed) == (Path(entry.data_dir), entry.seed)
    for args in (probe._parser().parse_args([]), sweep_bench.parse([])):
        assert Path(args.data_dir) == Path(entry.data_dir)
