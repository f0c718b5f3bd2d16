"""LoraHub on a real world: SmolLM2-135M-Instruct, modules trained on real tasks, held-out BBH subtasks.

    lorahub-ray zoo build --world bigbench                      # once (about an hour on 2 CPUs); or
    lorahub-ray zoo build --world bbh --bbh CHECKOUT            # (then pass --world ~/.cache/lorahub-ray/bbh below)
    python benchmarks/world.py --measure-speedup                 # alone: prints S
    python benchmarks/world.py --speedup S --shard 0/2 & python benchmarks/world.py --speedup S --shard 1/2
    python benchmarks/world.py --combine 2                      # after both (or after stopping them: a shard
                                                                # saves its rows after every case); the cases of
                                                                # the results file that no shard ran are kept

A rerun with the same test size keeps the cases already in the results file or in saved shards (``--fresh`` reruns
them), so the subtasks can be covered a few at a time.

The optimizer panel (``--panel``, written as world_panel): the baselines, the reference and every other registered
optimizer at the reference's wall-clock on ``--actors`` actors (default 2). A run that adds methods to some of its
cases goes under its own name and ``benchmarks/panel.py`` merges it by case, e.g. the default on 8 actors:

    python benchmarks/world.py --world W --speedup S --methods lorahub_probes_cma_8actors_equal_time \
        --name world_panel_k8 --tasks ... --shard 0/2 &             # and --shard 1/2 beside it, then --combine 2

Per subtask and seed: 5 random examples of the subtask are the few-shot set, the next ``--test-size`` the test set
(disjoint), and 20 random modules of the pool the candidates (in the bbh world, the pool leaves out the modules of the
subtask's own BBH task). Methods: zero-shot, in-context (the 5 examples in the
prompt), the best single module (lowest few-shot loss), the uniform average, a LoRA fine-tuned on the 5 examples,
LoraHub with the reference optimizer (sequential NGOpt, budget 40) and with singles-cma on 2 actors at the
reference's wall-clock time (see `protocol.equal_time_budget`; singles-cma was the default when world.json was first
measured, and a rerun keeps its cases only with the same methods; the panel scores the default since, probes-cma).
Scores: exact match as the paper scores it and, for multiple-choice subtasks, option accuracy (the option with the
lowest loss), beside the majority class of the test set and chance. Writes benchmarks/results/world.json and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needs import private_ray, require  # noqa: E402
from protocol import (  # noqa: E402
    Case,
    load_shards,
    measured_speedup,
    parse_shard,
    remove_shards,
    run_methods,
    save_shard,
    search_method_name,
)
from quality import summarise  # noqa: E402

from lorahub_ray.data import load_examples  # noqa: E402
from lorahub_ray.errors import InputError  # noqa: E402
from lorahub_ray.optimizers import OPTIMIZERS  # noqa: E402
from lorahub_ray.zoo.world import WORLDS, default_world_dir  # noqa: E402

# ---- settings -------------------------------------------------------------------------------------------
SEEDS = [1, 2, 3, 4, 5]
SHOTS = 5
MODULES_PER_RUN = 20
BUDGET = 40
FINETUNE_STEPS, FINETUNE_LR = 40, 2e-3  # LoRA on the 5 examples: 40 full-batch steps (100 take ~2 min a case)
METHODS = ["zero_shot", "in_context", "best_single", "uniform", "lora_finetune", "lorahub_ngopt",
           "lorahub_singles_cma_2actors_equal_time"]
PANEL_ACTORS = [2]  # the optimizer panel's default numbers of actors (--actors)
RESULTS = Path(__file__).parent / "results"
# ---------------------------------------------------------------------------------------------------------


def panel_methods(actors: list[int]) -> list[str]:
    """The optimizer panel's real world (benchmarks/panel.py): the baselines, the reference, and every other
    registered optimizer on each of ``actors`` actors at the reference's wall-clock."""
    return ["zero_shot", "best_single", "lorahub_ngopt",
            *(search_method_name(name, k) for k in actors for name in OPTIMIZERS if name != "ngopt")]


def built_world() -> Path:
    """The default world directory: the first of the worlds that is built (bigbench, then bbh)."""
    built = [default_world_dir(name) for name in WORLDS if (default_world_dir(name) / "manifest.json").is_file()]
    return built[0] if built else default_world_dir()


def load_world(world: Path) -> dict:
    """The world's manifest (built by ``lorahub-ray zoo build --world bigbench``)."""
    path = world / "manifest.json"
    if not path.is_file():
        raise InputError(f"{world} holds no built world (no manifest.json); build it with "
                         f"`lorahub-ray zoo build --world bigbench --out {world}`")
    return json.loads(path.read_text())


def held_out_examples(world: Path, manifest: dict, tasks: list[str]) -> dict[str, list[dict]]:
    """The examples of each of ``tasks``, held-out subtasks of the built ``world``; any other name stops the run
    with one error line."""
    entries = {e["task"]: e for e in manifest["heldout"]}
    if unknown := [t for t in tasks if t not in entries]:
        raise SystemExit(f"error: {unknown} are not held-out subtasks of {world}")
    return {task: load_examples(world / entries[task]["path"]) for task in tasks}


