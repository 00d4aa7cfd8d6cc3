"""The benchmark script runs (a quick mode proves it works; timings are not asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import torch_threads
from gan import bench, nets
from gan.config import ModelConfig, TrainerConfig, preset
from gan.errors import UserError
from gan.trainer import GANTrainer

QUICK = ["--dataset", "digits", "--steps", "3", "--repeats", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("model", nets.MODELS)  # every model, a new one included
def test_bench_quick_mode_prints_a_table_and_a_json_line(model, capsys, tmp_path):
    assert bench.main(["--model", model, *QUICK, "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "× reference" in out and "logging overhead" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) >= {"ratio", "logging_overhead", "reference", "project", "project_nolog"}
    assert result["channels_last"] is nets.architecture(model).convolutional
    assert all(result[k]["steps_per_s"] > 0 for k in ("reference", "project", "project_nolog"))


@pytest.mark.slow
def test_bench_applies_the_speed_options_to_the_project_loop(capsys, tmp_path, monkeypatch):
    built = []

    def recording_trainer(g, d, images, section, **kwargs):
        built.append({"compile": section.compile, "precision": kwargs["precision"]})
        return GANTrainer(g, d, images, section, **kwargs)

    monkeypatch.setattr(bench, "GANTrainer", recording_trainer)
    options = ["--precision", "bf16", "--channels-last", "on", "--data-dir", str(tmp_path)]
    assert bench.main(["--model", "mlp", *QUICK, *options]) == 0
    assert built == [{"compile": False, "precision": "bf16"}] * 2  # logging on and off
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    settings = (result["precision"], result["channels_last"], result["compile"])
    assert settings == ("bf16", True, False) and result["precision_resolved"] == "bf16"
    assert {"model", "avx2", "avx512_bf16", "amx_bf16", "native_bf16"} <= set(result["cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where CUDA is missing")
def test_a_bench_device_error_names_the_bench_s_own_option():
    args = bench._parser().parse_args(["--device", "cuda"])
    refused = "--device=cuda but CUDA is not available here; use --device=auto"
    with pytest.raises(UserError, match=refused):
        bench.setup(args)


def test_bench_measures_auto_precision_by_default():
    args = bench._parser().parse_args([])
    assert args.precision == "auto"


def test_the_bench_runs_what_a_run_of_the_yaml_would():
    args = bench._parser().parse_args(["--model", "dcgan", "--dataset", "digits"])
    run = preset(TrainerConfig, "trainer")
    assert (args.batch_size, args.device, args.channels_last) == (
        run.batch_size,
        run.device,
        run.channels_last,
    )
    setup = bench.setup(args)
    assert setup.trainer == run  # lr, betas, periods: the YAML's
    assert setup.model == preset(ModelConfig, "model", "dcgan") and setup.channels_last
    assert setup.precision in ("fp32", "bf16")


def test_bench_times_every_loop_with_the_threads_it_is_given(capsys, tmp_path):
    with torch_threads(2):  # put back afterwards: the option sets the whole process's count
        args = ["--model", "mlp", *QUICK, "--threads", "1", "--data-dir", str(tmp_path)]
        assert bench.main([*args, "--population", "2"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["threads"] == 1 and result["members"] == 2
    # The draws alone take part of the step, never more than all of it.
    assert 0 < result["draws_ms_per_step"] and "its draws alone: " in out
    members_s = result["member_steps_per_s"]["population"]
    assert result["draws_ms_per_step"] < 1000 * 2 / members_s
