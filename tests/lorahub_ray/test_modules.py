"""The module store: what must match across modules, non-finite tensors, ranks, the same module twice."""

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lorahub_ray.cli import main
from lorahub_ray.config import RunConfig
from lorahub_ray.errors import BaseNameWarning, ConfigError, InputError, ModuleMismatchError
from lorahub_ray.modules import CONFIG_FILE, index_module, load_stack
from lorahub_ray.pool import WorkerPool

WEIGHTS = "adapter_model.safetensors"


def _copy(module: str, to: Path, **config_changes) -> str:
    shutil.copytree(module, to)
    config = json.loads((to / CONFIG_FILE).read_text())
    config.update(config_changes)
    for key in [k for k, v in config_changes.items() if v is None]:
        del config[key]
    (to / CONFIG_FILE).write_text(json.dumps(config))
    return str(to)


def _poison(module: str, value: float) -> tuple[str, str]:
    """Write ``value`` into one entry of the module's second tensor; returns that tensor's key and layer path."""
    tensors = load_file(Path(module) / WEIGHTS)
    key = sorted(tensors)[1]
    tensors[key][0, 0] = value
    save_file(tensors, str(Path(module) / WEIGHTS))
    return key, key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]


def test_the_same_module_under_another_base_name_is_composed_with_a_warning(t5_world, tmp_path):
    first = t5_world["modules"][0]
    copy = _copy(t5_world["modules"][1], tmp_path / "copy", base_model_name_or_path="someone/t5-tiny")
    with pytest.warns(BaseNameWarning, match=r"different base models .*'someone/t5-tiny'"):
        stack = load_stack([first, copy])
    assert stack.names == (first, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one base name: no warning
        load_stack(t5_world["modules"])


def test_what_changes_the_maths_must_still_match(t5_world, tmp_path):
    first = t5_world["modules"][0]
    alpha = _copy(t5_world["modules"][1], tmp_path / "alpha", lora_alpha=16)
    with pytest.raises(ModuleMismatchError, match=r"'.*alpha' has `lora_alpha` = 16 but module .* has 8"):
        load_stack([first, alpha])
    rslora = _copy(t5_world["modules"][1], tmp_path / "rslora", use_rslora=True)
    with pytest.raises(ModuleMismatchError, match=r"`use_rslora` = True"):
        load_stack([first, rslora])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_tensor_is_refused_naming_module_layer_and_tensor(t5_world, tmp_path, value):
    bad = _copy(t5_world["modules"][1], tmp_path / "bad")
    key, layer = _poison(bad, value)
    with pytest.raises(InputError, match=rf"module '{bad}', layer '{layer}': tensor '{key}' .* holds 1 NaN or "
                                         "infinite value"):
        load_stack([t5_world["modules"][0], bad])


def test_a_tensor_too_large_for_float16_storage_is_refused(t5_world, tmp_path):
    big = _copy(t5_world["modules"][1], tmp_path / "big")
    _poison(big, 1e6)
    with pytest.raises(ConfigError, match=r"holds values up to 1e\+06, beyond what `module_dtype` 'float16'"):
        load_stack([t5_world["modules"][0], big], dtype="float16")
    assert load_stack([t5_world["modules"][0], big], dtype="bfloat16").num_modules == 2


@pytest.mark.parametrize("change, message", [
    ({"r": 8}, r"holds lora_A \(4, 32\) and lora_B \(32, 4\), but .*adapter_config.json has `r` = 8"),
    ({"r": None}, r"adapter_config.json has `r` = None; expected the LoRA rank"),
    ({"r": "4"}, r"adapter_config.json has `r` = '4'"),
    ({"lora_alpha": None}, r"adapter_config.json has `lora_alpha` = None; expected a finite number"),
])
def test_a_config_that_disagrees_with_its_tensors_is_refused(t5_world, tmp_path, change, message):
    bad = _copy(t5_world["modules"][0], tmp_path / "bad", **change)
    with pytest.raises(InputError, match=rf"module '{bad}'.*{message}"):
        index_module(bad)


def test_the_same_directory_spelled_differently_is_one_module(t5_world, tmp_path, monkeypatch):
    module = Path(t5_world["modules"][0])
    monkeypatch.chdir(module.parent)
    for spelling in (module.name, f"{module.name}/", f"./{module.name}", str(module), f"../{module.parent.name}/"
                     f"{module.name}"):
        with pytest.raises(ConfigError, match=rf"names one module twice: '{module}' and '{spelling}' are the same "
                                              rf"directory '{module}'"):
            RunConfig(base="b", modules=[str(module), spelling], examples="e")
    with pytest.raises(ConfigError, match=r"'org/lora' and 'org/lora' are the same hub id"):
        RunConfig(base="b", modules=["org/lora", "org/lora"], examples="e")
    os.symlink(module, tmp_path / "link")  # a link is the directory it points to
    with pytest.raises(ConfigError, match="names one module twice"):
        RunConfig(base="b", modules=[str(module), str(tmp_path / "link")], examples="e")
    assert RunConfig(base="b", modules=["org/lora", "org/LoRA-2"], examples="e").modules == ["org/lora", "org/LoRA-2"]


def test_search_refuses_a_non_finite_module_before_any_evaluation(t5_world, examples_file, tmp_path, capsys,
                                                                   monkeypatch):
    bad = _copy(t5_world["modules"][1], tmp_path / "bad")
    key, layer = _poison(bad, float("nan"))
    def no_pool(*args, **kwargs):
        raise AssertionError("an evaluator was started")

    monkeypatch.setattr(WorkerPool, "__init__", no_pool)
    args = ["search", "--base", t5_world["base"], "--modules", t5_world["modules"][0], bad, "--examples",
            str(examples_file), "--output", str(tmp_path / "out"), "--actors", "0", "--quiet"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and f"module '{bad}', layer '{layer}': tensor '{key}'" in error
    assert not (tmp_path / "out" / "result.json").exists()

