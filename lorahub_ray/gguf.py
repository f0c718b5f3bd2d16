"""GGUF bases: checking a ``.gguf`` file before it is loaded, and converting it once to a Hugging Face directory."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel

from actors.model import load_base, quiet_loading, split_gguf
from lorahub_ray.errors import ConfigError, InputError

MAGIC = b"GGUF"  # the first four bytes of every GGUF file
GGUF_FLOOR = "0.13.0"  # the oldest `gguf` that works with NumPy 2 (transformers itself asks 0.10)


def is_gguf(base: str | Path) -> bool:
    """Whether ``base`` names a GGUF file (by its ``.gguf`` suffix, as ``actors.model.split_gguf`` decides)."""
    return str(base).lower().endswith(".gguf")


def check_gguf(path: str | Path) -> None:
    """``path`` must be a GGUF file that this environment can read, before transformers tries to.

    Raises:
        InputError: no such file, or a file that does not start with GGUF's magic bytes.
        ConfigError: the ``gguf`` package (which transformers reads GGUF files with) is not installed.
    """
    if not Path(path).is_file():
        raise InputError(f"base model {str(path)!r}: no such GGUF file")
    with open(path, "rb") as file:
        head = file.read(len(MAGIC))
    if head != MAGIC:
        raise InputError(f"base model {str(path)!r} is not a GGUF file: it starts with {head!r}, "
                         f"expected {MAGIC!r}")
    try:
        import gguf  # noqa: F401  (transformers needs it; its own check reads package metadata only)
    except ImportError:
        raise ConfigError(f"base model {str(path)!r} is a GGUF file, which needs the `gguf` package: "
                          f"pip install 'gguf>={GGUF_FLOOR}' (or the extra lorahub-ray[gguf])") from None


def gguf_config(path: str | Path) -> PretrainedConfig:
    """The model config stored in the GGUF file at ``path`` (checked first with `check_gguf`).

    Raises:
        InputError: as `check_gguf`, or an architecture (or file) that transformers cannot read.
        ConfigError: as `check_gguf`.
    """
    check_gguf(path)
    source, extra = split_gguf(str(path))
    try:
        return AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError, KeyError) as err:  # an architecture transformers has no GGUF mapping for, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"base model {str(path)!r}: transformers cannot load this GGUF file ({first_line})") from None


def plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of a model loaded from GGUF that ``save_pretrained`` accepts: same config and weights, not flagged
    as quantised (transformers refuses to save a model it dequantised from GGUF)."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # it only says "GGUF": the copy holds plain float weights
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with quiet_loading():
        plain = auto.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def convert_gguf(path: str | Path, out: str | Path) -> Path:
    """Write the GGUF model at ``path`` as a standard Hugging Face directory ``out`` (safetensors + tokenizer).

    The weights are dequantised once, to float32. A model loaded from GGUF refuses ``save_pretrained`` (it is
    flagged as quantised), so the weights are copied into a plain model built from the same config. ``out`` is
    written in a staging directory next to it and renamed into place: it exists complete or not at all.

    Raises:
        InputError: as `gguf_config`, or ``out`` already exists.
        ConfigError: as `check_gguf`.
    """
    out = Path(out)
    if out.exists():
        raise InputError(f"output directory {str(out)!r} already exists; remove it or name another")
    gguf_config(path)
    model, tokenizer = load_base(str(path), torch.device("cpu"))
    plain = plain_copy(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with quiet_loading():
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
