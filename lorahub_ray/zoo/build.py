"""Build the module zoo on disk: held-out task files, a base model per kind and one LoRA per upstream task.

Layout under ``out``::

    manifest.json                      size, seed, bases, modules, variants, heldout (paths relative to ``out``)
    <kind>/base/                       save_pretrained model + tokenizer (+ zoo_meta.json)
    <kind>/modules/<task>/             PEFT adapter_config.json + adapter_model.safetensors (+ zoo_meta.json,
                                       train_sample.jsonl: training inputs for the ``similarity`` pre-filter)
    <kind>/modules/<task>-v<i>/        the same for variant i of a task (sizes with ``variants``: a large pool)
    tasks/<task>/{fewshot,test}.jsonl  held-out examples, one {"input", "output"} per line

Building is deterministic and cached: an artifact whose ``zoo_meta.json`` carries the same fingerprint
(configuration, seed, base, task) is kept; anything else is built in a temporary directory and renamed into
place, so a final path never holds a half-written artifact.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from lorahub_ray.atomic import write_atomic
from lorahub_ray.evaluate import exact_match
from lorahub_ray.prefilter import SAMPLE_FILE

from .models import KINDS, LLAMA_PRESETS, LORA_TARGETS, T5_PRESETS, build_model, make_tokenizer, save_base
from .tasks import (Task, dev_examples, draw_distinct, get_task, heldout_tasks, instruction_words, reword, splits,
                    stable_seed, upstream_tasks)
from .train import train_base, train_lora

__all__ = [
    "DEFAULT_ZOO_DIR",
    "SIZES",
    "ZooSize",
    "build_zoo",
    "load_manifest",
    "train_specialist",
]

ZOO_VERSION = 1  # bump when training code changes so that cached artifacts are rebuilt
DEFAULT_ZOO_DIR = Path(os.environ.get("LORAHUB_RAY_ZOO", "~/.cache/lorahub-ray/zoo")).expanduser()
META = "zoo_meta.json"


@dataclass(frozen=True)
class ZooSize:
    """Everything that determines a zoo besides the seed: model preset, training budgets and split sizes."""

    model: str
    base_steps: int
    module_steps: int  # a module's first training length; see ``module_doublings``
    llama_base_steps: int | None = None  # the decoder-only base fits the mixture faster; None: base_steps
    base_batch: int = 32
    module_batch: int = 32
    base_lr: float = 1e-3
    module_lr: float = 3e-3
    rank: int = 8
    # A module that does not beat its base on ``n_dev`` unseen examples of its task (the dev examples) is trained
    # again from the start with twice the steps, at most ``module_doublings`` times (not when the base is perfect
    # on them; variants are not checked).
    n_dev: int = 300
    module_doublings: int = 2
    instruction_noise: float = 0.25  # share of module training examples with a random instruction
    n_train: int = 1000
    n_fewshot: int = 5
    n_test: int = 100
    max_new_tokens: int = 16
    variants: int = 0  # extra modules per upstream task (other training draws, fewer steps): a large pool
    variant_steps: int = 40
    train_sample: int = 20  # training examples written beside each module

    def base_steps_for(self, kind: str) -> int:
        """Training steps of the base model of ``kind``."""
        return self.llama_base_steps if kind == "llama" and self.llama_base_steps is not None else self.base_steps


_DEFAULT = ZooSize(model="default", base_steps=4000, llama_base_steps=1500, module_steps=150)
SIZES: dict[str, ZooSize] = {
    "tiny": ZooSize(model="tiny", base_steps=30, module_steps=10, base_batch=16, module_batch=16, rank=4,
                    n_train=64, n_test=16, n_dev=16),
    "default": _DEFAULT,
    "large": dataclasses.replace(_DEFAULT, variants=5),  # the default zoo plus 5 variants per task: 216 modules
}


def _fingerprint(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` directory to ``final`` (replacing a stale artifact there)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _tmp_dir(final: Path) -> Path:
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _jsonl(examples: Sequence[dict]) -> str:
    return "".join(json.dumps({"input": e["input"], "output": e["output"]}) + "\n" for e in examples)


def _load_base(kind: str, directory: Path) -> PreTrainedModel:
    cls = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    return cls.from_pretrained(directory).eval()


class _EvalCache:
    """Accuracies of one base model, cached in ``<kind>/base_eval.json`` under the base's fingerprint."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        data = json.loads(path.read_text()) if path.exists() else {}
        self.acc: dict[str, float] = data.get("accuracy", {}) if data.get("base") == key else {}

    def get(self, model, tokenizer, name: str, examples, max_new_tokens: int) -> float:
        """The base's accuracy on ``examples``, cached under ``name`` (a task, or ``dev/<task>``)."""
        if name not in self.acc:
            self.acc[name] = _accuracy(model, tokenizer, examples, max_new_tokens)
            write_atomic(self.path, json.dumps({"base": self.key, "accuracy": self.acc}, indent=1, sort_keys=True))
        return self.acc[name]


def _accuracy(model, tokenizer, examples, max_new_tokens: int, batch_size: int = 64) -> float:
    return exact_match(model, tokenizer, examples, batch_size=batch_size, max_new_tokens=max_new_tokens).accuracy / 100


def _select(tasks: Sequence[str] | None) -> tuple[list[Task], list[Task]]:
    if tasks is None:
        return upstream_tasks(), heldout_tasks()
    chosen = [get_task(name) for name in tasks]
    return [t for t in chosen if t.upstream], [t for t in chosen if not t.upstream]


def build_zoo(
    out: Path | str = DEFAULT_ZOO_DIR,
    size: str = "default",
    kinds: tuple[str, ...] = ("t5",),
    seed: int = 0,
    progress: bool = True,
    tasks: Sequence[str] | None = None,
    overrides: dict | None = None,
    num_threads: int | None = None,
) -> dict:
    """Build (or reuse) the zoo under ``out`` and return its manifest.

    Args:
        out: zoo directory.
        size: a key of `SIZES` ("tiny" for tests, "default").
        kinds: base model kinds, among "t5" (encoder-decoder) and "llama" (decoder-only).
        seed: seeds data splits, initialisation and training.
        progress: show tqdm progress bars.
        tasks: task names to include (upstream ones get modules, held-out ones get files); default all.
        overrides: `ZooSize` fields to change, e.g. ``{"base_steps": 5}``.
        num_threads: passed to ``torch.set_num_threads`` when given.

    Returns:
        The manifest written to ``out/manifest.json``, plus ``"built"``: the artifacts (relative paths)
        trained or written by this call (empty when everything was cached).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    cfg = dataclasses.replace(SIZES[size], **(overrides or {}))
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown model kinds {sorted(unknown)}; expected some of {KINDS}")
    upstream, heldout = _select(tasks)
    tokenizer = make_tokenizer()
    built: list[str] = []
    data = {t.name: splits(t, seed, cfg.n_train, cfg.n_fewshot, cfg.n_test) for t in upstream + heldout}

    heldout_entries = []
    for task in heldout:
        entry = {"task": task.name, "fewshot": f"tasks/{task.name}/fewshot.jsonl", "test": f"tasks/{task.name}/test.jsonl"}
        for split in ("fewshot", "test"):
            path = out / entry[split]
            text = _jsonl(data[task.name][split])
            if not path.exists() or path.read_text() != text:
                write_atomic(path, text)
                built.append(entry[split])
        heldout_entries.append(entry)

    bases, modules, variants = {}, {}, {}
    for kind in kinds:
        base_rel, base, base_key = _build_base(out, kind, cfg, seed, upstream, data, tokenizer, progress, built)
        bases[kind] = base_rel
        cache = _EvalCache(out / kind / "base_eval.json",
                           _fingerprint(base=base_key, n=cfg.n_test, dev=cfg.n_dev, t=cfg.max_new_tokens))
        modules[kind] = []
        bar = tqdm(upstream, desc=f"{kind} modules", disable=not progress)
        for task in bar:
            entry = _build_module(out, kind, cfg, seed, task, data[task.name], base, base_key, tokenizer, cache,
                                  progress, built)
            modules[kind].append(entry)
        variants[kind] = []
        for variant in range(1, cfg.variants + 1):
            for task in tqdm(upstream, desc=f"{kind} variants {variant}/{cfg.variants}", disable=not progress):
                variants[kind].append(_build_module(out, kind, cfg, seed, task, data[task.name], base, base_key,
                                                    tokenizer, cache, progress, built, variant))
        for entry in heldout_entries:
            acc = cache.get(base, tokenizer, entry["task"], data[entry["task"]]["test"], cfg.max_new_tokens)
            entry.setdefault("base_accuracy", {})[kind] = acc

    manifest = {"size": size, "seed": seed, "bases": bases, "modules": modules, "variants": variants,
                "heldout": heldout_entries}
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    return {**manifest, "built": built}


def _build_base(out, kind, cfg, seed, upstream, data, tokenizer, progress, built):
    rel = f"{kind}/base"
    final = out / rel
    arch = (T5_PRESETS if kind == "t5" else LLAMA_PRESETS)[cfg.model]
    key = _fingerprint(version=ZOO_VERSION, kind=kind, arch=arch, steps=cfg.base_steps_for(kind), batch=cfg.base_batch,
                       lr=cfg.base_lr, n_train=cfg.n_train, seed=seed, tasks=[t.name for t in upstream],
                       data=_fingerprint(**{t.name: data[t.name]["train"] for t in upstream}))
    meta = _read_meta(final)
    if meta is not None and meta.get("key") == key:
        return rel, _load_base(kind, final), key
    model = build_model(kind, cfg.model, seed=stable_seed("init", kind, seed) % 2**31)
    start = time.time()
    loss = train_base(model, tokenizer, {t.name: data[t.name]["train"] for t in upstream}, cfg.base_steps_for(kind),
                      cfg.base_batch, cfg.base_lr, stable_seed("base", kind, seed) % 2**31, progress)
    tmp = _tmp_dir(final)
    try:
        save_base(model, tokenizer, tmp)
        meta = {"key": key, "kind": kind, "final_loss": loss, "train_seconds": round(time.time() - start, 1),
                "config": dataclasses.asdict(cfg), "tasks": [t.name for t in upstream]}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    built.append(rel)
    return rel, model.eval(), key


def _drop_base_path(config: Path) -> None:
    """Clear ``base_model_name_or_path`` (PEFT fills it from the model): it would depend on where the zoo lives and
    on whether the base was trained in this call or loaded from the cache, and modules of one pool must agree."""
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = None
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _variant_train(task: Task, split: dict, cfg: ZooSize, seed: int, variant: int) -> list:
    """Variant 0 trains on the task's train split; variant i on its own draw, disjoint from few-shot and test."""
    if variant == 0:
        return split["train"]
    taken = {e["input"] for e in split["test"] + split["fewshot"]}
    return draw_distinct(task, cfg.n_train, random.Random(stable_seed(task.name, seed, f"train-v{variant}")), taken)


def train_specialist(train, score, base_dev: float | None, steps: int, doublings: int, perfect: float = 1.0):
    """Train a module with ``train(steps) -> (model, loss)``; while ``score(model)`` (its dev accuracy) does not beat
    ``base_dev``, train again from the start with twice the steps, at most ``doublings`` times. No dev examples
    (``base_dev`` None) or a perfect base (``base_dev >= perfect``: 1.0 for fractions, 100 for percent) leave the
    first training as it is.

    Returns (model, loss, steps, dev accuracy or None).
    """
    while True:
        model, loss = train(steps)
        dev = None if base_dev is None else score(model)
        if dev is None or dev > base_dev or base_dev >= perfect or doublings == 0:
            return model, loss, steps, dev
        steps, doublings = steps * 2, doublings - 1


MODULE_FIELDS = ("task", "path", "train_size", "steps", "final_loss", "base_accuracy_on_task",
                 "module_accuracy_on_task", "dev_size", "base_accuracy_on_dev", "module_accuracy_on_dev")


def _build_module(out, kind, cfg, seed, task, split, base, base_key, tokenizer, cache, progress, built,
                  variant: int = 0) -> dict:
    name = task.name if variant == 0 else f"{task.name}-v{variant}"
    rel = f"{kind}/modules/{name}"
    final = out / rel
    steps = cfg.module_steps if variant == 0 else cfg.variant_steps
    n_dev = cfg.n_dev if variant == 0 else 0  # variants are not scored (generation is most of their build time)
    key = _fingerprint(base=base_key, task=task.name, steps=steps, batch=cfg.module_batch,
                       lr=cfg.module_lr, rank=cfg.rank, noise=cfg.instruction_noise, n_test=cfg.n_test, seed=seed,
                       **({"variant": variant} if variant else {"dev": n_dev, "doublings": cfg.module_doublings}))
    meta = _read_meta(final)
    if meta is None or meta.get("key") != key:
        train_examples = _variant_train(task, split, cfg, seed, variant)
        rng = random.Random(stable_seed("reword", name, seed))
        words = instruction_words()
        train = [reword(e, task, rng, words) if rng.random() < cfg.instruction_noise else e for e in train_examples]
        dev = dev_examples(task, seed, split, n_dev)
        base_dev = cache.get(base, tokenizer, f"dev/{task.name}", dev, cfg.max_new_tokens) if dev else None

        def fit(n_steps: int):
            return train_lora(base, tokenizer, train, LORA_TARGETS[kind], cfg.rank, n_steps, cfg.module_batch,
                              cfg.module_lr, stable_seed("module", kind, name, seed) % 2**31, progress,
                              desc=f"{name} ({n_steps} steps)")

        peft_model, loss, steps, module_dev = train_specialist(
            fit, lambda model: _accuracy(model, tokenizer, dev, cfg.max_new_tokens), base_dev, steps,
            cfg.module_doublings if variant == 0 else 0)
        meta = {"key": key, "task": task.name, "path": rel, "train_size": len(train_examples), "steps": steps,
                "final_loss": loss,
                "base_accuracy_on_task": cache.get(base, tokenizer, task.name, split["test"], cfg.max_new_tokens),
                "module_accuracy_on_task": None if variant else _accuracy(peft_model, tokenizer, split["test"],
                                                                          cfg.max_new_tokens),
                "dev_size": len(dev), "base_accuracy_on_dev": base_dev, "module_accuracy_on_dev": module_dev}
        tmp = _tmp_dir(final)
        try:
            peft_model.save_pretrained(tmp)
            _drop_base_path(tmp / "adapter_config.json")
            (tmp / SAMPLE_FILE).write_text(_jsonl(train_examples[: cfg.train_sample]))
            (tmp / META).write_text(json.dumps(meta, indent=1))
            _publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        built.append(rel)
    elif not (final / SAMPLE_FILE).exists():  # a module built before samples were written
        write_atomic(final / SAMPLE_FILE, _jsonl(_variant_train(task, split, cfg, seed, variant)[: cfg.train_sample]))
    return {k: meta.get(k) for k in MODULE_FIELDS}


def load_manifest(out: Path | str = DEFAULT_ZOO_DIR) -> dict:
    """The manifest of the zoo under ``out`` (paths in it are relative to ``out``)."""
    return json.loads((Path(out) / "manifest.json").read_text())


def load_module(out: Path | str, kind: str, task: str) -> PeftModel:
    """A zoo module on top of a fresh copy of its base model (convenience for inspection)."""
    out = Path(out)
    return PeftModel.from_pretrained(_load_base(kind, out / kind / "base"), out / kind / "modules" / task).eval()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the offline LoraHub module zoo.")
    parser.add_argument("--out", type=Path, default=DEFAULT_ZOO_DIR)
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--kinds", nargs="+", default=["t5"], choices=["t5", "llama"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tasks", nargs="*", default=None)
    args = parser.parse_args(argv)
    start = time.time()
    manifest = build_zoo(args.out, args.size, tuple(args.kinds), args.seed, True, args.tasks, None, args.threads)
    print(f"zoo at {args.out}: built {len(manifest['built'])} artifacts in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
