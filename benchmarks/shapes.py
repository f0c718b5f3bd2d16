"""Random-weight models of real shapes, and the examples and candidates the GPU check and the pass profile time.

Every model gets a byte tokenizer (its ids are all below the vocabulary) and random weights, so that nothing is
downloaded; the figures measured on them are about speed, never quality.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

EXAMPLES = 5  # few-shot examples, as LoraHub's
SHAPE_MODULES = 20  # LoRA modules in the pool of every shape
SHAPE_MODELS = {  # name: (kind, config, rank, example input bytes); random weights, byte tokenizer
    "gpu": {
        "smollm2-135m": ("llama", {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                                   "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                                   "tie_word_embeddings": True}, 8, 256),
        "flan-t5-large": ("t5", {"vocab_size": 32128, "d_model": 1024, "d_kv": 64, "d_ff": 2816, "num_layers": 24,
                                 "num_heads": 16, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
                                 "initializer_factor": 0.05}, 16, 256),
        "llama-1b": ("llama", {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                               "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "tie_word_embeddings": True}, 8, 256),
    },
    "dry": {
        "tiny-llama": ("llama", {"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}, 4, 24),
        "tiny-t5": ("t5", {"vocab_size": 1000, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
                           "num_heads": 4, "initializer_factor": 0.05}, 4, 24),
    },
}


def build_shape(kind: str, settings: dict, out: Path, device: str) -> Path:
    """Save a random-weight model of ``settings`` with a byte tokenizer (its ids are all below the vocabulary)."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    from actors.model import quiet_loading

    torch.manual_seed(0)
    tokenizer = ByT5Tokenizer()
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "t5":
        config, model_class = T5Config(**settings, decoder_start_token_id=tokenizer.pad_token_id, **ids), \
            T5ForConditionalGeneration
    else:
        config, model_class = LlamaConfig(**settings, bos_token_id=None, **ids), LlamaForCausalLM
    with torch.device(device):  # random initialisation on the device: seconds, even for a 1B model
        model = model_class(config)
    with quiet_loading():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def evaluation_flops(model, batch) -> float:
    """The matrix work one evaluation needs: 2 x weight x tokens for every linear layer of the body over the tokens
    it sees (encoder: the inputs; decoder: all of a decoder-only sequence, a T5 decoder's targets), and the LM head
    at the answer tokens only (T5: every target is one)."""
    from torch import nn

    from actors.examples import IGNORE

    answers = int((batch.labels != IGNORE).sum())
    head = model.get_output_embeddings()
    flops = 2 * head.weight.numel() * answers
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Linear) and layer is not head:
            decoder = batch.encoder_decoder and not name.startswith("encoder")
            seen = answers if decoder else int(batch.attention_mask.sum())
            flops += 2 * layer.weight.numel() * seen
    return float(flops)


def peak_matmul_flops(device: str) -> float:
    """The device's bfloat16 (CPU: float32) matmul rate, FLOP/s, from timed square products."""
    import torch

    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (512, torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    repeats = 20 if device == "cuda" else 5
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def make_examples(length: int, seed: int = 0) -> list[dict[str, str]]:
    """``EXAMPLES`` random-letter examples with inputs of ``length`` bytes (tokens, with the byte vocabulary)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return [{"input": "".join(rng.choice(letters, length)) + "\nAnswer:", "output": "".join(rng.choice(letters, 8))}
            for _ in range(EXAMPLES)]


def population(num_modules: int, size: int, seed: int = 1) -> np.ndarray:
    """``(size, num_modules)`` candidates in the search box."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (size, num_modules))


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a CUDA timing needs it; the CPU runs in order)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


