"""Quality of LoraHub on the offline zoo's held-out tasks, against zero-shot, the best single module, the
uniform average, LoRA fine-tuning on the same five examples, and in-context learning.

    python benchmarks/quality.py                  # encoder-decoder zoo, every held-out task x 5 seeds
    python benchmarks/quality.py --model llama    # the decoder-only zoo
    python benchmarks/quality.py --quick          # 3 tasks x 2 seeds
    python benchmarks/quality.py --speedup S --shard 0/2 & python benchmarks/quality.py --speedup S --shard 1/2
    python benchmarks/quality.py --combine 2      # after both: the same result, from two processes side by side

Each seed draws a different random sample of 20 modules and of the 5 examples (from the task's training
split). LoraHub runs with the reference optimizer (sequential NGOpt, budget 40), with CMA-ES (budget 40), and
with CMA-ES and singles-cma on 2 actors given the wall-clock time of the reference run: the 2-actor speed-up is
measured once on this machine, and a search's result does not depend on the number of actors (tested), so those
runs get 40 x speed-up evaluations in one process (other jobs on the machine cannot skew them). Writes
benchmarks/results/quality[_<model>].json and .png (accuracy per method, and the searches' convergence).
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

from needs import private_ray, require  # noqa: E402
from protocol import Case, load_shards, measured_speedup, parse_shard, remove_shards, run_methods, save_shard  # noqa: E402

from lorahub_ray.demo import PREBUILT_ZOO_DIR, ensure_zoo  # noqa: E402
from lorahub_ray.zoo.build import DEFAULT_ZOO_DIR, build_zoo  # noqa: E402
from lorahub_ray.zoo.tasks import get_task, splits  # noqa: E402

# ---- settings -------------------------------------------------------------------------------------------
SEEDS = [1, 2, 3, 4, 5]
MODULES_PER_RUN = 20
BUDGET = 40
METHODS = ["zero_shot", "in_context", "best_single", "uniform", "lora_finetune", "lorahub_ngopt", "lorahub_cma",
           "lorahub_cma_2actors_equal_time", "lorahub_singles_cma_2actors_equal_time"]
RESULTS = Path(__file__).parent / "results"
# ---------------------------------------------------------------------------------------------------------


def cases(zoo: Path, manifest: dict, kind: str, tasks: list[str], seeds: list[int], shard: tuple[int, int] = (0, 1)):
    """Yield (number, task, seed, Case) for the cases of ``shard`` (I, N): every N-th from the I-th.

    Each seed samples its own 20 modules and 5 training examples.
    """
    base = str(zoo / manifest["bases"][kind])
    pool = [str(zoo / m["path"]) for m in manifest["modules"][kind]]
    numbered = enumerate((task, seed) for task in tasks for seed in seeds)
    for number, (task, seed) in numbered:
        if number % shard[1] != shard[0]:
            continue
        data = splits(get_task(task), manifest["seed"])
        test = [json.loads(line) for line in (zoo / f"tasks/{task}/test.jsonl").read_text().splitlines()]
        rng = random.Random(f"{task}/{seed}")
        # In the sample's order, as the reference: its Cobyla probes the weights one at a time in this order and
        # keeps each probe that helps, so sorting by name would put the same modules first in every run.
        modules = rng.sample(pool, min(MODULES_PER_RUN, len(pool)))
        yield number, task, seed, Case(base, modules, rng.sample(data["train"], 5), test, seed)


def summarise(per_task: dict[str, dict[str, list[float]]]) -> dict:
    """Per method: average and best over seeds, per task and overall (overall = mean over tasks)."""
    summary = {}
    for method, tasks in per_task.items():
        avg = {t: float(np.mean(v)) for t, v in tasks.items()}
        best = {t: float(np.max(v)) for t, v in tasks.items()}
        summary[method] = {"avg": float(np.mean(list(avg.values()))), "best": float(np.mean(list(best.values()))),
                           "per_task": {t: {"avg": avg[t], "best": best[t], "runs": tasks[t]} for t in tasks}}
    return summary


def plot(summary: dict, convergence: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    methods = list(summary)
    left.bar(methods, [summary[m]["avg"] for m in methods], color="#1f77b4", label="average over seeds")
    left.scatter(methods, [summary[m]["best"] for m in methods], color="k", marker="_", s=300, label="best seed")
    left.set_ylabel("held-out exact match (%)")
    left.tick_params(axis="x", rotation=35)
    left.legend()
    for method, curves in convergence.items():
        length = min(len(c) for c in curves)
        right.plot(np.mean([c[:length] for c in curves], axis=0), label=method)
    right.set_xlabel("evaluations")
    right.set_ylabel("best few-shot score (mean over runs)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description="LoraHub quality on the offline zoo")
    parser.add_argument("--zoo", type=Path, default=None,
                        help="zoo directory (default: the demo's: the user cache if built, else the prebuilt zoo)")
    parser.add_argument("--model", choices=["t5", "llama"], default="t5")
    parser.add_argument("--quick", action="store_true", help="3 tasks x 2 seeds")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="how many of the 5 seeds to run")
    parser.add_argument("--speedup", type=float, default=None,
                        help="the 2-actor speed-up to use (default: measured on the first case; give one measured "
                             "on an idle machine when shards run side by side)")
    parser.add_argument("--shard", default=None, help="I/N: run only every N-th case from the I-th, save its rows")
    parser.add_argument("--combine", type=int, default=None, help="N: summarise the rows saved by N shards")
    args = parser.parse_args()
    require(__file__, ("matplotlib",))
    args.zoo, manifest = ensure_zoo(args.zoo)
    if args.model not in manifest["bases"]:  # the prebuilt zoo holds the T5 kind only: build into the cache
        args.zoo = DEFAULT_ZOO_DIR if args.zoo == PREBUILT_ZOO_DIR else args.zoo
        manifest = build_zoo(args.zoo, kinds=tuple(sorted({"t5", args.model})))
    tasks = [entry["task"] for entry in manifest["heldout"]][: 3 if args.quick else None]
    seeds = SEEDS[: 2 if args.quick else args.seeds]
    suffix = "" if args.model == "t5" else f"_{args.model}"
    suffix += "_quick" if args.quick else ("" if len(seeds) == len(SEEDS) else f"_{len(seeds)}seed")
    shard = parse_shard(args.shard)
    runs: list[dict] = []
    started = time.time()
    speedup = args.speedup
    todo = [] if args.combine is not None else cases(args.zoo, manifest, args.model, tasks, seeds, shard)
    for number, task, seed, case in todo:
        if speedup is None:
            with private_ray():
                speedup = measured_speedup(case)
            print(f"2 actors: {speedup:.2f}x the sequential evaluation rate on this machine", flush=True)
        outcome = run_methods(case, METHODS, budget=BUDGET, speedup=speedup)
        runs.append({"case": number, "task": task, "seed": seed, "speedup": speedup, **outcome})
        print(f"{task:28s} seed {seed}: " + "  ".join(f"{m} {a:5.1f}" for m, a in outcome["accuracy"].items()),
              flush=True)
    if args.shard is not None:
        save_shard(RESULTS, f"quality{suffix}", shard, runs, time.time() - started)
        print(f"saved shard {args.shard}; summarise with --combine {shard[1]}")
        return
    walls = [time.time() - started]
    if args.combine is not None:
        runs, walls = load_shards(RESULTS, f"quality{suffix}", args.combine)
        speedup = runs[0]["speedup"]
    per_task: dict = {m: {} for m in METHODS}
    convergence: dict = {}
    for outcome in runs:
        task = outcome["task"]
        for method, accuracy in outcome["accuracy"].items():
            per_task[method].setdefault(task, []).append(accuracy)
        for method, curve in outcome["convergence"].items():
            convergence.setdefault(method, []).append(curve)
    summary = summarise(per_task)
    print(f"\n{'method':34s} {'avg':>6s} {'best':>6s}")
    for method, figures in summary.items():
        print(f"{method:34s} {figures['avg']:6.1f} {figures['best']:6.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"quality{suffix}.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/quality.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        "wall_seconds": max(walls), "processes": len(walls), "zoo_size": manifest["size"], "model": args.model,
        "tasks": tasks, "seeds": seeds, "modules_per_run": MODULES_PER_RUN, "budget": BUDGET,
        "measured_2_actor_speedup": speedup,
        "methods": summary, "runs": runs,
    }, indent=1) + "\n")
    plot(summary, convergence, RESULTS / f"quality{suffix}.png")
    if args.combine is not None:
        remove_shards(RESULTS, f"quality{suffix}", args.combine)
    print(f"wrote {RESULTS}/quality{suffix}.json and .png")


if __name__ == "__main__":
    main()
