"""The recipes of docs/ARCHITECTURE.md ("Where to add"), followed by the letter.

A model added as its recipe says trains, is refused on an image it cannot take, gets
channels_last and joins a population with no other edit; and every file and test a recipe names
exists.
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir

import conftest
import train
from conftest import CONF_DIR, ROOT
from gan import nets, trainer
from gan.errors import UserError
from gan.nets import wants_channels_last
from gan.population.stacked import StackedNet
from gan.run import build_networks, run

TOY = "toy_conv"


def toy_builder(image_shape, z_dim, g_widths, d_widths, slope, *, g_norm, d_norm):
    """A convolutional model of its own name (the DCGAN's layers, one stage each way)."""
    return nets.dcgan(image_shape, z_dim, g_widths, d_widths, slope, g_norm=g_norm, d_norm=d_norm)


def toy_fits(model, image_shape):
    if image_shape[1] % 4:
        raise UserError(f"model={TOY} needs an image side divisible by 4, got {image_shape[1]}")


@pytest.fixture
def toy_model(tmp_path, monkeypatch):
    """The recipe: a builder registered in nets.ARCHITECTURES and conf/model/NAME.yaml (in a copy
    of conf/, so the checkout is left as it was). Returns the copy's directory."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "model" / f"{TOY}.yaml").write_text(
        f"name: {TOY}\nz_dim: 16\nslope: 0.2\ngenerator_widths: [16]\n"
        "discriminator_widths: [16]\ng_norm: batch\nd_norm: batch\n"
    )
    entry = nets.Architecture(toy_builder, convolutional=True, fits=toy_fits)
    monkeypatch.setitem(nets.ARCHITECTURES, TOY, entry)
    monkeypatch.setattr(nets, "MODELS", tuple(nets.ARCHITECTURES))
    return conf


def toy_config(conf, out_dir, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(
            "config",
            overrides=[f"data_dir={conftest.DATA_DIR}", f"model={TOY}", *overrides],
            return_hydra_config=True,
        )
    return train.to_run_config(cfg, cfg.hydra, out_dir)


def test_a_model_added_by_its_recipe_works_everywhere_with_no_other_edit(toy_model, tmp_path):
    quick = ["trainer.steps=4", "trainer.log_every=2", "trainer.eval_every=0", "trainer.threads=1"]
    cfg = toy_config(toy_model, tmp_path / "run", *quick, "logger.mode=disabled")
    assert wants_channels_last(TOY, "auto")  # convolutional: channels_last on a CPU by default
    with pytest.raises(UserError, match="divisible by 4"):
        nets.check(cfg.model, (1, 6, 6))  # the config check refuses before any data is loaded
    summary = run(cfg, progress=False)
    assert summary["status"] == "finished" and summary["model"] == TOY
    members = []
    for seed in (0, 1):  # a population stacks it as it stacks the project's models
        g, _, _ = build_networks(toy_config(toy_model, tmp_path / f"m{seed}", f"seed={seed}"))
        members.append(g.eval())
    z = torch.randn(2, 3, 16)
    images = StackedNet(members, "generator").eval()(z)
    for k, g in enumerate(members):
        torch.testing.assert_close(images[k], g(z[k]), rtol=1e-5, atol=1e-6)


def named_in_recipes() -> list[str]:
    """Every file path (gan/…, conf/…, tests/…) and test (tests/x.py::name) the recipes name."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    recipes = text[text.index("## Where to add") :]
    return sorted(set(re.findall(r"`((?:gan|conf|tests)/[\w/.]+(?:::\w+)?)`", recipes)))


@pytest.mark.parametrize("name", named_in_recipes())
def test_every_file_and_test_a_recipe_names_exists(name):
    path, _, test = name.partition("::")
    if "NAME" in path:  # the file the recipe has you add
        assert (ROOT / path.split("NAME")[0]).is_dir(), name
        return
    assert (ROOT / path).exists(), name
    if test:
        assert re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.M), name


def test_what_the_dashboard_and_the_report_show_is_what_is_logged():
    from gan import dashboard, diagnostics
    from gan.report import columns, figures

    declared = set(diagnostics.AGGREGATION)
    assert set(dashboard.DIAGNOSTICS) <= declared
    assert {stat for stats, _ in figures.DIAG_PANELS for stat in stats} <= declared
    assert dashboard.TRAINING == columns.TRAINING_CURVES
    assert set(columns.TRAINING_CURVES) <= set(trainer.METRIC_KEYS)
