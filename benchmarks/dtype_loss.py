"""How far the bfloat16 loss is from the float32 loss on a real model: a built world's base, 20 of its modules,
5 examples of a held-out subtask, the zero composition, each module alone and random compositions.

    python benchmarks/dtype_loss.py [--world DIR] [--task navigate] [--candidates 24]

Both dtypes score the same candidates with the engine (in-place merge; the loss and the answer-position LM head
in float32 either way), on the CPU. Prints the largest and mean absolute difference and the rank agreement of the
candidates; writes benchmarks/results/dtype_loss.json. `--dtype auto` picks bfloat16 on GPUs on these grounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from world import built_world, load_world  # noqa: E402

from actors import Worker, WorkerSpec  # noqa: E402
from lorahub_ray.data import load_examples  # noqa: E402
from lorahub_ray.modules import load_stack  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODULES, SHOTS = 20, 5


def candidates(num_modules: int, count: int, seed: int) -> np.ndarray:
    """The zero composition, each module alone (up to ``count``), then LoraHub-range random weights."""
    rng = np.random.default_rng(seed)
    rows = [np.zeros(num_modules), *np.eye(num_modules)[: max(0, count // 2)]]
    while len(rows) < count:
        rows.append(rng.uniform(-1.5, 1.5, num_modules))
    return np.array(rows)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=built_world())
    parser.add_argument("--task", default="navigate")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = load_world(args.world)
    entry = next((e for e in manifest["heldout"] if e["task"] == args.task), None)
    if entry is None:
        raise SystemExit(f"error: {args.task!r} is not a held-out subtask of {args.world}")
    excluded = set(entry.get("exclude", []))
    pool = [str(args.world / m["path"]) for m in manifest["modules"] if m["task"] not in excluded]
    rng = random.Random(f"dtype/{args.seed}")
    modules = rng.sample(pool, min(MODULES, len(pool)))
    examples = rng.sample(load_examples(args.world / entry["path"]), SHOTS)
    stack = load_stack(modules)
    population = candidates(stack.num_modules, args.candidates, args.seed)
    losses, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        worker = Worker(WorkerSpec(base=str(args.world / manifest["base"]), device="cpu", dtype=dtype,
                                   num_threads=1), stack, examples)
        start = time.perf_counter()
        results = worker.evaluate(population)
        seconds[dtype] = (time.perf_counter() - start) / len(population)
        losses[dtype] = np.array([r.loss for r in results])
    diff = np.abs(losses["bfloat16"] - losses["float32"])
    summary = {"max_abs_difference": float(diff.max()), "mean_abs_difference": float(diff.mean()),
               "float32_loss_range": [float(losses["float32"].min()), float(losses["float32"].max())],
               "rank_correlation": spearman(losses["float32"], losses["bfloat16"]),
               "same_best_candidate": int(np.argmin(losses["float32"])) == int(np.argmin(losses["bfloat16"])),
               "seconds_per_evaluation": seconds}
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dtype_loss.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/dtype_loss.py", *sys.argv[1:]]), "world": manifest["world"],
        "task": args.task, "machine": platform.platform(), "build_machine": manifest.get("machine"),
        "modules": [Path(m).name for m in modules], "candidates": len(population), **summary,
        "losses": {k: v.tolist() for k, v in losses.items()}}, indent=1) + "\n")
    print(f"wrote {RESULTS}/dtype_loss.json")


if __name__ == "__main__":
    main()
