"""The module store: PEFT LoRA adapters (local dirs or hub ids) -> one validated `LoraStack`.

Symbols: N modules, r rank, d_in / d_out the adapted layer's widths.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actors.stack import LayerStack, LoraStack
from lorahub_ray.errors import InputError, ModuleMismatchError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
FACTOR_SUFFIXES = {"A": ".lora_A.weight", "B": ".lora_B.weight"}
MUST_MATCH = ("r", "lora_alpha", "use_rslora", "fan_in_fan_out", "base_model_name_or_path")


@dataclass
class LoraModule:
    """One adapter as read from disk: its config and its ``lora_A`` / ``lora_B`` per layer path."""

    name: str
    config: dict
    factors: dict[str, dict[str, np.ndarray]]  # layer path -> {"A": (r, d_in), "B": (d_out, r)}

    @property
    def scaling(self) -> float:
        r, alpha = self.config["r"], self.config["lora_alpha"]
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r


def resolve_adapter_dir(name: str) -> Path:
    """A local adapter directory as is; otherwise the hub id's files, fetched into the local HF cache."""
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"module {name!r} is a file; expected a PEFT adapter directory with {CONFIG_FILE}")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=[CONFIG_FILE, *WEIGHT_FILES]))
    except Exception as err:  # offline, unknown repo, invalid id: all mean "not found" to the user
        raise InputError(
            f"module {name!r} is not a local directory and could not be fetched from the hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def load_module(name: str) -> LoraModule:
    """Read one PEFT LoRA adapter, raising `InputError` that names the module for anything unusable."""
    directory = resolve_adapter_dir(name)
    config = _read_config(name, directory / CONFIG_FILE)
    weights = _read_weights(name, directory)
    factors: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in weights.items():
        kind = next((k for k, suffix in FACTOR_SUFFIXES.items() if key.endswith(suffix)), None)
        if kind is None:
            raise InputError(f"module {name!r}: tensor {key!r} is not a LoRA A/B weight; "
                             "only plain LoRA adapters (no DoRA, biases or saved modules) can be composed")
        path = key[: -len(FACTOR_SUFFIXES[kind])].removeprefix(PEFT_PREFIX)
        factors.setdefault(path, {})[kind] = tensor.float().numpy()
    incomplete = sorted(p for p, f in factors.items() if len(f) != 2)
    if incomplete or not factors:
        raise InputError(f"module {name!r}: missing lora_A or lora_B for layers {incomplete or 'all'}")
    return LoraModule(name, config, factors)


def _read_config(name: str, path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"module {name!r} is not a LoRA adapter: {CONFIG_FILE} not found in {str(path.parent)!r}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"module {name!r}: {path} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise InputError(f"module {name!r}: {path} has peft_type "
                         f"{config.get('peft_type') if isinstance(config, dict) else None!r}, expected 'LORA'")
    for field, bad in (("use_dora", True), ("rank_pattern", None), ("alpha_pattern", None)):
        value = config.get(field)
        if (bad is True and value) or (bad is None and value):
            raise InputError(f"module {name!r}: `{field}` = {value!r} is not supported; "
                             "composition needs one rank and one scaling for every layer, without DoRA")
    return config


def _read_weights(name: str, directory: Path) -> dict[str, torch.Tensor]:
    path = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if path is None:
        raise InputError(f"module {name!r}: no adapter weights in {str(directory)!r} (expected one of {list(WEIGHT_FILES)})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"module {name!r}: cannot read {path} ({type(err).__name__}: {err}); "
                         "the file is corrupt or not a PEFT adapter weight file") from None


def check_compatible(modules: Sequence[LoraModule]) -> None:
    """Every module must share the first one's base model, rank, scaling, targets, layers and shapes."""
    first = modules[0]
    for module in modules[1:]:
        for field in MUST_MATCH:
            if module.config.get(field) != first.config.get(field):
                raise ModuleMismatchError(
                    f"module {module.name!r} has `{field}` = {module.config.get(field)!r} but module "
                    f"{first.name!r} has {first.config.get(field)!r}; all modules must share it")
        if set(module.config.get("target_modules") or []) != set(first.config.get("target_modules") or []):
            raise ModuleMismatchError(
                f"module {module.name!r} targets {sorted(module.config.get('target_modules') or [])} but module "
                f"{first.name!r} targets {sorted(first.config.get('target_modules') or [])}")
        if module.factors.keys() != first.factors.keys():
            diff = sorted(module.factors.keys() ^ first.factors.keys())
            raise ModuleMismatchError(f"module {module.name!r} adapts other layers than {first.name!r}: {diff[:3]}")
        for path, pair in module.factors.items():
            for kind in ("A", "B"):
                if pair[kind].shape != first.factors[path][kind].shape:
                    raise ModuleMismatchError(
                        f"module {module.name!r}, layer {path!r}: lora_{kind} has shape {pair[kind].shape}, "
                        f"expected {first.factors[path][kind].shape} as in {first.name!r}")


def stack_modules(modules: Sequence[LoraModule], dtype: np.dtype = np.float32) -> LoraStack:
    """Stack compatible modules into one `LoraStack` (A: ``(N, r, d_in)``, B: ``(N, d_out, r)`` per layer)."""
    check_compatible(modules)
    first = modules[0]
    layers = tuple(
        LayerStack(
            path=path,
            A=np.stack([m.factors[path]["A"] for m in modules]).astype(dtype, copy=False),  # (N, r, d_in)
            B=np.stack([m.factors[path]["B"] for m in modules]).astype(dtype, copy=False),  # (N, d_out, r)
        )
        for path in first.factors
    )
    return LoraStack(
        names=tuple(m.name for m in modules),
        layers=layers,
        scaling=first.scaling,
        rank=int(first.config["r"]),
        fan_in_fan_out=bool(first.config.get("fan_in_fan_out")),
        peft_config=dict(first.config),
    )


def load_stack(names: Sequence[str]) -> LoraStack:
    """Load, validate and stack the named modules."""
    return stack_modules([load_module(name) for name in names])
