"""Greedy generation and exact-match accuracy (normalised ``strip().lower().replace(".", "")``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerBase


def normalize(text: str) -> str:
    """The answer normalisation used for exact match."""
    return text.strip().lower().replace(".", "")


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 128,
) -> list[str]:
    """Greedy answers for ``inputs`` (decoder-only prompts are the input bytes as given, left-padded)."""
    model.eval()
    encoder_decoder = bool(model.config.is_encoder_decoder)
    out: list[str] = []
    for start in range(0, len(inputs), batch_size):
        chunk = list(inputs[start : start + batch_size])
        if encoder_decoder:
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        else:
            rows = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in chunk]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
            )[:, width:]
        out.extend(tokenizer.batch_decode(gen, skip_special_tokens=True))
    return out


def exact_match_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, str]],
    max_new_tokens: int = 16,
) -> float:
    """Fraction of ``examples`` whose greedy answer equals ``output`` after `normalize`."""
    if not examples:
        return float("nan")
    preds = greedy_generate(model, tokenizer, [ex["input"] for ex in examples], max_new_tokens)
    return sum(normalize(p) == normalize(ex["output"]) for p, ex in zip(preds, examples)) / len(examples)
