"""The module store: PEFT LoRA adapters (local dirs or hub ids) indexed lazily, then stacked into a `LoraStack`.

Indexing a module reads its ``adapter_config.json`` and its safetensors header only (names and shapes);
tensors are read (memory-mapped) when a stack of selected modules is built, one module at a time, so a
pool of thousands of modules costs its file index, not its weights.
Symbols: N modules, r rank, d_in / d_out the adapted layer's widths.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actors.stack import STORAGE_DTYPES, LayerStack, LoraStack, as_tensor, to_storage
from lorahub_ray.errors import BaseNameWarning, ConfigError, InputError, ModuleMismatchError

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
FACTOR_SUFFIXES = {"A": ".lora_A.weight", "B": ".lora_B.weight"}
MUST_MATCH = ("r", "lora_alpha", "use_rslora", "fan_in_fan_out")  # what changes the maths; names of the base may differ


@dataclass
class ModuleEntry:
    """One adapter as indexed: its config, weight file, and the tensor key and shape of each factor per layer."""

    name: str
    directory: Path
    config: dict
    weight_file: Path
    keys: dict[str, dict[str, str]]  # layer path -> {"A": tensor key, "B": tensor key}
    shapes: dict[str, dict[str, tuple[int, ...]]]  # layer path -> {"A": (r, d_in), "B": (d_out, r)}

    @property
    def scaling(self) -> float:
        r, alpha = self.config["r"], self.config["lora_alpha"]
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def read_factors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The module's tensors, read now (memory-mapped for safetensors)."""
        try:
            if self.weight_file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(self.weight_file), framework="pt") as handle:
                    return {path: {k: handle.get_tensor(key) for k, key in pair.items()}
                            for path, pair in self.keys.items()}
            state = torch.load(self.weight_file, map_location="cpu", weights_only=True)
            return {path: {k: state[key] for k, key in pair.items()} for path, pair in self.keys.items()}
        except Exception as err:
            raise InputError(f"module {self.name!r}: cannot read {self.weight_file} ({type(err).__name__}: {err}); "
                             "the file is corrupt") from None


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
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"module {name!r} is not a local directory and could not be fetched from the hub "
                         f"({type(err).__name__}: {first_line})") from None


def index_module(name: str) -> ModuleEntry:
    """Index one PEFT LoRA adapter (config and tensor shapes), raising `InputError` that names the module."""
    directory = resolve_adapter_dir(name)
    config = _read_config(name, directory / CONFIG_FILE)
    weight_file = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if weight_file is None:
        raise InputError(f"module {name!r}: no adapter weights in {str(directory)!r} "
                         f"(expected one of {list(WEIGHT_FILES)})")
    keys: dict[str, dict[str, str]] = {}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in _read_shapes(name, weight_file).items():
        kind = next((k for k, suffix in FACTOR_SUFFIXES.items() if key.endswith(suffix)), None)
        if kind is None:
            raise InputError(f"module {name!r}: tensor {key!r} is not a LoRA A/B weight; "
                             "only plain LoRA adapters (no DoRA, biases or saved modules) can be composed")
        path = key[: -len(FACTOR_SUFFIXES[kind])].removeprefix(PEFT_PREFIX)
        keys.setdefault(path, {})[kind] = key
        shapes.setdefault(path, {})[kind] = shape
    incomplete = sorted(p for p, pair in keys.items() if len(pair) != 2)
    if incomplete or not keys:
        raise InputError(f"module {name!r}: missing lora_A or lora_B for layers {incomplete or 'all'}")
    _check_rank(name, config, directory / CONFIG_FILE, weight_file, shapes)
    return ModuleEntry(name, directory, config, weight_file, keys, shapes)


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
    for field in ("use_dora", "rank_pattern", "alpha_pattern"):
        if config.get(field):
            raise InputError(f"module {name!r}: `{field}` = {config[field]!r} is not supported; "
                             "composition needs one rank and one scaling for every layer, without DoRA")
    return config


