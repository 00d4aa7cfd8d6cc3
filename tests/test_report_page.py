"""The report page: samples per arm, per-layer diagnostics by arm, curves that show single
evaluations, the self-contained HTML, and the report written at the end of every multirun."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_report import make_run

import conftest
from gan import report, sweeps
from gan.report import columns, figures, html_page, page


def add_samples(run_dir, steps, shade):
    """Sample grids as the runs save them (samples/step_NNNNNNN.png), one flat shade each."""
    from gan.figures import pyplot

    (run_dir / "samples").mkdir()
    for step in steps:
        image = np.full((18, 18, 3), shade, dtype=float)
        pyplot().imsave(run_dir / "samples" / f"step_{step:07d}.png", image)


def diag(act_std, grad):
    return {
        "G/fc1/act_std": act_std,
        "G/fc1/dead_frac": 0.5,
        "G/fc1/grad_norm": grad,
        "G/out/act_std": act_std / 2,
        "G/out/saturated_frac": 0.1,
        "D/fc1/act_std": act_std,
        "D/fc1/dead_frac": 0.4,
        "D/fc1/grad_norm": 0.0,  # exactly 0: marked, not drawn, on the log axis
    }


@pytest.fixture
def sweep(tmp_path):
    """Two arms × 3 seeds with one evaluation each (step 200), samples and diagnostics at steps
    0 and 200; arm "zeros" has no FCD at all."""
    root = tmp_path / "sweep"
    for seed, fcd in enumerate([30.0, 10.0, 20.0]):
        run = make_run(
            root, "default", seed, [None, fcd], diag={0: diag(1.0, 1.0), 200: diag(2.0, 3.0)}
        )
        add_samples(run, [100, 200], shade=0.1 * (seed + 1))
    for seed in range(3):
        run = make_run(
            root, "zeros", seed, [None, None], diag={0: diag(4.0, 1.0), 200: diag(4.0, 5.0)}
        )
        add_samples(run, [200], shade=0.5)
    make_run(root, "zeros", 9, [None, None], status="diverged", diag={0: diag(10.0, 1.0)})
    return root


def test_samples_show_each_arms_median_fcd_seed(sweep):
    arms = report.arms_of(report.load_runs([sweep])[0])
    default, zeros = page.sample_picks(arms)
    assert default.image == sweep / "default-2" / "samples" / "step_0000200.png"  # FCD 20: median
    assert "seed 2: median final FCD 20.00, step 200" in default.title
    assert zeros.image == sweep / "zeros-0" / "samples" / "step_0000200.png"  # no FCD: first seed
    assert "(no FCD)" in zeros.title
    fig = figures.plot_samples([default, zeros], sweep / "samples.png")
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 2 and shown[0][0, 0, 0] == pytest.approx(0.3, abs=0.01)  # seed 2's grid


def test_diagnostics_by_arm_at_step_0_and_the_last_step(sweep, tmp_path):
    arms = report.arms_of(report.load_runs([sweep])[0])
    fig = figures.plot_diagnostics(arms, tmp_path / "diagnostics.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [
        "generator: activation std",
        "generator: dead fraction (into (Leaky) ReLU)",
        "generator: saturated fraction (into tanh, σ)",
        "generator: gradient norm of the weights",
        "generator: weight std",
    ]
    act, dead, saturated = fig.axes[0], fig.axes[1], fig.axes[2]
    assert act.get_yscale() == "log" and dead.get_yscale() == "linear"
    # Dead and saturated are separate quantities of separate layers: each only where it exists.
    assert [t.get_text() for t in dead.get_xticklabels()] == ["fc1", "out"]
    dead_at_0 = [ln.get_ydata() for ln in dead.lines if ln.get_linestyle() == "--"][0]
    assert dead_at_0[0] == pytest.approx(0.5) and np.isnan(dead_at_0[1])
    saturated_at_0 = [ln.get_ydata() for ln in saturated.lines if ln.get_linestyle() == "--"][0]
    assert np.isnan(saturated_at_0[0]) and saturated_at_0[1] == pytest.approx(0.1)
    drawn = {(line.get_color(), line.get_linestyle()): line.get_ydata() for line in act.lines}
    # Step 0 over every run of the arm (the diverged one included): zeros (4 + 4 + 4 + 10) / 4.
    assert list(drawn[("C1", "--")]) == pytest.approx([5.5, 2.75])
    assert list(drawn[("C0", "-")]) == pytest.approx([2.0, 1.0])  # step 200, finished runs
    d_grad = fig.axes[8]
    assert all(
        np.isnan(line.get_ydata()).all() for line in d_grad.lines if line.get_marker() == "o"
    )
    assert any(line.get_marker() == "v" for line in d_grad.lines)  # the zero is marked


def test_the_page_says_when_only_the_init_or_nothing_was_recorded(tmp_path):
    for seed in range(2):
        make_run(tmp_path / "init_only", "default", seed, [5.0 + seed])
        make_run(tmp_path / "none", "default", seed, [5.0 + seed], diag={})
    runs, _ = report.load_runs([tmp_path / "init_only"])
    text = report.write_report(runs, [], tmp_path / "init_only", None)
    assert "at step 0 only: no later diagnostic step was recorded" in text
    assert (tmp_path / "init_only" / "diagnostics.png").is_file()
    runs, _ = report.load_runs([tmp_path / "none"])
    text = report.write_report(runs, [], tmp_path / "none", None)
    assert "No run recorded per-layer diagnostics (trainer.diag_every=0)." in text
    assert not (tmp_path / "none" / "diagnostics.png").exists()


def test_curves_show_single_evaluations_and_each_seed_and_leave_no_blank_slot(sweep, tmp_path):
    arms = report.arms_of(report.load_runs([sweep])[0])
    fig = figures.plot_curves(arms, columns.CURVES, tmp_path / "curves.png")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert list(panels) == [
        "train/loss_D",
        "train/loss_G",
        "train/acc_D",
        "train/acc_G",
        "eval/fcd",
    ]
    fcd = panels["eval/fcd"]
    means = [line for line in fcd.lines if line.get_marker() == "o"]
    assert len(means) == 1 and np.isfinite(means[0].get_ydata()).all()  # one point, visible
    assert means[0].get_ydata()[0] == pytest.approx(20.0)
    seeds = [line for line in fcd.lines if line.get_alpha() == pytest.approx(0.35)]
    assert sorted(float(line.get_ydata()[0]) for line in seeds) == [10.0, 20.0, 30.0]
    assert fcd.containers  # the single point's 95 % interval, as an error bar
    loss = panels["train/loss_D"]
    assert len([line for line in loss.lines if line.get_alpha() == pytest.approx(0.35)]) == 6
    (spare,) = [ax for ax in fig.axes if not ax.get_title()]
    assert spare.get_legend() is not None  # the one free slot holds the legend


def test_report_html_is_self_contained_with_tables_rendered(sweep, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for figure in ("curves", "samples", "diagnostics"):
        assert f"![{figure}]({figure}.png)" in md
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    text_only = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in text_only and "<link" not in text_only  # nothing fetched from elsewhere
    tables_in_md = len(re.findall(r"^\|---", md, flags=re.M))
    assert page.count("<table>") == tables_in_md >= 4
    assert "<th>mean A − B</th>" in page and "<td>default</td>" in page


def test_html_rendering_of_the_markdown_it_writes(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG fake")
    md = "# Title\n## Sub\n\ntext with **bold** & `code`\nwrapped\n\n- one\n- two\n"
    md += "\n![fig](fig.png)\n"
    md += "\n| a | b |\n|---|---|\n| 1 < 2 | x |\n\n![gone](missing.png)\n"
    page = html_page.render(md, tmp_path, "T")
    assert "<h1>Title</h1>" in page and "<h2>Sub</h2>" in page
    assert "<p>text with <strong>bold</strong> &amp; <code>code</code> wrapped</p>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page
    assert "<td>1 &lt; 2</td>" in page and "(missing figure missing.png)" in page


# --- at the end of every multirun ------------------------------------------------------------


def multirun_config(sweep_dir):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})


def add_job(sweep_dir, name, run_dir=None):
    """The .hydra/overrides.yaml that makes a directory one of the sweep's jobs."""
    job = run_dir or sweep_dir / name
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- seed={name[-1]}\n")
    return job


