"""Evaluating a base model, with or without an adapter: batched greedy generation and exact match."""

from __future__ import annotations

import copy
import inspect
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from actors.examples import IGNORE, collate, example_ids, prompt_ids
from actors.loss import example_token_losses, plain_head
from actors.model import load_base, pick_device, quiet_loading
from lorahub_ray.base import check_base
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError, InputError
from lorahub_ray.gguf import gguf_config, is_gguf
from lorahub_ray.modules import CONFIG_FILE, index_module

DEVICES = ("auto", "cpu", "cuda")
ANSWER_MARGIN = 8  # tokens a generation may run past the longest reference answer (the automatic budget)


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


def check_settings(batch_size: int, max_new_tokens: int | None, device: str) -> None:
    """Generation settings, checked before any model is loaded (``max_new_tokens`` None: the automatic budget).

    Raises:
        ConfigError: a batch size or token budget below 1, or a device that is unknown or absent.
    """
    settings = [("batch_size", batch_size)] + ([] if max_new_tokens is None else [("max_new_tokens", max_new_tokens)])
    for name, value in settings:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"`{name}` must be an integer >= 1, got {value!r}")
    if device not in DEVICES:
        raise ConfigError(f"`device` must be one of {list(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device` is 'cuda' but torch sees no CUDA device here; use 'auto' or 'cpu'")


def end_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a generation: the tokenizer's end token and the model's (an instruct model's chat
    turn end, e.g. ``<|im_end|>``, may differ from its tokenizer's ``eos_token``)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    ids = [tokenizer.eos_token_id, *configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def answer_budget(tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, str]]) -> int:
    """The automatic generation budget: the longest reference output in tokens plus `ANSWER_MARGIN`, so that a
    batch of short answers never runs hundreds of steps when a model does not stop by itself."""
    longest = max(len(tokenizer(ex["output"], add_special_tokens=False)["input_ids"]) for ex in examples)
    return longest + ANSWER_MARGIN


@torch.no_grad()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str], batch_size: int = 16,
             max_new_tokens: int = 256) -> list[str]:
    """Greedy completions of ``inputs``, in batches (decoder-only prompts padded on the left, as given); a row ends at
    any of `end_token_ids`. Decoder-only prompts that start alike (the same demonstrations before every input,
    see `worth_sharing`) read that prefix once: each batch then extends a copy of its cache, padded after it."""
    device = next(model.parameters()).device
    ends = end_token_ids(model, tokenizer)
    if getattr(model.config, "is_encoder_decoder", False):
        outputs: list[str] = []
        for start in range(0, len(inputs), batch_size):
            batch = tokenizer(list(inputs[start : start + batch_size]), padding=True, return_tensors="pt").to(device)
            tokens = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=ends)
            outputs.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
        return outputs
    rows = [prompt_ids(tokenizer, text) for text in inputs]
    shared, pad, scorer = worth_sharing(rows), tokenizer.pad_token_id, _scorer(model)
    prefix = _prefix_cache(scorer, rows[0][:shared], device) if shared else None
    outputs = []
    for start in range(0, len(rows), batch_size):
        suffixes = [row[shared:] for row in rows[start : start + batch_size]]
        width = max(len(suffix) for suffix in suffixes)  # padding goes between the prefix and each suffix
        input_ids = torch.tensor([rows[0][:shared] + [pad] * (width - len(s)) + s for s in suffixes], device=device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
        cache = {}
        if prefix is not None:
            copied = copy.deepcopy(prefix)
            copied.batch_repeat_interleave(len(suffixes))
            cache = {_cache_name(scorer): copied}
        tokens = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=ends, **cache)
        outputs.extend(tokenizer.batch_decode(tokens[:, shared + width :], skip_special_tokens=True))
    return outputs


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``rows`` share, each row keeping at least one of its own (0 for one row)."""
    if len(rows) < 2:
        return 0
    length, limit = 0, min(len(row) for row in rows) - 1
    while length < limit and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


def worth_sharing(rows: Sequence[Sequence[int]]) -> int:
    """`shared_prefix_length` of decoder-only prompts when reading that prefix once saves at least a third of their
    tokens (five demonstrations before every test input), else 0: the prompts are then read whole."""
    length = shared_prefix_length(rows)
    return length if 3 * length * (len(rows) - 1) >= sum(len(row) for row in rows) else 0


def _scorer(model: nn.Module) -> nn.Module:
    """The model that runs the forward passes: a PeftModel's LoRA-injected base model, else the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_name(model: nn.Module) -> str:
    """The forward's name for a cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefix_cache(model: nn.Module, prefix: list[int], device: torch.device):
    """The cache of one forward over the ``prefix`` tokens."""
    return _logits_and_cache(model, torch.tensor([prefix], device=device), None, None, last_only=True)[1]


def exact_match(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, str]],
                batch_size: int = 16, max_new_tokens: int | None = None) -> EvalReport:
    """Exact-match accuracy of greedy generation on ``{"input", "output"}`` examples (``max_new_tokens`` None:
    `answer_budget`)."""
    if not examples:
        raise InputError("exact_match needs at least one {\"input\", \"output\"} example; got none")
    check_settings(batch_size, max_new_tokens, "auto")
    if max_new_tokens is None:
        max_new_tokens = answer_budget(tokenizer, examples)
    predictions = generate(model, tokenizer, [ex["input"] for ex in examples], batch_size, max_new_tokens)
    rows = [
        {"input": ex["input"], "output": ex["output"], "prediction": pred,
         "correct": normalize(pred) == normalize(ex["output"])}
        for ex, pred in zip(examples, predictions)
    ]
    correct = sum(bool(row["correct"]) for row in rows)
    return EvalReport(100.0 * correct / len(rows), correct, len(rows), rows)


def evaluate_adapter(base: str, examples: str | Path | Sequence[dict[str, str]], adapter: str | Path | None = None,
                     batch_size: int = 16, max_new_tokens: int | None = None, device: str = "auto") -> EvalReport:
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


@torch.no_grad()
def option_losses(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict],
                  batch_size: int = 16) -> list[list[float]]:
    """Each example's summed token loss (answer tokens and end token) of each of its ``"options"`` after its input.

    A decoder-only model reads each input once: its cache serves all the options, whose rows would otherwise
    repeat the input (an 18-option question read 18 times), and a prefix all the inputs share is read once for
    all of them (`worth_sharing`). Encoder-decoders score (input, option) rows in batches of ``batch_size``.
    """
    scorer = _scorer(model)
    device = next(scorer.parameters()).device
    if not getattr(scorer.config, "is_encoder_decoder", False):
        prompts = [prompt_ids(tokenizer, ex["input"]) for ex in examples]
        shared = worth_sharing(prompts)
        prefix = (shared, _prefix_cache(scorer, prompts[0][:shared], device)) if shared else None
        return [_shared_prompt_losses(scorer, tokenizer, ex["input"], prompt, ex["options"], device, prefix)
                for ex, prompt in zip(examples, prompts)]
    rows = [example_ids(tokenizer, {"input": ex["input"], "output": option}, True)
            for ex in examples for option in ex["options"]]
    losses: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], tokenizer.pad_token_id, True).to(device)
        losses.extend(example_token_losses(scorer, batch)[0].tolist())
    per_example, offset = [], 0
    for ex in examples:
        per_example.append(losses[offset : offset + len(ex["options"])])
        offset += len(ex["options"])
    return per_example


def _shared_prompt_losses(model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str, prompt: list[int],
                          options: Sequence[str], device: torch.device, prefix: tuple[int, object] | None
                          ) -> list[float]:
    """`option_losses` of one decoder-only example (``prompt``: the ids of its input ``text``): the prompt's
    forward with a cache (past a copy of ``prefix``'s cache, given as (tokens, cache), when the prompts share one),
    then every option (right-padded, with its end token) in one batch on copies of that cache; the token ids are
    `example_ids`'s."""
    answers = [example_ids(tokenizer, {"input": text, "output": o}, False)[0][len(prompt) :] for o in options]
    start, cache = (prefix[0], copy.deepcopy(prefix[1])) if prefix else (0, None)
    first_logits, cache = _logits_and_cache(model, torch.tensor([prompt[start:]], device=device), None, cache,
                                            last_only=True)
    n, width = len(answers), max(len(a) for a in answers)
    cache.batch_repeat_interleave(n)
    ids = torch.tensor([a + [tokenizer.pad_token_id] * (width - len(a)) for a in answers], device=device)  # (n, A)
    answer_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers], device=device)
    mask = torch.cat([torch.ones(n, len(prompt), dtype=answer_mask.dtype, device=device), answer_mask], dim=1)
    logits, _ = _logits_and_cache(model, ids, mask, cache, last_only=False)  # (n, A, V): position j predicts j + 1
    logits = torch.cat([first_logits.expand(n, -1, -1), logits[:, :-1]], dim=1)  # (n, A, V): predicts token j
    labels = ids.masked_fill(answer_mask == 0, IGNORE)
    token_ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="none").view(n, width)
    return token_ce.sum(dim=1).tolist()


