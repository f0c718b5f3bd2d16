"""ModuleCache: the module pool held on the actor's device, and the base layers it writes into.

Symbols: N modules, r rank, d_in / d_out the layer's widths.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from actors.compose import MODES, BatchedLayer, MergedLayer, SlotLayer, compose_factors
from actors.stack import LoraStack, as_tensor

APPLY_METHODS = ("merge", "slot")


class ModuleCache:
    """Stacks every module's A/B per layer on the device once and applies candidate weights in place.

    Args:
        model: the base model; it is modified in place (merged weights or an injected LoRA slot).
        stack: the module pool.
        mode: ``"ab"`` or ``"delta"`` (see `actors.compose`).
        apply: ``"merge"`` (into pristine copies of the base weights) or ``"slot"`` (a PEFT LoRA slot).
    """

    def __init__(self, model: nn.Module, stack: LoraStack, mode: str = "ab", apply: str = "merge") -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if apply not in APPLY_METHODS:
            raise ValueError(f"`apply` must be one of {APPLY_METHODS}, got {apply!r}")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.mode, self.num_modules = mode, stack.num_modules
        self._paths = paths = [layer.path for layer in stack.layers]
        self.targets: list[MergedLayer] | list[SlotLayer]
        if apply == "merge":
            self.targets = [MergedLayer(model.get_submodule(p), stack.scaling, stack.fan_in_fan_out) for p in paths]
        else:
            slot_rank = stack.rank * (self.num_modules if mode == "delta" else 1)
            _inject_slot(model, paths, slot_rank, stack.fan_in_fan_out)
            self.targets = [SlotLayer(model.get_submodule(p), stack.scaling) for p in paths]
        model.to(self.device)
        self._model, self._scaling = model, stack.scaling
        self.set_stack(stack)
        self._batched: list[BatchedLayer] = []  # hooks, created on first use of `apply_population`

    def set_stack(self, stack: LoraStack) -> None:
        """Hold another pool of modules adapting the same layers (any N; not with a ``delta`` slot, sized by N)."""
        if self.mode == "delta" and isinstance(self.targets[0], SlotLayer) and stack.num_modules != self.num_modules:
            raise ValueError("a `delta` composition in a LoRA slot cannot change its number of modules")
        if [layer.path for layer in stack.layers] != self._paths:
            raise ValueError("the new module stack adapts other layers")
        self.num_modules = stack.num_modules
        # Views of the shared arrays when device and dtype match (CPU, same dtype); copies otherwise.
        self.A = [as_tensor(layer.A, stack.dtype).to(self.device, self.dtype) for layer in stack.layers]  # (N, r, d_in)
        self.B = [as_tensor(layer.B, stack.dtype).to(self.device, self.dtype) for layer in stack.layers]  # (N, d_out, r)

    @torch.no_grad()
    def apply(self, weights: np.ndarray) -> None:
        """Compose the modules with ``weights`` (shape ``(N,)``) and write the result into every layer."""
        if weights.shape != (self.num_modules,):
            raise ValueError(f"weights must have shape ({self.num_modules},), got {weights.shape}")
        w = torch.as_tensor(weights, device=self.device, dtype=self.dtype)  # (N,)
        for A, B, target in zip(self.A, self.B, self.targets):
            target.apply(*compose_factors(w, A, B, self.mode))


    @torch.no_grad()
    def apply_population(self, population: np.ndarray | None, rows: list[int] | None = None) -> None:
        """Prepare one forward pass for P candidates ``(P, N)``: candidate p's composition goes to its own rows
        (an equal share of the batch, or ``rows[p]`` consecutive rows when candidates score different example sets).

        The layers are reset to the plain base model and every layer's hook gets the P compositions;
        ``None`` switches the hooks off again.
        """
        if population is None:
            for layer in self._batched:
                layer.set(None)
            return
        if population.ndim != 2 or population.shape[1] != self.num_modules:
            raise ValueError(f"population must have shape (P, {self.num_modules}), got {population.shape}")
        if not self._batched:
            self._batched = [BatchedLayer(self._model.get_submodule(p), self._scaling) for p in self._paths]
        self.apply(np.zeros(self.num_modules))  # plain base weights under the hooks
        w = torch.as_tensor(population, device=self.device, dtype=self.dtype)  # (P, N)
        counts = None if rows is None or len(set(rows)) == 1 else torch.tensor(rows, device=self.device)  # (P,)
        for A, B, layer in zip(self.A, self.B, self._batched):
            layer.set(*compose_factors(w, A, B, self.mode), rows=counts)


def _inject_slot(model: nn.Module, paths: list[str], rank: int, fan_in_fan_out: bool) -> None:
    """Give every adapted layer an empty PEFT LoRA slot of the given rank with scaling 1."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=paths, fan_in_fan_out=fan_in_fan_out
    )
    dtype = next(model.parameters()).dtype
    inject_adapter_in_model(config, model)
    for path in paths:
        model.get_submodule(path).to(dtype)
