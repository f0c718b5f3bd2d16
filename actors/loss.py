"""Few-shot loss: token cross-entropy on the output tokens, and the two objectives built from it.

Symbols: E examples, T length, V vocabulary.
- ``default``: mean cross-entropy over every target token of every example (independent of batch size).
- ``reference``: the reference implementation's number: the batch-mean loss summed over batches of
  ``batch_size`` examples, divided by the number of examples (with one batch: mean-token CE / E).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from actors.examples import IGNORE, ExampleBatch

OBJECTIVES = ("default", "reference")


@torch.no_grad()
def example_token_losses(model: nn.Module, batch: ExampleBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one forward pass; return each example's summed token cross-entropy ``(E,)`` and token count ``(E,)``."""
    if batch.encoder_decoder:
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch.labels)  # (E, T_out)
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=decoder_input_ids
        ).logits  # (E, T_out, V)
        labels = batch.labels  # (E, T_out)
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]  # (E, T-1, V)
        labels = batch.labels[:, 1:]  # (E, T-1): position t predicts token t+1
    token_ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(labels.shape)  # (E, T)
    return token_ce.sum(dim=1), (labels != IGNORE).sum(dim=1)


def objective_loss(
    sums: torch.Tensor, counts: torch.Tensor, objective: str = "default", batch_size: int | None = None
) -> float:
    """Combine per-example ``sums`` / ``counts`` into the objective's loss.

    Args:
        sums: ``(E,)`` summed token cross-entropy per example.
        counts: ``(E,)`` target tokens per example.
        objective: ``"default"`` or ``"reference"``.
        batch_size: the reference's batch size (``None``: all examples in one batch).
    """
    if objective == "default":
        return float(sums.sum() / counts.sum())
    if objective == "reference":
        size = batch_size or len(sums)
        batch_means = [sums[i : i + size].sum() / counts[i : i + size].sum() for i in range(0, len(sums), size)]
        return float(torch.stack(batch_means).sum() / len(sums))
    raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}")
