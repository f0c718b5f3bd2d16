"""Should a real world's inputs go through the instruct model's chat template? Zero-shot SmolLM2 on held-out
BBH subtasks, each input as given (the project's convention) and wrapped in the tokenizer's chat template.

    python benchmarks/chat_template.py [--world DIR] [--tasks ...] [--examples 40]

Scores: exact match (generation stops at the end token; budget = longest answer + 8 tokens) and option accuracy,
beside the majority class (and, for multiple choice, chance) of the same examples.
Writes benchmarks/results/chat_template.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from world import baselines, built_world, load_world  # noqa: E402

from lorahub_ray.data import load_examples  # noqa: E402
from lorahub_ray.evaluate import exact_match, load_model, option_accuracy  # noqa: E402

TASKS = ["navigate", "sports_understanding", "hyperbaton", "disambiguation_qa", "movie_recommendation", "snarks",
         "object_counting", "date_understanding"]
RESULTS = Path(__file__).parent / "results"


def chat(tokenizer, example: dict) -> dict:
    """``example`` as one user turn of the chat template, the answer (without its leading space) as the reply."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": example["input"]}], tokenize=False,
                                           add_generation_prompt=True)
    wrapped = {"input": prompt, "output": example["output"].strip()}
    if "options" in example:
        wrapped["options"] = [option.strip() for option in example["options"]]
    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=built_world())
    parser.add_argument("--tasks", nargs="*", default=TASKS)
    parser.add_argument("--examples", type=int, default=40, help="examples per subtask (the file's first)")
    args = parser.parse_args()
    manifest = load_world(args.world)
    paths = {e["task"]: args.world / e["path"] for e in manifest["heldout"]}
    model, tokenizer = load_model(str(args.world / manifest["base"]), device="cpu")
    rows, started = [], time.time()
    for task in args.tasks:
        raw = load_examples(paths[task])[: args.examples]
        row = {"task": task, **baselines(raw)}
        for name, examples in (("raw", raw), ("chat", [chat(tokenizer, ex) for ex in raw])):
            row[name] = {"exact_match": exact_match(model, tokenizer, examples).accuracy}
            if "options" in raw[0]:
                row[name]["option_accuracy"] = option_accuracy(model, tokenizer, examples)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {name: {metric: float(np.mean([r[name][metric] for r in rows if metric in r[name]]))
                      for metric in ("exact_match", "option_accuracy")} for name in ("raw", "chat")}
    summary["majority_class"] = {  # beside exact match (every subtask) and option accuracy (multiple choice)
        "every_subtask": float(np.mean([r["majority"] for r in rows])),
        "multiple_choice": float(np.mean([r["majority"] for r in rows if "chance" in r] or [np.nan]))}
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chat_template.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/chat_template.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpu": manifest.get("machine")},
        "wall_seconds": round(time.time() - started, 1), "examples_per_task": args.examples,
        "summary": summary, "tasks": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
