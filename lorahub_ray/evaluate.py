"""Evaluating a base model, with or without an adapter: batched greedy generation and exact match."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from actors.examples import prompt_ids
from actors.model import load_base, pick_device, quiet_loading
from lorahub_ray.base import check_base
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError, InputError
from lorahub_ray.gguf import gguf_config, is_gguf
from lorahub_ray.modules import CONFIG_FILE, index_module

DEVICES = ("auto", "cpu", "cuda")


def normalize(text: str) -> str:
    """The reference's answer normalisation: strip, lower-case, drop full stops."""
    return text.strip().lower().replace(".", "")


@dataclass
class EvalReport:
    """Exact-match accuracy (percent) and every prediction."""

    accuracy: float
    correct: int
    total: int
    predictions: list[dict[str, str | bool]]

    def to_dict(self) -> dict:
        return asdict(self)


def check_adapter(base: str, adapter: str | Path) -> None:
    """``adapter`` must be a local plain-LoRA PEFT directory whose rank, layers and shapes fit ``base``.

    Raises:
        InputError: it is no adapter directory, its files disagree, or ``base`` cannot be read.
        ModuleMismatchError: it adapts layers that ``base`` lacks or has other widths (an adapter for another base).
    """
    if not (Path(adapter) / CONFIG_FILE).is_file():
        raise InputError(f"adapter {str(adapter)!r} is not a PEFT adapter directory (no {CONFIG_FILE})")
    check_base(index_module(str(adapter)), base)


def load_model(base: str, adapter: str | Path | None = None, device: str = "auto",
               dtype: str = "float32") -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The base model with ``adapter`` (a PEFT LoRA directory, checked first) merged in, or the bare base model."""
    if adapter is not None:
        check_adapter(base, adapter)
    elif is_gguf(base):
        gguf_config(base)  # a clear error for a bad GGUF file before transformers tries it
    try:
        model, tokenizer = load_base(base, pick_device(device), dtype)
    except (OSError, ValueError) as err:  # no such model, or a directory whose config.json is not a model's
        raise InputError(f"base model {base!r} could not be loaded: {str(err).strip().splitlines()[0]}") from None
    if adapter is not None:
        from peft import PeftModel

        with quiet_loading():
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    return model, tokenizer


def check_settings(batch_size: int, max_new_tokens: int, device: str) -> None:
    """Generation settings, checked before any model is loaded.

    Raises:
        ConfigError: a batch size or token budget below 1, or a device that is unknown or absent.
    """
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"`{name}` must be an integer >= 1, got {value!r}")
    if device not in DEVICES:
        raise ConfigError(f"`device` must be one of {list(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device` is 'cuda' but torch sees no CUDA device here; use 'auto' or 'cpu'")


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str], batch_size: int = 16,
             max_new_tokens: int = 256) -> list[str]:
    """Greedy completions of ``inputs``, in batches (decoder-only prompts are left-padded, as given)."""
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    outputs: list[str] = []
    for start in range(0, len(inputs), batch_size):
        texts = list(inputs[start : start + batch_size])
        if encoder_decoder:
            batch = tokenizer(texts, padding=True, return_tensors="pt").to(device)
        else:
            rows = [prompt_ids(tokenizer, text) for text in texts]
            width = max(len(row) for row in rows)
            pad = tokenizer.pad_token_id
            batch = {
                "input_ids": torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device),
                "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device),
            }
        tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if not encoder_decoder:
            tokens = tokens[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return outputs


def exact_match(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, str]],
                batch_size: int = 16, max_new_tokens: int = 256) -> EvalReport:
    """Exact-match accuracy of greedy generation on ``{"input", "output"}`` examples."""
    if not examples:
        raise InputError("exact_match needs at least one {\"input\", \"output\"} example; got none")
    check_settings(batch_size, max_new_tokens, "auto")
    predictions = generate(model, tokenizer, [ex["input"] for ex in examples], batch_size, max_new_tokens)
    rows = [
        {"input": ex["input"], "output": ex["output"], "prediction": pred,
         "correct": normalize(pred) == normalize(ex["output"])}
        for ex, pred in zip(examples, predictions)
    ]
    correct = sum(bool(row["correct"]) for row in rows)
    return EvalReport(100.0 * correct / len(rows), correct, len(rows), rows)


def evaluate_adapter(base: str, examples: str | Path | Sequence[dict[str, str]], adapter: str | Path | None = None,
                     batch_size: int = 16, max_new_tokens: int = 256, device: str = "auto") -> EvalReport:
    """Exact match of ``base`` (with ``adapter`` merged in, if given) on examples or a JSONL file of them.

    Example:
        >>> report = evaluate_adapter("path/to/base", "test.jsonl", adapter="out/adapter")  # doctest: +SKIP
        >>> report.accuracy  # doctest: +SKIP

    Raises:
        ConfigError: a setting out of range (see `check_settings`), before anything is loaded.
        InputError: examples, base model or adapter that cannot be read, or an adapter for another base model.
    """
    check_settings(batch_size, max_new_tokens, device)
    rows = load_examples(examples)
    model, tokenizer = load_model(base, adapter, device=device)
    return exact_match(model, tokenizer, rows, batch_size, max_new_tokens)
