"""Loading a base model and its tokenizer onto a device, encoder-decoder or decoder-only by its config."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

# PEFT reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model: a library notice
# that users can do nothing about.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` is CUDA when this process sees a GPU (Ray sets that per actor), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def is_encoder_decoder(base: str) -> bool:
    """Whether the model at ``base`` (a local dir or hub id) is an encoder-decoder, read from its config."""
    return bool(getattr(AutoConfig.from_pretrained(base), "is_encoder_decoder", False))


def load_base(
    base: str, device: torch.device, dtype: str = "float32"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load the base model in eval mode on ``device`` with ``dtype``, and its tokenizer."""
    hf_logging.disable_progress_bar()
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(base) else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=DTYPES[dtype]).to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
