"""Loading a base model and its tokenizer onto a device, encoder-decoder or decoder-only by its config."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``dtype`` as a key of `DTYPES`: ``"auto"`` is bfloat16 on CUDA (the loss and the LM head stay float32,
    see `actors.loss`) and float32 elsewhere; any other name comes back as it is."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def pick_device(device: str = "auto", gpu_ids: Sequence[int | str] | None = None, gpus: float = 0.0) -> torch.device:
    """The device to compute on.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        gpu_ids: the GPU ids Ray assigned to this actor (``ray.get_gpu_ids()``); ``None`` outside an actor.
        gpus: the GPUs this actor reserved (its ``num_gpus``).

    Outside an actor ``"auto"`` is CUDA when this process sees a GPU. In an actor it is CUDA only when the actor
    reserved GPUs and was assigned some, whatever the node has: Ray no longer hides a node's GPUs from actors
    that reserve none (ray issue 54868).

    Raises:
        ValueError: ``"cuda"`` in an actor that was assigned no GPU.
    """
    if gpu_ids is None:
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)
    assigned = gpus > 0 and len(gpu_ids) > 0
    if device == "cuda" and not assigned:
        raise ValueError(f"device 'cuda' needs a GPU, but this actor reserved {gpus} GPUs and was assigned "
                         f"{list(gpu_ids)}; reserve some (gpus_per_actor > 0) or use device 'auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if assigned and torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Within the block: no transformers progress bars, and no PEFT notice about transformers'
    deprecated ``is_gradient_checkpointing`` (PEFT reads it whenever it wraps a model; users can do nothing
    about it). Both are restored afterwards: the caller's settings are left as they were."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def split_gguf(base: str) -> tuple[str, dict[str, str]]:
    """``base`` as ``from_pretrained`` arguments: a ``.gguf`` file becomes its directory plus ``gguf_file=name``.

    Example: ``split_gguf("models/smol.gguf") == ("models", {"gguf_file": "smol.gguf"})``; any other ``base``
    (a directory or hub id) comes back unchanged, with no extra arguments.
    """
    if base.lower().endswith(".gguf"):
        path = Path(base)
        return str(path.parent), {"gguf_file": path.name}
    return base, {}


def is_encoder_decoder(base: str) -> bool:
    """Whether the model at ``base`` (a local dir, hub id or ``.gguf`` file) is an encoder-decoder, by its config."""
    source, extra = split_gguf(base)
    return bool(getattr(AutoConfig.from_pretrained(source, **extra), "is_encoder_decoder", False))


def load_base(
    base: str, device: torch.device, dtype: str = "float32"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load the base model in eval mode on ``device`` with ``dtype``, and its tokenizer (quietly: `quiet_loading`).

    ``base`` is a local directory, a hub id or a ``.gguf`` file (dequantised on every load: convert it once with
    ``lorahub-ray convert-gguf`` where a base is loaded often).
    """
    source, extra = split_gguf(base)
    with quiet_loading():
        auto = AutoModelForSeq2SeqLM if is_encoder_decoder(base) else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=DTYPES[dtype], **extra).to(device).eval()
        model.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
