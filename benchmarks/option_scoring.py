"""Option accuracy's cost on a real model: every (input, option) row read whole, against each input read once with
its cache shared by the options (`lorahub_ray.evaluate.option_losses`), side by side in one run.

    python benchmarks/option_scoring.py [--world DIR] [--tasks reasoning_about_colored_objects ...] [--test 5]

A built world's base (bfloat16 never: float32 on the CPU, one thread) scores held-out multiple-choice examples of
each subtask twice: as given, and with 5 other examples of the subtask before each input (the in-context prompts
of the real-world benchmark; their shared demonstrations are read with each input here, as `shared_prefix.py`
measures that apart). Prints seconds, the ratio, the largest loss difference and whether both pick the same
option everywhere; writes benchmarks/results/option_scoring.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import prompt_with_demonstrations  # noqa: E402
from world import built_world, held_out_examples, load_world  # noqa: E402

from actors.examples import collate, example_ids  # noqa: E402
from actors.loss import example_token_losses  # noqa: E402
from lorahub_ray.evaluate import load_model, option_losses  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHOTS, BATCH = 5, 16


@torch.no_grad()
def full_row_losses(model, tokenizer, examples: list[dict]) -> list[list[float]]:
    """The way option accuracy was scored before: one padded row per (input, option), ``BATCH`` rows a forward."""
    rows = [example_ids(tokenizer, {"input": ex["input"], "output": option}, False)
            for ex in examples for option in ex["options"]]
    flat: list[float] = []
    for start in range(0, len(rows), BATCH):
        batch = collate(rows[start : start + BATCH], tokenizer.pad_token_id, False)
        flat += example_token_losses(model, batch)[0].tolist()
    out, offset = [], 0
    for ex in examples:
        out.append(flat[offset : offset + len(ex["options"])])
        offset += len(ex["options"])
    return out


def measure(model, tokenizer, examples: list[dict]) -> dict:
    """Both ways on ``examples``: seconds, ratio, largest loss difference, picks that differ."""
    start = time.perf_counter()
    full = full_row_losses(model, tokenizer, examples)
    full_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with mock.patch("lorahub_ray.evaluate.worth_sharing", return_value=0):  # only this effect: shared_prefix.py's
        shared = option_losses(model, tokenizer, examples)                   # is measured apart
    shared_seconds = time.perf_counter() - start
    pairs = [(a, b) for row_a, row_b in zip(full, shared) for a, b in zip(row_a, row_b)]
    picks = sum(ra.index(min(ra)) != rb.index(min(rb)) for ra, rb in zip(full, shared))
    return {"examples": len(examples), "rows": len(pairs),
            "prompt_tokens_mean": sum(len(tokenizer(ex["input"])["input_ids"]) for ex in examples) / len(examples),
            "full_rows_seconds": round(full_seconds, 2), "shared_prompt_seconds": round(shared_seconds, 2),
            "speedup": round(full_seconds / shared_seconds, 2),
            "max_abs_loss_difference": max(abs(a - b) for a, b in pairs), "picks_that_differ": picks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=built_world())
    parser.add_argument("--tasks", nargs="+", default=["reasoning_about_colored_objects", "navigate"])
    parser.add_argument("--test", type=int, default=5, help="examples scored per subtask and prompt")
    args = parser.parse_args()
    manifest = load_world(args.world)
    subtasks = held_out_examples(args.world, manifest, args.tasks)
    torch.set_num_threads(1)
    model, tokenizer = load_model(str(args.world / manifest["base"]), device="cpu")
    rows, started = [], time.time()
    for task, examples in subtasks.items():
        if "options" not in examples[0]:
            raise SystemExit(f"error: {task} is not multiple choice (its examples have no 'options')")
        order = random.Random(f"options/{task}").sample(examples, len(examples))
        shots, test = order[:SHOTS], order[SHOTS : SHOTS + args.test]
        for prompt, chosen in (("as given", test), ("in-context", prompt_with_demonstrations(shots, test))):
            row = {"task": task, "prompt": prompt, **measure(model, tokenizer, chosen)}
            row["options_mean"] = row["rows"] / row["examples"]
            rows.append(row)
            print(f"{task:38s} {prompt:10s} {row['prompt_tokens_mean']:6.0f} tokens {row['options_mean']:4.1f} options: "
                  f"{row['full_rows_seconds']:7.1f} s -> {row['shared_prompt_seconds']:6.1f} s "
                  f"({row['speedup']:.1f}x), "
                  f"loss difference {row['max_abs_loss_difference']:.1e}, picks differing {row['picks_that_differ']}",
                  flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "option_scoring.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/option_scoring.py", *sys.argv[1:]]), "world": manifest["world"],
        "machine": platform.platform(), "threads": 1, "wall_seconds": round(time.time() - started, 1),
        "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}/option_scoring.json")


if __name__ == "__main__":
    main()