def test_the_sweep_summary_writes_the_report_and_keeps_its_exit_status(sweep, capsys):
    for run_dir in sorted(p for p in sweep.iterdir() if p.is_dir()):
        add_job(sweep, run_dir.name, run_dir)
    sweeps.SweepSummary().on_multirun_end(multirun_config(sweep))
    out = capsys.readouterr().out
    assert f"report: {sweep / 'report' / 'report.html'}" in out
    assert {p.name for p in (sweep / "report").iterdir()} == {
        "report.md",
        "report.html",
        "curves.png",
        "samples.png",
        "diagnostics.png",
        "summary.csv",
    }
    add_job(sweep, "9_seed=9").joinpath("summary.json").write_text('{"status": "invalid"}')
    with pytest.raises(SystemExit) as exit_:
        sweeps.SweepSummary(report=True).on_multirun_end(multirun_config(sweep))
    assert exit_.value.code == 1  # an invalid job still fails the sweep, report or not
    assert "report: " in capsys.readouterr().out


def test_no_report_when_turned_off_and_one_line_when_there_is_nothing(tmp_path, capsys):
    add_job(tmp_path, "0_seed=0").joinpath("summary.json").write_text('{"status": "invalid"}')
    with pytest.raises(SystemExit):
        sweeps.SweepSummary().on_multirun_end(multirun_config(tmp_path))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("report:")]
    assert line.startswith("report: none written: no finished runs")
    with pytest.raises(SystemExit):
        sweeps.SweepSummary(report=False).on_multirun_end(multirun_config(tmp_path))
    assert "report:" not in capsys.readouterr().out