def baselines(test: list[dict]) -> dict[str, float]:
    """Constant-answer baselines: the majority class of the test set (its label prior) and, for multiple choice,
    chance (the mean of 1 / number of options)."""
    counts = Counter(ex["output"] for ex in test)
    figures = {"majority": 100.0 * counts.most_common(1)[0][1] / len(test)}
    if "options" in test[0]:
        figures["chance"] = 100.0 * float(np.mean([1 / len(ex["options"]) for ex in test]))
    return figures


def cases(world: Path, manifest: dict, tasks: list[str], seeds: list[int], test_size: int,
          shard: tuple[int, int] = (0, 1)):
    """Yield (number, task, seed, Case) for the cases of ``shard``."""
    entries = {e["task"]: e for e in manifest["heldout"]}
    for number, (task, seed) in enumerate((t, s) for t in tasks for s in seeds):
        if number % shard[1] != shard[0]:
            continue
        excluded = set(entries[task].get("exclude", []))
        pool = [str(world / m["path"]) for m in manifest["modules"] if m["task"] not in excluded]
        examples = load_examples(world / entries[task]["path"])
        rng = random.Random(f"{task}/{seed}")
        order = rng.sample(examples, len(examples))
        modules = rng.sample(pool, min(MODULES_PER_RUN, len(pool)))
        fewshot, test = order[:SHOTS], order[SHOTS : SHOTS + test_size]
        yield number, task, seed, Case(str(world / manifest["base"]), modules, fewshot, test, seed,
                                       max_new_tokens=None, options="options" in test[0],
                                       finetune_steps=FINETUNE_STEPS, finetune_lr=FINETUNE_LR)


def previous_runs(name: str, test_size: int, methods: list[str]) -> tuple[dict[tuple[str, int], dict], float]:
    """Rows measured earlier with the same test size and methods, by (subtask, seed): the results written under
    ``name`` and any shard files saved under it; and the wall time of the written results. A rerun skips these
    cases."""
    rows, wall = [], 0.0
    written = RESULTS / f"{name}.json"
    if written.is_file():
        result = json.loads(written.read_text())
        if result.get("test_size") == test_size and result.get("budget") == BUDGET:
            rows, wall = result["runs"], result["wall_seconds"]
    for part in sorted(RESULTS.glob(f"{name}.shard-*-of-*.json")):
        rows += json.loads(part.read_text())["rows"]
    return {(row["task"], row["seed"]): row for row in rows if list(row["accuracy"]) == methods}, wall


def combined_runs(shard_rows: list[dict], kept: dict[tuple[str, int], dict], tasks: list[str],
                  seeds: list[int]) -> list[dict]:
    """The rows of ``tasks`` x ``seeds`` in case order for ``--combine``: each from the shards, else from the rows
    ``kept`` from earlier results (`previous_runs`; marked ``earlier_run``), so that shards run with fewer seeds
    or subtasks than the results file holds lose none of its cases."""
    measured = {(row["task"], row["seed"]): row for row in shard_rows}
    runs = []
    for number, key in enumerate((task, seed) for task in tasks for seed in seeds):
        if key in measured:
            runs.append({**measured[key], "case": number})
        elif key in kept:
            runs.append({**kept[key], "case": number, "earlier_run": True})
    return runs


