"""LoraHub on BIG-Bench Hard, in the paper's protocol, for a base model and module pool you have locally.

    python benchmarks/bbh.py --bbh path/to/bbh --base path/to/flan-t5-large --modules path/to/loras/*
                             [--tasks boolean_expressions ...] [--seeds 1 2 3 4 5] [--methods ...]

BBH files are the public format: ``<task>.json`` holding ``{"examples": [{"input": ..., "target": ...}, ...]}``.
Per task and seed: 5 random examples are the few-shot set, the rest the test set, and 20 random modules
of the pool are the candidates. Writes ``--out`` (default benchmarks/results/bbh.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needs import private_ray  # noqa: E402
from protocol import Case, measured_speedup, run_methods  # noqa: E402

from lorahub_ray.errors import InputError  # noqa: E402

DEFAULT_METHODS = ["zero_shot", "in_context", "best_single", "uniform", "lorahub_ngopt", "lorahub_cma"]


def load_bbh_task(path: Path) -> list[dict[str, str]]:
    """A BBH task file as ``{"input", "output"}`` examples."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        examples = [{"input": ex["input"], "output": ex["target"]} for ex in payload["examples"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a BBH task file with examples of 'input' and 'target' ({err})") from None
    if len(examples) < 6:
        raise InputError(f"{path}: {len(examples)} examples; at least 6 are needed (5 few-shot + test)")
    return examples


def bbh_cases(bbh: Path, base: str, pool: list[str], tasks: list[str] | None, seeds: list[int],
              modules_per_run: int = 20, shots: int = 5, max_new_tokens: int | None = None):
    """Yield (task, seed, Case) in the paper's protocol."""
    files = sorted(bbh.glob("*.json")) if not tasks else [bbh / f"{t}.json" for t in tasks]
    if not files:
        raise InputError(f"no BBH task files (*.json) in {str(bbh)!r}")
    for path in files:
        examples = load_bbh_task(path)
        for seed in seeds:
            rng = random.Random(f"{path.stem}/{seed}")
            order = rng.sample(range(len(examples)), len(examples))
            fewshot, test = [examples[i] for i in order[:shots]], [examples[i] for i in order[shots:]]
            modules = rng.sample(pool, min(modules_per_run, len(pool)))  # the sample's order, as in quality.py
            yield path.stem, seed, Case(base, modules, fewshot, test, seed, max_new_tokens=max_new_tokens)


def run_bbh(bbh: Path, base: str, pool: list[str], tasks: list[str] | None = None, seeds: list[int] = (1, 2, 3, 4, 5),
            methods: list[str] = DEFAULT_METHODS, budget: int = 40, modules_per_run: int = 20,
            max_new_tokens: int | None = None) -> dict:
    """Every method on every task and seed; returns per-method average and best over seeds (mean over tasks)."""
    per_task: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    speedup = None
    for task, seed, case in bbh_cases(bbh, base, pool, tasks, list(seeds), modules_per_run,
                                      max_new_tokens=max_new_tokens):
        if speedup is None:  # the 2-actor speed-up, measured once (1.0 when no method needs it: Ray is not started)
            speedup = measured_speedup(case) if any(m.endswith("equal_time") for m in methods) else 1.0
        for method, accuracy in run_methods(case, methods, budget=budget, speedup=speedup)["accuracy"].items():
            per_task[method].setdefault(task, []).append(accuracy)
        print(f"{task} seed {seed} done", flush=True)
    return {m: {"avg": float(np.mean([np.mean(v) for v in tasks_.values()])),
                "best": float(np.mean([np.max(v) for v in tasks_.values()])),
                "per_task": {t: v for t, v in tasks_.items()}} for m, tasks_ in per_task.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="LoraHub on BBH with local models")
    parser.add_argument("--bbh", type=Path, required=True, help="directory of BBH <task>.json files")
    parser.add_argument("--base", required=True)
    parser.add_argument("--modules", nargs="+", required=True)
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="*", default=DEFAULT_METHODS)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bbh.json")
    args = parser.parse_args()
    needs_ray = any(m.endswith("equal_time") for m in args.methods)
    with private_ray() if needs_ray else contextlib.nullcontext():
        summary = run_bbh(args.bbh, args.base, args.modules, args.tasks, args.seeds, args.methods, args.budget)
    for method, figures in summary.items():
        print(f"{method:34s} avg {figures['avg']:6.1f}  best {figures['best']:6.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "methods": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
