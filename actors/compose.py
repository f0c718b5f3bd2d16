"""LoRA composition: candidate weights w -> the composed factors of every layer, written in place.

Symbols: N modules, r rank, d_in / d_out the layer's widths. Two compositions are offered:
- ``ab`` (LoraHub): A' = sum_i w_i A_i and B' = sum_i w_i B_i, so dW = s * B' A' (with cross terms);
- ``delta`` (task arithmetic): dW = s * sum_i w_i B_i A_i, written as one rank-N*r factor pair.
Two ways to apply a composition in place are offered, both exact and drift-free:
- `MergedLayer` adds s * B' A' to a pristine copy of the base weight (the forward then costs
  exactly the bare base model's);
- `SlotLayer` writes the factors into a fixed PEFT LoRA slot (the base weight is never touched).
To score P candidates in one forward pass, `BatchedLayer` adds each candidate's own composition to its
rows of the batch (the base weight stays plain). This file holds the only code that writes composed LoRA weights.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("ab", "delta")


def compose_factors(
    weights: torch.Tensor, A: torch.Tensor, B: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose one layer's factors so that the update is ``scaling * B' @ A'``.

    Args:
        weights: ``(N,)`` one candidate's weights, or ``(P, N)`` for P candidates at once.
        A: ``(N, r, d_in)`` stacked ``lora_A``.
        B: ``(N, d_out, r)`` stacked ``lora_B``.
        mode: ``"ab"`` (rank r result) or ``"delta"`` (rank N*r result, exact sum of w_i B_i A_i).

    Returns:
        ``(A', B')``: ``(r, d_in), (d_out, r)`` for ``ab`` and ``(N*r, d_in), (d_out, N*r)`` for ``delta``,
        each with a leading ``P`` when ``weights`` has one (``delta``'s A' is shared by all candidates).
    """
    N, r, d_in = A.shape
    d_out = B.shape[1]
    if mode == "ab":
        A_c = torch.tensordot(weights, A, dims=1)  # ([P,] r, d_in)
        B_c = torch.tensordot(weights, B, dims=1)  # ([P,] d_out, r)
    elif mode == "delta":
        A_c = A.reshape(N * r, d_in)  # (N*r, d_in), a view
        scaled = B * weights[..., :, None, None]  # ([P,] N, d_out, r)
        B_c = scaled.movedim(-3, -2).reshape(*weights.shape[:-1], d_out, N * r)  # ([P,] d_out, N*r)
    else:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    return A_c, B_c


class MergedLayer:
    """Applies a composition by merging it into a linear layer's weight, from a pristine copy."""

    def __init__(self, linear: nn.Module, scaling: float, fan_in_fan_out: bool = False) -> None:
        self.weight = linear.weight  # the live parameter, overwritten on every `apply`
        self.pristine = linear.weight.detach().clone()  # never modified: no drift across candidates
        self.scaling = scaling
        self.fan_in_fan_out = fan_in_fan_out

    @torch.no_grad()
    def apply(self, A_c: torch.Tensor, B_c: torch.Tensor) -> None:
        """Set ``weight = pristine + scaling * B_c @ A_c`` in one fused call."""
        if self.fan_in_fan_out:  # weight is (d_in, d_out)
            torch.addmm(self.pristine, A_c.T, B_c.T, alpha=self.scaling, out=self.weight.data)
        else:  # weight is (d_out, d_in)
            torch.addmm(self.pristine, B_c, A_c, alpha=self.scaling, out=self.weight.data)


class SlotLayer:
    """Applies a composition by writing it into a PEFT LoRA layer's ``lora_A`` / ``lora_B`` slot.

    The slot must have been created with ``lora_alpha == r`` (scaling 1); the modules' own scaling
    is folded into ``lora_B``.
    """

    def __init__(self, lora_layer: nn.Module, scaling: float, adapter_name: str = "default") -> None:
        self.lora_A = lora_layer.lora_A[adapter_name].weight  # (r_slot, d_in)
        self.lora_B = lora_layer.lora_B[adapter_name].weight  # (d_out, r_slot)
        self.scaling = scaling

    @torch.no_grad()
    def apply(self, A_c: torch.Tensor, B_c: torch.Tensor) -> None:
        self.lora_A.data.copy_(A_c)
        torch.mul(B_c, self.scaling, out=self.lora_B.data)


class BatchedLayer:
    """Adds a different composition to each candidate's rows of a batch, through a forward hook.

    The batch holds P candidates' examples, candidate-major: rows ``[p*E, (p+1)*E)`` belong to candidate p, or,
    when candidates score different example sets (``rows`` given), candidate p owns ``rows[p]`` consecutive rows.
    Each candidate's rows get ``scaling * x A'_p^T B'_p^T`` on top of the layer's own output, so the layer itself
    must hold the plain base weight while factors are set.
    """

    def __init__(self, layer: nn.Module, scaling: float) -> None:
        self.scaling = scaling
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None  # (A' ([P,] r', d_in), B' (P, d_out, r'))
        self.owner: torch.Tensor | None = None  # (R,) the candidate of each batch row, when row counts differ
        layer.register_forward_hook(self._hook)

    def set(self, A_c: torch.Tensor | None, B_c: torch.Tensor | None = None,
            rows: torch.Tensor | None = None) -> None:
        """Use these per-candidate factors in the following forwards (``None`` switches the hook off); ``rows``
        ``(P,)``: each candidate's number of batch rows, when they differ."""
        self.factors = None if A_c is None else (A_c, B_c)
        self.owner = None if rows is None else torch.repeat_interleave(torch.arange(len(rows), device=rows.device),
                                                                       rows)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self.factors is None:
            return None
        A_c, B_c = self.factors
        x = args[0]  # (R, T, d_in): R = P*E rows
        if self.owner is not None:  # each row with its own candidate's factors
            A_rows = A_c[self.owner] if A_c.dim() == 3 else A_c  # (R, r', d_in), or (r', d_in) shared
            low_rank = torch.matmul(x, A_rows.transpose(-1, -2))  # (R, T, r')
            return output + self.scaling * torch.matmul(low_rank, B_c[self.owner].transpose(-1, -2))
        grouped = x.reshape(B_c.shape[0], -1, x.shape[-1])  # (P, E*T, d_in)
        low_rank = torch.matmul(grouped, A_c.transpose(-1, -2))  # (P, E*T, r')
        delta = torch.matmul(low_rank, B_c.transpose(-1, -2))  # (P, E*T, d_out)
        return output + self.scaling * delta.reshape(output.shape)
