"""Checking a base model and a module pool against each other, without loading any weights."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig

from lorahub_ray.errors import InputError, ModuleMismatchError
from lorahub_ray.gguf import gguf_config, is_gguf
from lorahub_ray.modules import ModuleEntry


def skeleton(base: str) -> nn.Module:
    """The base model's architecture on the meta device: shapes and module paths, no memory.

    Raises:
        InputError: ``base`` is no model directory or hub id, or a ``.gguf`` file that cannot be read.
        ConfigError: ``base`` is a ``.gguf`` file and the ``gguf`` package is missing.
    """
    config = gguf_config(base) if is_gguf(base) else _config(base)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def _config(base: str) -> PretrainedConfig:
    """The config of the model directory or hub id ``base``."""
    try:
        return AutoConfig.from_pretrained(base)
    except Exception as err:  # no such directory or hub id, no config.json, or one that is not a model's
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(f"base model {base!r} could not be loaded: no model config.json found locally or on the hub "
                         f"({type(err).__name__}: {first_line})") from None


def check_base(module: ModuleEntry, base: str) -> None:
    """Every layer the (indexed) module adapts must exist in the base model as a linear layer of matching shape."""
    model = skeleton(base)
    fan_in_fan_out = bool(module.config.get("fan_in_fan_out"))
    for path, shapes in module.shapes.items():
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            raise ModuleMismatchError(
                f"module {module.name!r} adapts layer {path!r}, which base model {base!r} does not have") from None
        weight = getattr(layer, "weight", None)
        if weight is None or weight.dim() != 2:
            raise ModuleMismatchError(f"layer {path!r} of base model {base!r} is not a linear layer")
        d_out, d_in = weight.shape[::-1] if fan_in_fan_out else weight.shape
        (_, a_in), (b_out, _) = shapes["A"], shapes["B"]
        if (a_in, b_out) != (d_in, d_out):
            raise ModuleMismatchError(
                f"layer {path!r}: module {module.name!r} maps {a_in} -> {b_out} features but base model "
                f"{base!r} maps {d_in} -> {d_out}; the modules were trained on another base model")
