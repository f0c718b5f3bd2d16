"""Base models built from a config (nothing is downloaded): a small T5 and a small Llama, both byte-level.

Both use `transformers.ByT5Tokenizer` (no vocabulary file; 384 ids, pad 0, eos 1). Saved with
``save_pretrained`` they load through ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM`` and ``AutoTokenizer``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    ByT5Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from actors.model import quiet_loading

KINDS = ("t5", "llama")
LORA_TARGETS = {"t5": ["q", "v"], "llama": ["q_proj", "v_proj"]}
VOCAB_SIZE = 384  # ByT5: 3 special ids + 256 bytes + 125 sentinel ids
PAD_ID, EOS_ID = 0, 1

# Architecture presets: "tiny" builds in a blink for tests, "default" is the zoo's real model.
T5_PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=1, num_decoder_layers=1),
    "default": dict(d_model=128, d_ff=256, d_kv=32, num_heads=4, num_layers=3, num_decoder_layers=2),
}
LLAMA_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "default": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
}


def make_tokenizer() -> ByT5Tokenizer:
    """The byte-level tokenizer shared by every zoo model."""
    return ByT5Tokenizer()


def t5_config(size: str = "default") -> T5Config:
    """A byte-level T5 config; ``decoder_start_token_id`` is the pad id 0 as in T5."""
    return T5Config(
        vocab_size=VOCAB_SIZE,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        **T5_PRESETS[size],
    )


def llama_config(size: str = "default") -> LlamaConfig:
    """A byte-level Llama config: pad 0, eos 1, no bos token."""
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
        tie_word_embeddings=False,
        **LLAMA_PRESETS[size],
    )


def build_model(kind: str, size: str = "default", seed: int = 0) -> PreTrainedModel:
    """A freshly initialised (untrained) ``kind`` model ("t5" or "llama") of preset ``size``."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    torch.manual_seed(seed)
    if kind == "t5":
        model = T5ForConditionalGeneration(t5_config(size))
        # An untied T5 head is initialised with std 1 (logits of std ~sqrt(d_model), initial loss ~35); use the
        # 1/sqrt(d_model) scale that a tied head gets instead.
        torch.nn.init.normal_(model.lm_head.weight, std=model.config.d_model**-0.5)
    else:
        model = LlamaForCausalLM(llama_config(size))
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    if kind == "t5":
        model.generation_config.decoder_start_token_id = PAD_ID
    else:
        model.generation_config.bos_token_id = None
    return model


def save_base(model: PreTrainedModel, tokenizer: ByT5Tokenizer, directory: Path) -> None:
    """Write model and tokenizer so the ``Auto*`` classes load ``directory`` like a hub checkpoint."""
    directory = Path(directory)
    with quiet_loading():  # the build shows its own progress; a one-shard "Writing model shards" bar is noise
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
