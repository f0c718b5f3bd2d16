"""Randomly initialised base models and LoRA modules, built offline, for tests, benchmarks and examples.

They are real Hugging Face / PEFT artifacts (``save_pretrained`` directories) with random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from actors.model import is_encoder_decoder, load_base, quiet_loading

TARGETS = {"t5": ["q", "v"], "llama": ["q_proj", "v_proj"]}


def build_random_base(out: str | Path, kind: str = "t5", d_model: int = 32, layers: int = 2, heads: int = 4,
                      d_ff: int = 64, seed: int = 0) -> Path:
    """Save a randomly initialised byte-level model (``kind`` ``"t5"`` or ``"llama"``) and its tokenizer to ``out``."""
    torch.manual_seed(seed)
    tokenizer = ByT5Tokenizer()
    vocab = len(tokenizer)
    if kind == "t5":
        config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                          num_heads=heads, decoder_start_token_id=tokenizer.pad_token_id,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        model = T5ForConditionalGeneration(config)
    elif kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=None, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"`kind` must be 't5' or 'llama', got {kind!r}")
    out = Path(out)
    with quiet_loading():  # no "Writing model shards" bar for a toy
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def build_random_modules(base: str | Path, out: str | Path, count: int, rank: int = 4, alpha: int | None = None,
                         targets: list[str] | None = None, std: float = 0.5, seed: int = 0) -> list[Path]:
    """Save ``count`` PEFT LoRA adapters for ``base`` with random, non-zero A and B (``module_00``, ...)."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_base(str(base), torch.device("cpu"))
    kind = "t5" if is_encoder_decoder(str(base)) else "llama"
    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0,
                        target_modules=targets or TARGETS[kind])
    with quiet_loading():
        peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for index in range(count):
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * std / param.shape[-1] ** 0.5)
        path = Path(out) / f"module_{index:02d}"
        peft_model.save_pretrained(path)
        paths.append(path)
    return paths


def _byte_level_vocab() -> tuple[list[str], list[str]]:
    """A GPT-2 style byte-level vocabulary: the 256 byte symbols, a few merged pairs, and ``<|endoftext|>``."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t"]
    tokens = symbols + [merge.replace(" ", "") for merge in merges] + ["<|endoftext|>"]
    return tokens, merges


def build_random_gguf(path: str | Path, d_model: int = 32, layers: int = 2, heads: int = 4, d_ff: int = 64,
                      seed: int = 0) -> Path:
    """Write a randomly initialised Llama with a byte-level BPE tokenizer as one float32 GGUF file (needs ``gguf``).

    The weights are written as llama.cpp names them (``token_embd``, ``blk.N.attn_q``, ...); q/k rows are not
    permuted, which only matters for comparisons with a model written from the same weights some other way.
    """
    import gguf
    import numpy as np

    tokens, merges = _byte_level_vocab()
    vocab, eos = len(tokens), len(tokens) - 1
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("toy-llama")
    writer.add_context_length(512)
    writer.add_block_count(layers)
    writer.add_embedding_length(d_model)
    writer.add_feed_forward_length(d_ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(d_model // heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 1) + [3])  # 1 normal, 3 control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    rng = np.random.default_rng(seed)

    def add(name: str, *shape: int) -> None:
        values = np.ones(shape) if len(shape) == 1 else rng.normal(0.0, shape[-1] ** -0.5, shape)
        writer.add_tensor(name, values.astype(np.float32))

    add("token_embd.weight", vocab, d_model)
    for n in range(layers):
        for name, shape in [("attn_norm", (d_model,)), ("attn_q", (d_model, d_model)),
                            ("attn_k", (d_model, d_model)), ("attn_v", (d_model, d_model)),
                            ("attn_output", (d_model, d_model)), ("ffn_norm", (d_model,)),
                            ("ffn_gate", (d_ff, d_model)), ("ffn_up", (d_ff, d_model)),
                            ("ffn_down", (d_model, d_ff))]:
            add(f"blk.{n}.{name}.weight", *shape)
    add("output_norm.weight", d_model)
    add("output.weight", vocab, d_model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
