"""Bad inputs: clear errors naming the file or field, before any work."""

import json
import shutil

import pytest

from lorahub_ray.base import check_base
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError, InputError, ModuleMismatchError
from lorahub_ray.modules import index_module, load_stack
from lorahub_ray.toy import build_random_base, build_random_modules


def test_examples_file_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no examples"):
        load_examples(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "output": "b"}\n{"input": "a", \n')
    with pytest.raises(InputError, match=r"broken.jsonl, line 2: not valid JSON"):
        load_examples(broken)
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(json.dumps({"input": "a", "answer": "b"}) + "\n")
    with pytest.raises(InputError, match=r"line 1: field 'output' must be a string"):
        load_examples(missing)


def test_module_path_errors(t5_world, tmp_path):
    with pytest.raises(InputError, match="not a local directory and could not be fetched"):
        load_stack([str(tmp_path / "nowhere")])
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is not a LoRA adapter: adapter_config.json not found"):
        load_stack([str(tmp_path / "plain")])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(t5_world["modules"][0], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match=r"'.*corrupt': cannot read .* corrupt"):
        load_stack([t5_world["modules"][0], str(corrupt)])


def test_mismatched_modules_are_named(t5_world, tmp_path):
    other_rank = build_random_modules(t5_world["base"], tmp_path / "r8", count=1, rank=8)[0]
    with pytest.raises(ModuleMismatchError, match=r"module '.*r8/module_00' has `r` = 8 but module .* has 4"):
        load_stack([t5_world["modules"][0], str(other_rank)])
    other_targets = build_random_modules(t5_world["base"], tmp_path / "qk", count=1, targets=["q", "k"])[0]
    with pytest.raises(ModuleMismatchError, match=r"targets \['k', 'q'\] but module .* targets \['q', 'v'\]"):
        load_stack([t5_world["modules"][0], str(other_targets)])
    other_base = build_random_base(tmp_path / "wide", "t5", d_model=48)
    foreign = build_random_modules(other_base, tmp_path / "foreign", count=1)[0]
    with pytest.raises(ModuleMismatchError, match="base_model_name_or_path"):
        load_stack([t5_world["modules"][0], str(foreign)])
    with pytest.raises(ModuleMismatchError, match=r"module .*foreign/module_00' maps 48 -> 48 features but base model .* maps 32 -> 32"):
        check_base(index_module(str(foreign)), t5_world["base"])


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match=r"`budget` must be an integer >= 1, got 0"):
        RunConfig(base="b", modules=["m"], examples="e", budget=0)
    with pytest.raises(ConfigError, match=r"`optimizer` must be one of \['cma', 'ngopt', 'probes-cma', 'singles-cma'\], got 'sgd'"):
        RunConfig(base="b", modules=["m"], examples="e", optimizer="sgd")
    with pytest.raises(ConfigError, match="`modules` must not repeat"):
        RunConfig(base="b", modules=["m", "m"], examples="e")
    with pytest.raises(ConfigError, match=r"`num_actors` must be an integer >= 0, got -1"):
        PoolConfig(num_actors=-1)