def test_a_failing_report_does_not_fail_the_sweep(sweep, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(page, "write_report", broken)
    line = sweeps.write_sweep_report(sweep)
    assert line.startswith("report: failed (RuntimeError: a bug); `python -m gan.report")


def test_the_report_key_composes_and_turns_the_report_off():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(conftest.CONF_DIR)):
        on = compose("config", return_hydra_config=True)
        off = compose(
            "config",
            overrides=["hydra.callbacks.sweep_summary.report=false"],
            return_hydra_config=True,
        )
    assert instantiate(on.hydra.callbacks.sweep_summary).report is True
    assert instantiate(off.hydra.callbacks.sweep_summary).report is False


@pytest.mark.slow
def test_a_real_multirun_ends_with_its_report(tmp_path):
    from test_sweeps import train

    sweep = tmp_path / "sweep"
    proc = train(
        "-m",
        "init=default,he_xavier",
        "trainer.steps=20",
        "trainer.log_every=5",
        "trainer.sample_every=10",
        "trainer.diag_every=10",
        "trainer.eval_every=10",
        "eval.num_samples=64",
        "logger.mode=disabled",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"report: {sweep / 'report' / 'report.html'}" in proc.stdout
    text = (sweep / "report" / "report.md").read_text()
    assert "| default | 1 | 0 |" in text and "final KCD" in text
    last = re.search(r"at step (\d+), the last diagnostic step", text)
    assert last and int(last[1]) >= 10  # the end state beside the init
    for name in ("report.html", "curves.png", "samples.png", "diagnostics.png", "summary.csv"):
        assert (sweep / "report" / name).stat().st_size > 1000
    records = [json.loads(x) for x in next(sweep.glob("0_*/metrics.jsonl")).open()]
    assert any("eval/kcd" in r and "eval/kcd_std" in r for r in records)  # runs log KCD as is


def test_a_page_inlines_only_its_own_figures(tmp_path):
    # A crafted arm name can put an image line on the page: a file elsewhere is never embedded.
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "curves.png").write_bytes(b"FIGURE")
    for src in (str(secret), "../secret.png"):
        assert "base64" not in html_page.image("x", src, tmp_path / "out")
    assert "base64" in html_page.image("x", "curves.png", tmp_path / "out")


def test_a_setting_named_dot_dot_gets_a_folder_inside_the_report():
    assert page._folders({"..": [], ".": [], "x": []}) == ["0_setting", "1_setting", "x"]