def plot(em: dict, option: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(em)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(x - 0.2, [em[m]["avg"] for m in methods], 0.4, label="exact match (all subtasks)")
    if option:
        ax.bar(x + 0.2, [option[m]["avg"] for m in methods], 0.4, label="option accuracy (multiple choice)")
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("held-out BBH, mean over subtasks (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description="LoraHub on the BIG-bench world (SmolLM2, held-out BBH)")
    parser.add_argument("--world", type=Path, default=built_world(),
                        help="the world's directory (default: the bigbench world if built, else the bbh world)")
    parser.add_argument("--tasks", nargs="*", default=None, help="held-out subtasks (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="how many of the 5 seeds to run")
    parser.add_argument("--test-size", type=int, default=40, help="test examples per subtask and seed")
    parser.add_argument("--speedup", type=float, default=None, help="the 2-actor speed-up (default: measured)")
    parser.add_argument("--measure-speedup", action="store_true",
                        help="only measure the 2-actor speed-up on the first case and print it (run it alone, then "
                             "give it to side-by-side shards with --speedup)")
    parser.add_argument("--shard", default=None, help="I/N: run only every N-th case from the I-th, save its rows")
    parser.add_argument("--combine", type=int, default=None, help="N: summarise the rows saved by N shards")
    parser.add_argument("--methods", nargs="+", default=METHODS,
                        help=f"methods to run (default: {' '.join(METHODS)}; the optimizer panel's: --panel)")
    parser.add_argument("--panel", action="store_true",
                        help=f"the optimizer panel's methods ({' '.join(panel_methods(PANEL_ACTORS))}), written "
                             "as world_panel")
    parser.add_argument("--actors", type=int, nargs="+", default=None,
                        help="with --panel: the numbers of actors whose equal-time budget each optimizer gets "
                             f"(default: {PANEL_ACTORS}; 1 is the reference's budget, more than 2 are simulated)")
    parser.add_argument("--name", default=None,
                        help="results file name under benchmarks/results (default: world, or world_panel)")
    parser.add_argument("--fresh", action="store_true",
                        help="rerun every case (default: keep the cases already in the results or saved shards)")
    args = parser.parse_args()
    if args.actors is not None and not args.panel:
        parser.error("--actors sets the panel's numbers of actors: use it with --panel (or name the methods)")
    if args.actors is not None and min(args.actors) < 1:
        parser.error(f"--actors must be at least 1, got {args.actors}")
    methods = panel_methods(args.actors or PANEL_ACTORS) if args.panel else args.methods
    args.name = args.name or ("world_panel" if args.panel else "world")
    require(__file__, ("matplotlib",))
    manifest = load_world(args.world)
    tasks = args.tasks or [e["task"] for e in manifest["heldout"]]
    if unknown := set(tasks) - {e["task"] for e in manifest["heldout"]}:
        raise SystemExit(f"unknown held-out subtasks {sorted(unknown)}")
    seeds = SEEDS[: args.seeds]
    shard = parse_shard(args.shard)
    runs, started, speedup = [], time.time(), args.speedup
    done, earlier_wall = ({}, 0.0) if args.fresh else previous_runs(args.name, args.test_size, methods)
    todo = [] if args.combine is not None else cases(args.world, manifest, tasks, seeds, args.test_size, shard)
    for number, task, seed, case in todo:
        if (task, seed) in done and not args.measure_speedup:
            runs.append({**done[task, seed], "case": number, "earlier_run": True})
            print(f"{task} seed {seed}: kept from earlier results", flush=True)
            continue
        if args.measure_speedup:
            with private_ray():
                print(f"2 actors: {measured_speedup(case):.2f}x the sequential evaluation rate on this machine")
            return
        if speedup is None:
            with private_ray():
                speedup = measured_speedup(case)
            print(f"2 actors: {speedup:.2f}x the sequential evaluation rate on this machine", flush=True)
        case_start = time.time()
        outcome = run_methods(case, methods, budget=BUDGET, speedup=speedup)
        runs.append({"case": number, "task": task, "seed": seed, "speedup": speedup, **baselines(case.test),
                     "seconds": round(time.time() - case_start, 1), **outcome})
        line = "  ".join(f"{m} {a:5.1f}" + (f"/{outcome['option_accuracy'][m]:5.1f}" if case.options else "")
                         for m, a in outcome["accuracy"].items())
        print(f"{task} seed {seed} ({time.time() - case_start:.0f}s): {line}", flush=True)
        if args.shard is not None:  # after every case: a shard stopped early keeps what it finished
            save_shard(RESULTS, args.name, shard, runs, time.time() - started)
    if args.shard is not None:  # and at the end, also when every case was kept from earlier runs
        save_shard(RESULTS, args.name, shard, runs, time.time() - started)
        print(f"saved shard {args.shard}; summarise with --combine {shard[1]}")
        return
    walls = [time.time() - started]
    if args.combine is not None:
        shard_rows, walls = load_shards(RESULTS, args.name, args.combine)
        runs = combined_runs(shard_rows, done, tasks, seeds)
    earlier = sum(1 for run in runs if run.get("earlier_run"))
    tables = {}
    for key in ("accuracy", "option_accuracy"):
        per_task: dict = {}
        for run in runs:
            for method, value in run.get(key, {}).items():
                per_task.setdefault(method, {}).setdefault(run["task"], []).append(value)
        tables[key] = summarise(per_task) if per_task else {}
    prior: dict = {}
    for run in runs:
        prior.setdefault(run["task"], []).append(run["majority"])
    majority = float(np.mean([np.mean(v) for v in prior.values()]))
    print(f"\n{'method':42s} {'exact match':>11s} {'option acc':>10s}")
    for method in tables["accuracy"]:
        option = tables["option_accuracy"].get(method, {}).get("avg", float("nan"))
        print(f"{method:42s} {tables['accuracy'][method]['avg']:11.1f} {option:10.1f}")
    print(f"{'majority class of the test set':42s} {majority:11.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/world.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "build": manifest.get("machine")},
        "wall_seconds": max(walls) + (earlier_wall if earlier else 0.0), "processes": len(walls),
        "cases_kept_from_earlier_runs": earlier, "tasks": sorted({r["task"] for r in runs}),
        "seeds": sorted({r["seed"] for r in runs}), "test_size": args.test_size, "modules_per_run": MODULES_PER_RUN,
        "budget": BUDGET, "measured_2_actor_speedup": runs[0]["speedup"] if runs else None,
        "majority_class": majority, "exact_match": tables["accuracy"], "option_accuracy": tables["option_accuracy"],
        "runs": runs,
    }, indent=1) + "\n")
    plot(tables["accuracy"], tables["option_accuracy"], RESULTS / f"{args.name}.png")
    if args.combine is not None:
        remove_shards(RESULTS, args.name, args.combine)
    print(f"wrote {RESULTS}/{args.name}.json and .png")


if __name__ == "__main__":
    main()
