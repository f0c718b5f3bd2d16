"""Writing results: the composed weights as a standard PEFT adapter, ``result.json``, and a merged model.

Symbols: N modules, r rank, d_in / d_out the layer's widths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from actors.compose import compose_factors
from actors.stack import LoraStack, as_tensor
from lorahub_ray.modules import PEFT_PREFIX

ADAPTER_DIR = "adapter"
RESULT_FILE = "result.json"
MERGED_DIR = "merged"
CONVERGENCE_CHART = "convergence.png"  # written by `lorahub-ray show`
WEIGHTS_CHART = "weights.png"  # written by `lorahub-ray show`


def composed_adapter(stack: LoraStack, weights: np.ndarray, mode: str, base: str) -> tuple[dict, dict]:
    """The PEFT ``adapter_config.json`` dict and state dict that reproduce the composition exactly.

    ``ab`` keeps the modules' rank and scaling. ``delta`` is saved as one LoRA of rank N*r whose ``lora_A``
    stacks every module's A and whose ``lora_B`` holds every ``w_i B_i`` side by side; its ``lora_alpha``
    is set so that the scaling stays the modules' own.
    """
    w = torch.as_tensor(weights, dtype=torch.float32)  # (N,)
    tensors = {}
    for layer in stack.layers:
        A, B = as_tensor(layer.A, stack.dtype).float(), as_tensor(layer.B, stack.dtype).float()
        A_c, B_c = compose_factors(w, A, B, mode)
        tensors[f"{PEFT_PREFIX}{layer.path}.lora_A.weight"] = A_c.contiguous()  # (r', d_in)
        tensors[f"{PEFT_PREFIX}{layer.path}.lora_B.weight"] = B_c.contiguous()  # (d_out, r')
    config = dict(stack.peft_config, base_model_name_or_path=base, inference_mode=True)
    if mode == "delta":
        rank = stack.rank * stack.num_modules
        config["r"] = rank
        config["lora_alpha"] = stack.scaling * (math.sqrt(rank) if config.get("use_rslora") else rank)
    return config, tensors


def write_adapter(directory: Path, stack: LoraStack, weights: np.ndarray, mode: str, base: str) -> Path:
    """Write the composed adapter as ``adapter_config.json`` + ``adapter_model.safetensors`` in ``directory``."""
    from safetensors.torch import save_file

    config, tensors = composed_adapter(stack, weights, mode, base)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory


def write_merged(directory: Path, base: str, adapter: Path) -> Path:
    """Merge the adapter into the base model and save the full model and tokenizer to ``directory``."""
    from actors.model import load_base, quiet_loading
    from lorahub_ray.gguf import is_gguf, plain_copy
    from peft import PeftModel

    model, tokenizer = load_base(base, torch.device("cpu"))
    with quiet_loading():
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if is_gguf(base):
        merged = plain_copy(merged)  # a model loaded from GGUF refuses save_pretrained
    with quiet_loading():
        merged.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
