"""Training: the base model from scratch on the upstream mixture, and one PEFT LoRA module per upstream task.

Examples are tokenised once, exactly as the core engine does for its loss (`actors.examples.example_ids`):
encoder-decoder reads ``input`` (+eos) and predicts ``output`` (+eos); decoder-only reads the ``input``
tokens as given followed by ``output`` tokens and eos, with the loss on the output and eos only.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from actors.examples import TokenRow, collate, example_ids
from actors.model import quiet_loading

LORA_INIT_SEED = 1234  # every module starts from the same LoRA initialisation (LoraHub's recipe)
# T5 sees positions only through a scalar bias per head and distance bucket, initialised near 0; with AdamW's
# per-step update of about ``lr`` it would take thousands of steps to become sharp enough for positional skills
# (first/last/k-th element, reversal). A larger learning rate for it fixes this (Adafactor's relative steps
# achieve the same in the original T5 recipe).
POSITION_BIAS_LR_MULT = 100.0
Example = Mapping[str, str]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _fit(
    model: torch.nn.Module,
    pad_id: int,
    sample_batch,
    steps: int,
    lr: float,
    seed: int,
    desc: str,
    progress: bool,
    weight_decay: float = 0.0,
) -> float:
    """AdamW with warmup + cosine decay on batches of `example_ids` rows from ``sample_batch(rng)``; returns the mean
    loss of the last 10%."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    bias = [p for n, p in named if "relative_attention_bias" in n]
    rest = [p for n, p in named if "relative_attention_bias" not in n]
    groups = [{"params": rest, "scale": 1.0}] + ([{"params": bias, "scale": POSITION_BIAS_LR_MULT}] if bias else [])
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    encoder_decoder = bool(model.config.is_encoder_decoder)
    warmup = max(1, steps // 20)
    tail: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup) * group["scale"]
        batch = collate(sample_batch(rng), pad_id, encoder_decoder)
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if progress and step % max(1, steps // 20) == 0:  # about 20 loss readings whatever the length
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return float(sum(tail) / len(tail)) if tail else float("nan")


def train_base(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Mapping[str, Sequence[Example]],
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Train ``model`` in place on a uniform mixture of the tasks in ``data`` (task name -> examples)."""
    encoder_decoder = bool(model.config.is_encoder_decoder)
    pools = [[example_ids(tokenizer, ex, encoder_decoder) for ex in v] for v in data.values() if v]

    def sample(rng: random.Random) -> list[TokenRow]:
        return [rng.choice(rng.choice(pools)) for _ in range(batch_size)]

    return _fit(model, tokenizer.pad_token_id, sample, steps, lr, seed, "base", progress, weight_decay=0.01)


def lora_config(target_modules: Sequence[str], rank: int) -> LoraConfig:
    """LoraHub's module recipe scaled down: one rank for all, ``alpha = 2 * rank``, no dropout."""
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), lora_dropout=0.0)


def train_lora(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    target_modules: Sequence[str],
    rank: int = 8,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    desc: str = "lora",
) -> tuple[PeftModel, float]:
    """A LoRA module trained on ``examples`` over a copy of ``base`` (left untouched); returns (model, final loss)."""
    model = copy.deepcopy(base)
    torch.manual_seed(LORA_INIT_SEED)  # identical initial A matrices for every module
    with quiet_loading():
        peft_model = get_peft_model(model, lora_config(target_modules, rank))
    pool = [example_ids(tokenizer, ex, bool(base.config.is_encoder_decoder)) for ex in examples]

    def sample(rng: random.Random) -> list[TokenRow]:
        return [rng.choice(pool) for _ in range(batch_size)]

    loss = _fit(peft_model, tokenizer.pad_token_id, sample, steps, lr, seed, desc, progress)
    return peft_model, loss
