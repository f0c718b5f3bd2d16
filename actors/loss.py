"""Few-shot loss: token cross-entropy on the output tokens, and the two objectives built from it.

Symbols: E examples, T length, V vocabulary, H hidden width, K answer tokens of the batch.
A decoder-only model whose logits are exactly ``lm_head(last hidden state)`` (the families in `PLAIN_HEAD`) runs
its body alone, and its LM head only at the K positions whose next token is a label, in float32: a prompt's
positions never cost a vocabulary projection. Others (a logit scale or softcap after the head, as in Gemma 2,
Cohere or Granite; encoder-decoders, whose labels are all answer tokens anyway) take the model's full forward.
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
# model types whose causal-LM logits are the output embedding of the body's last hidden state, nothing more
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2", "gemma"})


@torch.no_grad()
def example_token_losses(model: nn.Module, batch: ExampleBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one forward pass; return each example's summed token cross-entropy ``(E,)`` and token count ``(E,)``."""
    if not batch.encoder_decoder and plain_head(model):
        return _answer_token_losses(model, batch)
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


def plain_head(model: nn.Module) -> bool:
    """Whether ``model``'s logits are exactly its linear output embedding applied to its body's last hidden state."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return getattr(model.config, "model_type", None) in PLAIN_HEAD and isinstance(head, nn.Linear)


def _answer_token_losses(model: nn.Module, batch: ExampleBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """`example_token_losses` of a decoder-only `PLAIN_HEAD` model: its body over the whole sequence, its head only
    at the K positions that predict a label, in float32."""
    hidden = model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).last_hidden_state  # (E, T, H)
    rows, cols = torch.nonzero(batch.labels[:, 1:] != IGNORE, as_tuple=True)  # (K,), (K,): position t predicts t+1
    head = model.get_output_embeddings()
    bias = None if head.bias is None else head.bias.float()
    logits = F.linear(hidden[rows, cols].float(), head.weight.float(), bias)  # (K, V)
    token_ce = F.cross_entropy(logits, batch.labels[rows, cols + 1], reduction="none")  # (K,)
    E = len(batch)
    sums = torch.zeros(E, dtype=token_ce.dtype, device=token_ce.device).index_add_(0, rows, token_ce)  # (E,)
    return sums, torch.bincount(rows, minlength=E)  # (E,), (E,)


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
