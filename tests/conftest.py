"""Shared fixtures: tiny random base models and LoRA modules built offline, few-shot examples, a local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorahub_ray.toy import build_random_base, build_random_modules

EXAMPLES = [
    {"input": "Reverse the word: abc\nAnswer:", "output": "cba"},
    {"input": "Reverse the word: hello\nAnswer:", "output": "olleh"},
    {"input": "Reverse the word: ray\nAnswer:", "output": "yar"},
    {"input": "Reverse the word: lora\nAnswer:", "output": "arol"},
    {"input": "Reverse the word: tiny\nAnswer:", "output": "ynit"},
]


@pytest.fixture(scope="session", params=["t5", "llama"])
def world(request, tmp_path_factory) -> dict:
    """A base model of each kind with three random modules (encoder-decoder and decoder-only)."""
    root = tmp_path_factory.mktemp(f"world_{request.param}")
    base = build_random_base(root / "base", request.param)
    modules = build_random_modules(base, root / "modules", count=3, rank=4, seed=1)
    return {"kind": request.param, "base": str(base), "modules": [str(m) for m in modules], "root": root}


@pytest.fixture(scope="session")
def t5_world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("t5_world")
    base = build_random_base(root / "base", "t5")
    modules = build_random_modules(base, root / "modules", count=3, rank=4, seed=1)
    return {"kind": "t5", "base": str(base), "modules": [str(m) for m in modules], "root": root}


@pytest.fixture()
def examples_file(tmp_path) -> Path:
    path = tmp_path / "fewshot.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for this test module; shut down after it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
