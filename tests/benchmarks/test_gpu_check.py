"""The prepared GPU check: it refuses a machine without CUDA, and its CPU dry run writes every figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_check_refuses_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "run_checks", lambda mode: pytest.fail("work started"))
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--out", str(tmp_path / "gpu.json")])
    assert stop.value.code == 2 and not (tmp_path / "gpu.json").exists()
    assert "--cpu-dry-run" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_the_cpu_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--out", str(out)],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    figures = json.loads(out.read_text())
    assert set(figures) == {"mode", "config", "versions", "device", "dtypes", "passes", "actors", "many", "shapes",
                            "ratios", "wall_seconds"}
    assert figures["mode"] == "dry" and figures["device"]["name"] == "cpu" and figures["versions"]["torch"]
    devices = figures["actors"]["devices"]
    assert [(row["gpus_per_actor"], row["actors"]) for row in devices] == [(0.0, 1), (0.5, 2), (1.0, 1)]
    assert all(row["device"] == ["cpu"] * row["actors"] and len(row["gpu_ids"]) == row["actors"] for row in devices)

    dtypes = figures["dtypes"]
    f32, bf16 = np.array(dtypes["float32_losses"]), np.array(dtypes["bfloat16_losses"])
    assert len(f32) == len(bf16) == dtypes["candidates"] and np.all(np.isfinite(f32)) and np.all(np.isfinite(bf16))
    assert dtypes["max_abs_diff"] == pytest.approx(np.abs(bf16 - f32).max()) and dtypes["max_abs_diff"] > 0

    passes = figures["passes"]
    assert [row["candidates_per_pass"] for row in passes] == [1, 8, 32]
    for row in passes:  # no out-of-memory on tiny shapes: the pass size is kept
        assert row["pass_size_after"] == row["candidates_per_pass"] and row["failed"] == 0
        assert row["evaluations"] == 32 and row["evals_per_s"] == pytest.approx(32 / row["seconds"])
    rate = {row["candidates_per_pass"]: row["evals_per_s"] for row in passes}
    assert figures["ratios"]["pass8_vs_pass1"] == pytest.approx(rate[8] / rate[1])

    search = figures["actors"]["search"]
    assert search["one_actor"]["evaluations"] == search["two_actors"]["evaluations"] == search["budget"] == 8
    assert search["same_history"] is True and search["max_score_diff"] == 0.0
    assert search["one_actor"]["best_weights"] == search["two_actors"]["best_weights"]

    many = figures["many"]
    assert (many["searches"], many["budget"], many["one_after_another_measured"]) == (3, 8, 3)
    assert many["same_results"] is True and many["max_best_score_diff"] == 0.0, "each search as it is alone"
    assert figures["ratios"]["many_vs_one_after_another"] == pytest.approx(
        many["one_after_another_seconds_for_all"] / many["many_seconds"])

    shapes = figures["shapes"]
    assert [row["shape"] for row in shapes["rows"]] == list(gpu_check.SHAPE_MODELS["dry"])
    assert shapes["peak_flops"] > 0
    for row in shapes["rows"]:
        timings = [row[key] for key in row if key.endswith("_ms")]
        assert all(np.isfinite(ms) and ms > 0 for ms in timings)
        assert row["answer_tokens"] < row["tokens"] and row["flops"] >= 2 * row["parameters"] * row["answer_tokens"]
        assert row["best_ms"] == min(row[key] for key in row if key.startswith(("default_ms", "bfloat16_pass"))
                                     and key.endswith("_ms"))
        assert row["default_vs_best"] == pytest.approx(row["best_ms"] / row["default_ms"])
        assert row["default_vs_best"] <= 1
        assert row["compute_limit_ms"] == pytest.approx(1e3 * row["flops"] / shapes["peak_flops"])
        assert figures["ratios"][f"{row['shape']}_default_vs_best"] == pytest.approx(row["default_vs_best"])
        profiled = row["profile"]  # one pass of the default settings, profiled
        assert "error" not in profiled and profiled["candidates"] == max(row["default_pass"], 2)
        assert profiled["profile"]["matmul_ms"] > 0 and "outside_operators_ms" in profiled["profile"]
