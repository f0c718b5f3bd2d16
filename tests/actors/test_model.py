"""Device choice from what a worker reserved, and loading that leaves the caller's settings alone."""

import subprocess
import sys
import warnings

import pytest
import torch
from transformers.utils import logging as hf_logging

from actors.model import load_base, pick_device, split_gguf


@pytest.fixture()
def node_with_gpus(monkeypatch):
    """This process sees two GPUs, as a process on a GPU node does whatever its actor reserved."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_an_actor_that_reserved_no_gpu_computes_on_cpu_on_a_gpu_node(node_with_gpus):
    assert pick_device("auto", gpu_ids=[], gpus=0.0) == torch.device("cpu")
    assert pick_device("auto", gpu_ids=["1"], gpus=0.0) == torch.device("cpu")  # ids without a reservation
    assert pick_device("auto", gpu_ids=[], gpus=0.5) == torch.device("cpu")  # reserved, but none assigned
    assert pick_device("cpu", gpu_ids=["0"], gpus=1.0) == torch.device("cpu")


def test_an_actor_that_reserved_and_was_assigned_a_gpu_computes_on_cuda(node_with_gpus):
    assert pick_device("auto", gpu_ids=["0"], gpus=0.5) == torch.device("cuda")
    assert pick_device("cuda", gpu_ids=[1], gpus=1.0) == torch.device("cuda")


def test_cuda_in_an_actor_without_a_gpu_is_refused(node_with_gpus):
    with pytest.raises(ValueError, match=r"device 'cuda' needs a GPU, but this actor reserved 0.0 GPUs"):
        pick_device("cuda", gpu_ids=[], gpus=0.0)


def test_in_process_the_device_follows_the_setting_and_what_the_process_sees(node_with_gpus, monkeypatch):
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")


def test_loading_leaves_progress_bars_and_warning_filters_as_they_were(t5_world):
    hf_logging.enable_progress_bar()
    filters = list(warnings.filters)
    load_base(t5_world["base"], torch.device("cpu"))
    assert hf_logging.is_progress_bar_enabled()
    assert warnings.filters == filters
    hf_logging.disable_progress_bar()
    load_base(t5_world["base"], torch.device("cpu"))
    assert not hf_logging.is_progress_bar_enabled()  # a caller's choice is kept either way
    hf_logging.enable_progress_bar()


def test_importing_the_worker_side_installs_no_warning_filter():
    code = ("import warnings, actors.model, actors.worker; "
            "print([str(f[1].pattern) for f in warnings.filters if f[1] is not None])")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "is_gradient_checkpointing" not in printed and printed.startswith("[")


def test_split_gguf_turns_a_gguf_path_into_from_pretrained_arguments():
    assert split_gguf("models/smol.Q4_1.GGUF") == ("models", {"gguf_file": "smol.Q4_1.GGUF"})
    assert split_gguf("smol.gguf") == (".", {"gguf_file": "smol.gguf"})
    assert split_gguf("models/smol") == ("models/smol", {})
    assert split_gguf("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", {})
