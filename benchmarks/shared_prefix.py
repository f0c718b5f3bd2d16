"""In-context scoring on a real model: every prompt read whole, against the demonstrations all the prompts share
read once (`lorahub_ray.evaluate.worth_sharing`), side by side in one run.

    python benchmarks/shared_prefix.py [--world DIR] [--tasks navigate ...] [--test 10]

A built world's base (float32 on the CPU, one thread) scores held-out examples of each subtask with the same 5
other examples of the subtask before each input (the in-context prompts of the real-world benchmark): greedy
exact match, and for multiple-choice subtasks the option losses. Prints seconds, the ratio, the largest loss
difference and the predictions or picks that differ; writes benchmarks/results/shared_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import prompt_with_demonstrations  # noqa: E402
from world import built_world, held_out_examples, load_world  # noqa: E402

from actors.examples import prompt_ids  # noqa: E402
from lorahub_ray.evaluate import exact_match, load_model, option_losses  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHOTS = 5


def both_ways(score: Callable[[], object]) -> tuple[object, float, object, float]:
    """``score()`` with every prompt read whole, then with the shared prefix read once: results and seconds."""
    start = time.perf_counter()
    with mock.patch("lorahub_ray.evaluate.worth_sharing", return_value=0):
        whole = score()
    whole_seconds = time.perf_counter() - start
    start = time.perf_counter()
    shared = score()
    return whole, whole_seconds, shared, time.perf_counter() - start


def measure(model, tokenizer, prompted: list[dict]) -> dict:
    """Exact match (and option losses, for multiple choice) of ``prompted`` both ways."""
    prompts = [prompt_ids(tokenizer, ex["input"]) for ex in prompted]
    row: dict = {"examples": len(prompted), "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts)}
    whole, whole_s, shared, shared_s = both_ways(lambda: exact_match(model, tokenizer, prompted))
    row["exact_match"] = {"whole_seconds": round(whole_s, 2), "shared_prefix_seconds": round(shared_s, 2),
                          "speedup": round(whole_s / shared_s, 2), "accuracy": [whole.accuracy, shared.accuracy],
                          "predictions_that_differ": sum(a["prediction"] != b["prediction"] for a, b in
                                                         zip(whole.predictions, shared.predictions))}
    if "options" in prompted[0]:
        whole, whole_s, shared, shared_s = both_ways(lambda: option_losses(model, tokenizer, prompted))
        pairs = [(a, b) for row_a, row_b in zip(whole, shared) for a, b in zip(row_a, row_b)]
        row["option_losses"] = {
            "whole_seconds": round(whole_s, 2), "shared_prefix_seconds": round(shared_s, 2),
            "speedup": round(whole_s / shared_s, 2), "max_abs_loss_difference": max(abs(a - b) for a, b in pairs),
            "picks_that_differ": sum(ra.index(min(ra)) != rb.index(min(rb)) for ra, rb in zip(whole, shared))}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=built_world())
    parser.add_argument("--tasks", nargs="+", default=["tracking_shuffled_objects_three_objects", "navigate"])
    parser.add_argument("--test", type=int, default=10, help="examples scored per subtask")
    args = parser.parse_args()
    manifest = load_world(args.world)
    subtasks = held_out_examples(args.world, manifest, args.tasks)
    torch.set_num_threads(1)
    model, tokenizer = load_model(str(args.world / manifest["base"]), device="cpu")
    rows, started = [], time.time()
    for task, examples in subtasks.items():
        order = random.Random(f"prefix/{task}").sample(examples, len(examples))
        row = {"task": task, **measure(model, tokenizer, prompt_with_demonstrations(order[:SHOTS],
                                                                                   order[SHOTS : SHOTS + args.test]))}
        rows.append(row)
        for part in ("exact_match", "option_losses"):
            if part in row:
                print(f"{task:40s} {row['prompt_tokens_mean']:5.0f} tokens {part:13s} {row[part]['whole_seconds']:7.1f}"
                      f" s -> {row[part]['shared_prefix_seconds']:6.1f} s ({row[part]['speedup']:.1f}x)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shared_prefix.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/shared_prefix.py", *sys.argv[1:]]), "world": manifest["world"],
        "machine": platform.platform(), "threads": 1, "wall_seconds": round(time.time() - started, 1),
        "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}/shared_prefix.json")


if __name__ == "__main__":
    main()
