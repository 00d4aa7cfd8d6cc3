"""`python -m gan.dashboard`: the W&B workspace is built offline; only its save is stubbed."""

from __future__ import annotations

import json
import sys

import pytest

from gan import dashboard
from gan.diagnostics import AGGREGATION
from gan.trainer import METRIC_KEYS

pytest.importorskip("wandb_workspaces")


def panels(workspace, section: str) -> list:
    (found,) = [s for s in workspace.sections if s.name == section]
    return found.panels


def test_workspace_has_the_panels_grouping_and_sweep_filter():
    workspace = dashboard.build_workspace("me", "gan-init", sweep="2026-01-02-03-04-05")
    assert (workspace.entity, workspace.project) == ("me", "gan-init")
    assert [p.y for p in panels(workspace, "Training")] == [
        ["train/loss_D"],
        ["train/loss_G"],
        ["train/acc_D"],
        ["train/acc_G"],
        ["train/D_x"],
        ["train/D_G_z"],
    ]
    assert [p.y for p in panels(workspace, "Evaluation")][:2] == [["eval/fcd"], ["eval/kcd"]]
    diag = panels(workspace, "Per-layer diagnostics")
    assert {p.metric_regex for p in diag} == {
        f"^diag/{net}/.+/{stat}$" for net in ("G", "D") for stat in AGGREGATION
    }
    assert all(
        p.x == "Step" and p.groupby_aggfunc == "mean" for s in workspace.sections for p in s.panels
    )
    runs = workspace.runset_settings
    assert [g.name for g in runs.groupby] == ["Group"]  # the W&B group: the init arm
    assert runs.filters == "Metric(\"Tags\") in ['sweep:2026-01-02-03-04-05']"


def test_without_a_sweep_every_run_of_the_project_is_shown():
    assert dashboard.build_workspace("me", "p").runset_settings.filters == ""


def test_the_saved_spec_groups_by_run_group_and_filters_on_the_sweep_tag():
    """What W&B receives: the serialized view."""
    spec = dashboard.build_workspace("me", "p", sweep="abc")._to_model().spec
    runset = json.loads(spec.model_dump_json(by_alias=True, exclude_none=True))["section"]
    (run_set,) = runset["runSets"]
    assert run_set["grouping"] == [{"section": "run", "name": "group"}]
    (condition,) = run_set["filters"]["filters"]
    assert condition["key"] == {"section": "run", "name": "tags"}
    assert (condition["op"], condition["value"]) == ("IN", ["sweep:abc"])


def test_panels_name_metrics_the_runs_log():
    """A renamed training metric or diagnostic must not leave an empty dashboard panel."""
    assert set(dashboard.TRAINING) <= set(METRIC_KEYS)
    assert set(dashboard.DIAGNOSTICS) == set(AGGREGATION)


def test_dry_run_prints_the_layout_without_network_or_login(capsys, monkeypatch):
    monkeypatch.setattr(dashboard, "save", lambda w: pytest.fail("a dry run saved"))
    assert dashboard.main(["--dry-run", "--sweep", "sweep:abc"]) == 0
    out = capsys.readouterr().out
    assert "in <your default entity>/gan-init" in out  # logger.project from conf/config.yaml
    assert "['sweep:abc']" in out  # the tag itself is accepted as the id
    assert "G act_std per layer: ^diag/G/.+/act_std$ against Step, log y" in out
    assert "dry run: nothing was saved" in out


def test_saving_prints_the_workspace_url(capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    saved = []

    def fake_save(workspace):
        saved.append(workspace)
        return "https://wandb.ai/me/proj?nw=abc"

    monkeypatch.setattr(dashboard, "save", fake_save)
    assert dashboard.main(["--entity", "me", "--project", "proj", "--sweep", "s1"]) == 0
    assert capsys.readouterr().out == "W&B workspace: https://wandb.ai/me/proj?nw=abc\n"
    (workspace,) = saved
    assert (workspace.entity, workspace.project) == ("me", "proj")
    assert "sweep:s1" in workspace.runset_settings.filters


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no W&B credentials found"),  # conftest hides every credential
        (["--project", "me/proj"], "--project must be one W&B project name"),
        (["--project", ""], "--project must be one W&B project name"),
        (["--sweep", " "], "--sweep must name a sweep id"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(argv, message, caplog):
    assert dashboard.main(argv) == 2
    assert message in caplog.text


def test_a_failed_save_is_one_message(caplog, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)

    def refused(workspace):
        raise RuntimeError("403 Forbidden")

    monkeypatch.setattr(dashboard, "save", refused)
    assert dashboard.main(["--entity", "someone-else"]) == 2
    assert "W&B could not save the workspace (RuntimeError: 403 Forbidden)" in caplog.text


def test_a_missing_package_says_how_to_install_it(caplog, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("wandb_workspaces")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # import fails
    assert dashboard.main(["--dry-run"]) == 2
    assert "pip install 'gan-init[dashboard]'" in caplog.text
