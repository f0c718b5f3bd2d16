"""Tokenising few-shot examples once into padded tensors with loss labels on the output tokens only.

Symbols: E examples, T sequence length. Labels are ``-100`` wherever no loss is taken.
- Encoder-decoder: encoder reads ``input``; labels are the tokenised ``output`` (with the tokenizer's end token).
- Decoder-only: the sequence is the ``input`` tokens exactly as given, then the ``output`` tokens and the end
  token; the input positions are masked. No template is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100
TokenRow = tuple[list[int], list[int]]  # one example's `example_ids`


@dataclass
class ExampleBatch:
    """Padded model inputs for E examples.

    Args:
        input_ids: ``(E, T)`` encoder input (encoder-decoder) or the whole sequence (decoder-only).
        attention_mask: ``(E, T)``.
        labels: ``(E, T_out)`` target ids, ``-100`` where ignored.
        encoder_decoder: whether labels feed a decoder (True) or are aligned with ``input_ids`` (False).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    encoder_decoder: bool

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> ExampleBatch:
        return ExampleBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.encoder_decoder
        )

    def repeat(self, times: int) -> ExampleBatch:
        """``times`` copies of the batch, copy-major: rows ``[k*E, (k+1)*E)`` are copy k."""
        return ExampleBatch(self.input_ids.repeat(times, 1), self.attention_mask.repeat(times, 1),
                            self.labels.repeat(times, 1), self.encoder_decoder)

    def select(self, rows: slice) -> ExampleBatch:
        return ExampleBatch(self.input_ids[rows], self.attention_mask[rows], self.labels[rows], self.encoder_decoder)


@dataclass(frozen=True)
class ExampleSets:
    """Several searches' few-shot example sets for one worker; a candidate names the set it is scored on by its
    index (see `actors.worker.Worker.evaluate`)."""

    sets: tuple[tuple[dict[str, str], ...], ...]

    def __post_init__(self) -> None:
        if not self.sets or not all(self.sets):
            raise ValueError("ExampleSets needs at least one set, and no empty set")


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A decoder-only prompt: the tokenizer's leading special tokens kept, a trailing end token dropped."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def example_ids(tokenizer: PreTrainedTokenizerBase, example: dict[str, str],
                encoder_decoder: bool) -> TokenRow:
    """One example's unpadded token ids: (encoder input, target) or (whole sequence, aligned labels)."""
    if encoder_decoder:
        return tokenizer(example["input"])["input_ids"], tokenizer(example["output"])["input_ids"]
    prompt = prompt_ids(tokenizer, example["input"])
    answer = tokenizer(example["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def collate(rows: Sequence[TokenRow], pad_id: int, encoder_decoder: bool) -> ExampleBatch:
    """Pad `example_ids` rows into one `ExampleBatch`."""
    inputs = [row[0] for row in rows]
    labels = [row[1] for row in rows]
    return ExampleBatch(_pad(inputs, pad_id), _mask(inputs), _pad(labels, IGNORE), encoder_decoder)


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, str]], encoder_decoder: bool
) -> ExampleBatch:
    """Tokenise ``{"input", "output"}`` examples into one padded `ExampleBatch`."""
    rows = [example_ids(tokenizer, ex, encoder_decoder) for ex in examples]
    return collate(rows, tokenizer.pad_token_id, encoder_decoder)


def _mask(rows: Sequence[list[int]]) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
