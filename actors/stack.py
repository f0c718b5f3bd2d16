"""The module pool as stacked arrays: one (A, B) pair per LoRA layer, every module along axis 0.

Symbols: N modules, r rank, d_in / d_out the adapted layer's input / output width.
Arrays are numpy so that the driver can put one copy into Ray's object store and every
actor on a node reads it zero-copy. They are held in float32, float16, or bfloat16 (numpy has no bfloat16:
its bits are held as uint16 and viewed as bfloat16 by torch, still without a copy).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@dataclass(frozen=True)
class LayerStack:
    """Every module's LoRA factors for one adapted layer.

    Args:
        path: the layer's module path inside the base model, e.g. ``encoder.block.0.layer.0.SelfAttention.q``.
        A: ``(N, r, d_in)`` stacked ``lora_A`` weights.
        B: ``(N, d_out, r)`` stacked ``lora_B`` weights.
    """

    path: str
    A: np.ndarray  # (N, r, d_in)
    B: np.ndarray  # (N, d_out, r)


@dataclass(frozen=True)
class LoraStack:
    """A validated pool of N compatible LoRA modules.

    Args:
        names: the N modules as the user gave them (paths or hub ids), in weight order.
        layers: one `LayerStack` per adapted layer, in a fixed order.
        scaling: the LoRA scaling every module shares (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA).
        rank: the rank r every module shares.
        fan_in_fan_out: True when the base layers store their weight as ``(d_in, d_out)`` (GPT-2 ``Conv1D``).
        peft_config: the first module's ``adapter_config.json``, the template for the exported adapter.
        dtype: how the arrays hold the weights, a key of `STORAGE_DTYPES`.
    """

    names: tuple[str, ...]
    layers: tuple[LayerStack, ...]
    scaling: float
    rank: int
    fan_in_fan_out: bool
    peft_config: dict
    dtype: str = "float32"

    @property
    def num_modules(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return sum(layer.A.nbytes + layer.B.nbytes for layer in self.layers)

    def select(self, indices: list[int]) -> LoraStack:
        """The stack of the modules at ``indices``, in that order (copies of their arrays)."""
        return replace(self, names=tuple(self.names[i] for i in indices),
                       layers=tuple(LayerStack(layer.path, layer.A[indices], layer.B[indices]) for layer in self.layers))


def to_storage(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """A torch tensor as a numpy array of the storage ``dtype`` (bfloat16 as its uint16 bits)."""
    if dtype == "bfloat16":
        return tensor.to(torch.bfloat16).view(torch.uint16).numpy()
    return tensor.to(getattr(torch, dtype)).numpy()


def as_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A stored array as a torch tensor, without copying (object-store arrays are read-only; nothing writes them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the array is not writable
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor
