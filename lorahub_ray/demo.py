"""The demos: a held-out task searched on a Ray actor pool from five examples.

`run_demo` (the default, offline in a minute) gets the built-in zoo (built and cached on first use), composes its
modules for a task none of them was trained on, and prints zero-shot vs composed exact match on the task's test
split. `run_world_demo` does the same on the BIG-bench world (SmolLM2-135M-Instruct, a held-out BBH subtask; built
once by ``lorahub-ray zoo build --world bigbench``) and adds option accuracy for multiple-choice subtasks.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError
from lorahub_ray.evaluate import exact_match, load_model, option_accuracy
from lorahub_ray.optimizers import DEFAULT_OPTIMIZER
from lorahub_ray.run import run
from lorahub_ray.zoo.build import DEFAULT_ZOO_DIR, build_zoo, load_manifest

DEMO_MODULES = 20  # modules sampled per search, as in LoraHub


PREBUILT_ZOO_DIR = Path(__file__).parent / "zoo" / "prebuilt"  # the default zoo, shipped with the package


def ensure_zoo(zoo: str | Path | None) -> tuple[Path, dict]:
    """The zoo at ``zoo``; by default the user's cache if it holds one, else the prebuilt zoo shipped with the
    package, else the cache, built on first use (``lorahub-ray zoo build`` rebuilds it)."""
    if zoo:
        directory = Path(zoo)
    elif (DEFAULT_ZOO_DIR / "manifest.json").is_file() or not (PREBUILT_ZOO_DIR / "manifest.json").is_file():
        directory = DEFAULT_ZOO_DIR
    else:
        directory = PREBUILT_ZOO_DIR
    if not (directory / "manifest.json").is_file():
        print(f"building the module zoo in {directory} (once; later runs reuse it)")
        build_zoo(directory)
    return directory, load_manifest(directory)


def run_demo(zoo: str | Path | None = None, task: str | None = None, output: str | Path | None = None,
             budget: int = 40, optimizer: str = DEFAULT_OPTIMIZER, seed: int = 42, pool: PoolConfig | None = None,
             kind: str = "t5") -> dict:
    """Run the demo and return its figures (zero-shot and composed accuracy, weights, adapter path)."""
    directory, manifest = ensure_zoo(zoo)
    tasks = {entry["task"]: entry for entry in manifest["heldout"]}
    if task is not None and task not in tasks:
        raise ConfigError(f"`task` must be a held-out task of the zoo, one of {sorted(tasks)}, got {task!r}")
    entry = tasks[task] if task else manifest["heldout"][0]
    base = str(directory / manifest["bases"][kind])
    pool_modules = [str(directory / module["path"]) for module in manifest["modules"][kind]]
    modules = sorted(random.Random(seed).sample(pool_modules, min(DEMO_MODULES, len(pool_modules))))
    fewshot = directory / entry["fewshot"]
    test = load_examples(directory / entry["test"])
    output = Path(output) if output else Path(tempfile.mkdtemp(prefix="lorahub-ray-demo-")) / "result"
    print(f"held-out task {entry['task']!r}: {len(load_examples(fewshot))} examples, e.g. "
          f"{load_examples(fewshot)[0]['input']!r} -> {load_examples(fewshot)[0]['output']!r}")
    print(f"searching weights of {len(modules)} modules (of {len(pool_modules)}) with {optimizer}, budget {budget}")

    start = time.perf_counter()
    result = run(RunConfig(base=base, modules=modules, examples=str(fewshot), budget=budget, optimizer=optimizer,
                           seed=seed), pool or PoolConfig(num_actors=2), output)
    seconds = time.perf_counter() - start
    zero_shot = exact_match(*load_model(base, device="cpu"), test, max_new_tokens=32)
    composed = exact_match(*load_model(base, result.adapter_dir, device="cpu"), test, max_new_tokens=32)

    print(f"\nsearch: {result.evaluations} evaluations in {seconds:.1f}s, best score {result.best_score:.4f}")
    print(f"exact match on {len(test)} test examples:  zero-shot {zero_shot.accuracy:5.1f}%   "
          f"LoraHub {composed.accuracy:5.1f}%")
    nonzero = sorted(((n, w) for n, w in result.weights.items() if round(w, 3) != 0), key=lambda kv: -abs(kv[1]))
    print(f"top module weights ({len(result.weights) - len(nonzero)} of {len(result.weights)} at 0):")
    for name, weight in nonzero[:5]:
        print(f"  {weight:+.3f}  {Path(name).name}")
    print(f"adapter written to {result.adapter_dir}")
    return {"task": entry["task"], "zero_shot": zero_shot.accuracy, "composed": composed.accuracy,
            "weights": result.weights, "adapter": str(result.adapter_dir), "search_seconds": seconds}


def run_world_demo(world: str | Path | None = None, task: str = "navigate", output: str | Path | None = None,
                   budget: int = 40, optimizer: str = DEFAULT_OPTIMIZER, seed: int = 42,
                   pool: PoolConfig | None = None, test_size: int = 50, kind: str = "bigbench") -> dict:
    """The real-model demo: compose a real world's modules for the held-out BBH subtask ``task`` from 5 of its
    examples, then print zero-shot vs LoraHub exact match (and option accuracy) on ``test_size`` others.

    Args:
        world: the world's directory (default: `default_world_dir` of ``kind``).
        kind: ``bigbench`` or ``bbh`` (see `lorahub_ray.zoo.world`).

    Raises:
        ConfigError: the world is not built, or ``task`` is not one of its held-out subtasks.
    """
    from lorahub_ray.zoo.world import default_world_dir

    directory = Path(world) if world else default_world_dir(kind)
    if not (directory / "manifest.json").is_file():
        how = "--world bbh --bbh BIG-Bench-Hard-checkout" if kind == "bbh" else "--world bigbench"
        raise ConfigError(f"no {kind} world in {directory}; build it once with "
                          f"`lorahub-ray zoo build {how} --out {directory}` (about an hour on 2 CPUs)")
    manifest = json.loads((directory / "manifest.json").read_text())
    tasks = {entry["task"]: entry for entry in manifest["heldout"]}
    if task not in tasks:
        raise ConfigError(f"`task` must be a held-out subtask of the world, one of {sorted(tasks)}, got {task!r}")
    examples = load_examples(directory / tasks[task]["path"])
    random.Random(f"{task}/{seed}").shuffle(examples)
    fewshot, test = examples[:5], examples[5 : 5 + test_size]
    base = str(directory / manifest["base"])
    excluded = set(tasks[task].get("exclude", []))
    pool_modules = [str(directory / m["path"]) for m in manifest["modules"] if m["task"] not in excluded]
    modules = sorted(random.Random(seed).sample(pool_modules, min(DEMO_MODULES, len(pool_modules))))
    output = Path(output) if output else Path(tempfile.mkdtemp(prefix="lorahub-ray-demo-")) / "result"
    with tempfile.TemporaryDirectory() as scratch:
        fewshot_file = Path(scratch) / "fewshot.jsonl"
        fewshot_file.write_text("".join(json.dumps(ex) + "\n" for ex in fewshot))
        print(f"held-out BBH subtask {task!r} on {Path(base).name} (SmolLM2-135M-Instruct): 5 examples, e.g.\n"
              f"{fewshot[0]['input']}{fewshot[0]['output']}")
        print(f"searching weights of {len(modules)} modules (of {len(pool_modules)}) with {optimizer}, budget {budget}")
        start = time.perf_counter()
        result = run(RunConfig(base=base, modules=modules, examples=str(fewshot_file), budget=budget,
                               optimizer=optimizer, seed=seed), pool or PoolConfig(num_actors=2), output)
        seconds = time.perf_counter() - start
    figures = {}
    for name, adapter in (("zero_shot", None), ("lorahub", result.adapter_dir)):
        model, tokenizer = load_model(base, adapter, device="cpu")
        figures[name] = {"exact_match": exact_match(model, tokenizer, test).accuracy}
        if "options" in test[0]:
            figures[name]["option_accuracy"] = option_accuracy(model, tokenizer, test)
    print(f"\nsearch: {result.evaluations} evaluations in {seconds:.1f}s, best score {result.best_score:.4f}")
    for metric in figures["zero_shot"]:
        print(f"{metric.replace('_', ' ')} on {len(test)} test examples:  zero-shot {figures['zero_shot'][metric]:5.1f}%"
              f"   LoraHub {figures['lorahub'][metric]:5.1f}%")
    print(f"adapter written to {result.adapter_dir}")
    return {"task": task, **figures, "weights": result.weights, "adapter": str(result.adapter_dir),
            "search_seconds": seconds}