def _check_rank(name: str, config: dict, config_file: Path, weight_file: Path,
                shapes: dict[str, dict[str, tuple[int, ...]]]) -> None:
    """The config's ``r`` and ``lora_alpha`` must be numbers, and every A ``(r, d_in)`` and B ``(d_out, r)`` of rank r:
    PEFT builds its layers from the config and could not load tensors of another rank."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InputError(f"module {name!r}: {config_file} has `r` = {r!r}; expected the LoRA rank, an integer >= 1")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise InputError(f"module {name!r}: {config_file} has `lora_alpha` = {alpha!r}; expected a finite number")
    for path, pair in shapes.items():
        if len(pair["A"]) != 2 or len(pair["B"]) != 2 or pair["A"][0] != r or pair["B"][1] != r:
            raise InputError(f"module {name!r}, layer {path!r}: {weight_file} holds lora_A {pair['A']} and lora_B "
                             f"{pair['B']}, but {config_file} has `r` = {r}; expected ({r}, d_in) and (d_out, {r})")


def _read_shapes(name: str, path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes; for safetensors from the header alone."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        return {key: tuple(t.shape) for key, t in torch.load(path, map_location="cpu", weights_only=True).items()}
    except Exception as err:
        raise InputError(f"module {name!r}: cannot read {path} ({type(err).__name__}: {err}); "
                         "the file is corrupt or not a PEFT adapter weight file") from None


def check_distinct(names: Sequence[str]) -> None:
    """No module may be named twice: local paths are compared resolved (``a``, ``a/``, ``./a``, ``/abs/a``), hub ids
    as given.

    Raises:
        ConfigError: naming both spellings of the repeated module.
    """
    seen: dict[str, str] = {}
    for name in names:
        local = os.path.exists(name)
        key = str(Path(name).resolve()) if local else name
        if key in seen:
            same = f"the same directory {key!r}" if local else "the same hub id"
            raise ConfigError(f"`modules` names one module twice: {seen[key]!r} and {name!r} are {same}")
        seen[key] = name


def check_compatible(entries: Sequence[ModuleEntry]) -> None:
    """Every module must share the first one's rank, scaling, targets, layers and shapes (what changes the maths).

    Modules whose configs name different base models (``base_model_name_or_path``) are accepted with a
    `BaseNameWarning`: the same base saved under two paths, or a hub id and its local copy, is common.
    """
    first = entries[0]
    for entry in entries[1:]:
        for field in MUST_MATCH:
            if entry.config.get(field) != first.config.get(field):
                raise ModuleMismatchError(
                    f"module {entry.name!r} has `{field}` = {entry.config.get(field)!r} but module "
                    f"{first.name!r} has {first.config.get(field)!r}; all modules must share it")
        targets, first_targets = (sorted(e.config.get("target_modules") or []) for e in (entry, first))
        if targets != first_targets:
            raise ModuleMismatchError(f"module {entry.name!r} targets {targets} but module {first.name!r} "
                                      f"targets {first_targets}")
        if entry.shapes.keys() != first.shapes.keys():
            diff = sorted(entry.shapes.keys() ^ first.shapes.keys())
            raise ModuleMismatchError(f"module {entry.name!r} adapts other layers than {first.name!r}: {diff[:3]}")
        for path, pair in entry.shapes.items():
            for kind in ("A", "B"):
                if pair[kind] != first.shapes[path][kind]:
                    raise ModuleMismatchError(
                        f"module {entry.name!r}, layer {path!r}: lora_{kind} has shape {pair[kind]}, "
                        f"expected {first.shapes[path][kind]} as in {first.name!r}")
    _warn_on_base_names(entries)


def _warn_on_base_names(entries: Sequence[ModuleEntry]) -> None:
    names = {e.name: e.config.get("base_model_name_or_path") for e in entries}
    if len(set(names.values())) > 1:
        shown = ", ".join(f"{module!r}: {base!r}" for module, base in list(names.items())[:4])
        warnings.warn(f"the modules name different base models in `base_model_name_or_path` ({shown}); their "
                      "ranks, scalings, targets and shapes match, so they are composed as adapters of one base",
                      BaseNameWarning, stacklevel=3)


def stack_modules(entries: Sequence[ModuleEntry], dtype: str = "float32") -> LoraStack:
    """Read compatible modules one at a time into stacked arrays (A: ``(N, r, d_in)``, B: ``(N, d_out, r)``)."""
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"`dtype` of a module stack must be one of {list(STORAGE_DTYPES)}, got {dtype!r}")
    check_compatible(entries)
    first = entries[0]
    store = STORAGE_DTYPES[dtype]
    arrays = {path: {k: np.empty((len(entries), *shape), dtype=store) for k, shape in pair.items()}
              for path, pair in first.shapes.items()}
    for index, entry in enumerate(entries):
        for path, pair in entry.read_factors().items():
            for kind, tensor in pair.items():
                arrays[path][kind][index] = _finite(entry, path, kind, tensor, dtype)
    return LoraStack(
        names=tuple(e.name for e in entries),
        layers=tuple(LayerStack(path, arrays[path]["A"], arrays[path]["B"]) for path in first.shapes),
        scaling=first.scaling, rank=int(first.config["r"]), fan_in_fan_out=bool(first.config.get("fan_in_fan_out")),
        peft_config=dict(first.config), dtype=dtype,
    )


def _finite(entry: ModuleEntry, path: str, kind: str, tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """``tensor`` in the storage ``dtype``, once checked to hold only finite values there.

    Raises:
        InputError: the module's tensor holds NaN or infinite values (naming the module, layer and tensor).
        ConfigError: it is finite but overflows ``dtype`` (float16 holds at most 65504).
    """
    where = f"module {entry.name!r}, layer {path!r}: tensor {entry.keys[path][kind]!r} in {entry.weight_file}"
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise InputError(f"{where} holds {bad} NaN or infinite value(s); every weight of a module must be finite")
    stored = to_storage(tensor, dtype)
    if not torch.isfinite(as_tensor(stored, dtype)).all():
        raise ConfigError(f"{where} holds values up to {float(tensor.abs().max()):.4g}, beyond what `module_dtype` "
                          f"{dtype!r} can hold; use 'float32' or 'bfloat16'")
    return stored


def load_stack(names: Sequence[str], dtype: str = "float32") -> LoraStack:
    """Index, validate and stack the named modules."""
    return stack_modules([index_module(name) for name in names], dtype)
