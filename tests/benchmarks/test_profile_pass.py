"""The pass profile: its parts add up, its operator groups count each operator once, kernels are not counted twice."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_pass  # noqa: E402


def _event(key: str, calls: int, cpu_us: float, device_us: float = 0.0, device_type=DeviceType.CPU):
    return SimpleNamespace(key=key, count=calls, self_cpu_time_total=cpu_us, self_device_time_total=device_us,
                           device_type=device_type)


EVENTS = [_event("aten::mm", 60, 6000, 5000), _event("aten::addmm", 4, 2000, 1000),
          _event("aten::_scaled_dot_product_flash_attention", 2, 1000, 800), _event("aten::mul", 30, 500, 200),
          _event("sm90_xmma_gemm_bf16", 64, 0, 6000, DeviceType.CUDA)]


def test_on_the_cpu_operator_self_times_are_grouped_per_pass_and_the_rest_is_outside_operators():
    groups = profile_pass.operator_groups(EVENTS, wall_ms=24.0, device="cpu", passes=2)
    assert (groups["matmul_ms"], groups["attention_ms"], groups["other_ops_ms"]) == (4.0, 0.5, 0.25 + 0.0)
    assert groups["outside_operators_ms"] == pytest.approx(12.0 - 4.75) and groups["wall_ms"] == 12.0
    assert groups["operator_calls"] == (60 + 4 + 2 + 30 + 64) / 2
    assert [e["operator"] for e in groups["top"]][:2] == ["aten::mm", "aten::addmm"]


def test_on_cuda_kernels_count_once_through_the_operator_that_launched_them():
    groups = profile_pass.operator_groups(EVENTS, wall_ms=10.0, device="cuda", passes=1)
    assert (groups["matmul_ms"], groups["attention_ms"], groups["other_ops_ms"]) == (6.0, 0.8, 0.2)
    assert groups["device_idle_ms"] == pytest.approx(10.0 - 7.0) and "outside_operators_ms" not in groups
    assert "sm90_xmma_gemm_bf16" not in [e["operator"] for e in groups["top"]]


@pytest.mark.slow
def test_the_dry_run_times_every_part_and_profiles_the_pass(tmp_path, capsys):
    out = tmp_path / "profile.json"
    figures = profile_pass.main(["--dry-run", "--candidates", "3", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == figures
    assert (figures["shape"], figures["device"], figures["dtype"], figures["candidates"]) == (
        "tiny-llama", "cpu", "float32", 3)
    assert figures["rows"] == 3 * 5 and figures["tokens"] > figures["rows"]
    assert all(figures[f"{part}_ms"] > 0 for part in ("pass", "body", "compose"))
    assert figures["lora_ms"] == pytest.approx(figures["pass_ms"] - figures["compose_ms"] - figures["body_ms"])
    ops = figures["profile"]
    assert ops["passes"] == profile_pass.REPEATS and ops["matmul_ms"] > 0 and ops["attention_ms"] > 0
    assert ops["wall_ms"] == pytest.approx(ops["matmul_ms"] + ops["attention_ms"] + ops["other_ops_ms"]
                                           + ops["outside_operators_ms"])
    assert len(ops["top"]) == profile_pass.TOP and "aten::mm" in [e["operator"] for e in ops["top"]]
    assert "matmul" in capsys.readouterr().out


def test_a_pass_of_one_candidate_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        profile_pass.main(["--dry-run", "--candidates", "1"])
    assert stop.value.code == 2 and "--candidates" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_is_refused_where_torch_sees_none(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        profile_pass.main(["--dry-run", "--device", "cuda", "--out", str(tmp_path / "p.json")])
    assert stop.value.code == 2 and "CUDA" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