def _logits_and_cache(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache,
                      last_only: bool) -> tuple[torch.Tensor, object]:
    """Float32 logits ``(E, T or 1, V)`` of a forward that reads and extends ``cache`` (a new one when None), and the
    cache. A `PLAIN_HEAD` model's head runs in float32 on its body's output, as in the search's loss."""
    parameters = inspect.signature(model.forward).parameters
    cache_arg = {_cache_name(model): cache} if cache is not None else {}
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True, **cache_arg}
    if plain_head(model):
        out = model.base_model(**inputs)
        hidden = out.last_hidden_state[:, -1:] if last_only else out.last_hidden_state
        head = model.get_output_embeddings()
        logits = F.linear(hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float())
    else:
        keep = {"logits_to_keep": 1} if last_only and "logits_to_keep" in parameters else {}
        out = model(**inputs, **keep)
        logits = (out.logits[:, -1:] if last_only else out.logits).float()
    return logits, out.cache if hasattr(out, "cache") else out.past_key_values


def option_accuracy(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict],
                    batch_size: int = 16) -> float:
    """Percent of multiple-choice examples whose reference ``output`` is, among their ``"options"`` (answer
    strings, the output among them), the one with the lowest summed token loss (answer tokens and end token) after
    the input: the format-independent score of lm-eval-harness, which no answer-format gain can raise.

    Raises:
        InputError: no examples, or an example without a list of options that holds its output.
    """
    if not examples:
        raise InputError("option_accuracy needs at least one multiple-choice example; got none")
    for index, ex in enumerate(examples):
        if not isinstance(ex.get("options"), list) or ex["output"] not in ex["options"]:
            raise InputError(f"example {index}: field 'options' must be a list of answer strings holding its "
                             f"output {ex['output']!r}; got {ex.get('options')!r}")
    correct = 0
    for ex, scores in zip(examples, option_losses(model, tokenizer, examples, batch_size)):
        correct += ex["options"][scores.index(min(scores))] == ex["output"]
    return 100.0 * correct / len(examples)
