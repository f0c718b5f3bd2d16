"""Leave-one-out early stopping: does choosing the returned candidate by leave-one-out guard against over-fitting?

    python benchmarks/loo_selection.py --quick    # 6 modules, 2 kinds, 1 seed (seconds)
    python benchmarks/loo_selection.py --zoo lorahub_ray/zoo/prebuilt DIR   # 20 modules, 4 kinds, 3 seeds

The planted compositions of planted.py (same teachers, examples and searches, same seeds). A search returns its
best-scoring candidate; a pass already computes every example's loss, and this benchmark keeps them to compare,
on the very same searches, two ways of choosing the returned candidate:

    best       the lowest few-shot score (loss + L1), what a search returns
    loo-stop   early stopping chosen by leave-one-out over the examples: for a prefix of the history, example i is
               predicted by the prefix's best candidate on the other examples; the prefix whose mean loss on the
               left-out examples is lowest (the earliest on ties) is kept, and its best candidate returned

Both are scored by the held-out loss gap they close (planted.py's metric). loo-stop costs no evaluation; it can
only help where more evaluations fit the five examples rather than the task. Writes
benchmarks/results/loo_selection[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planted import (  # noqa: E402
    FULL,
    L1,
    QUICK,
    RESULTS,
    SHOTS,
    TEST,
    gap_closed,
    planted_task,
    search_plan,
    zoo_bases,
)

from actors import Outcome, Worker  # noqa: E402
from actors.loss import example_token_losses  # noqa: E402
from lorahub_ray.search import Search, minimize  # noqa: E402

OPTIMIZERS = ("ngopt", "cma", "probes-cma")
ACTORS = (1, 2, 8)  # the full run's numbers of actors (planted.py's but 4)


def recording_evaluator(worker: Worker) -> tuple[Callable[[np.ndarray], list[Outcome]], list[np.ndarray]]:
    """An evaluator with the default objective (mean token cross-entropy), one candidate at a time, and the list it
    fills with each candidate's per-example losses ``(E,)``."""
    per_example: list[np.ndarray] = []

    def evaluate(population: np.ndarray) -> list[Outcome]:
        outcomes = []
        for weights in population:
            worker.cache.apply(weights)
            sums, counts = example_token_losses(worker.model, worker.batch)  # (E,), (E,)
            per_example.append(np.stack([sums.double().numpy(), counts.double().numpy()]))  # (2, E)
            outcomes.append(Outcome(float(sums.sum() / counts.sum())))
        return outcomes

    return evaluate, per_example


def loo_stop(per_example: list[np.ndarray], penalties: np.ndarray) -> tuple[int, int]:
    """Leave-one-out early stopping over a search's history.

    Args:
        per_example: each candidate's ``(2, E)`` summed token losses and token counts, in evaluation order.
        penalties: each candidate's L1 term ``(C,)``.

    Returns:
        (the returned candidate's index, the length of the kept prefix).
    """
    sums = np.stack([p[0] for p in per_example])  # (C, E)
    counts = np.stack([p[1] for p in per_example])  # (C, E)
    full = sums.sum(1) / counts.sum(1) + penalties  # (C,) each candidate's score
    without = (sums.sum(1, keepdims=True) - sums) / (counts.sum(1, keepdims=True) - counts) + penalties[:, None]
    left_out = sums / counts  # (C, E): each candidate's loss on each example alone
    num_candidates, num_examples = sums.shape
    leader = np.zeros(num_examples, dtype=int)  # per left-out example: the best candidate on the others so far
    best_loo, kept = np.inf, 1
    for t in range(num_candidates):
        better = without[t] < without[leader, np.arange(num_examples)]
        leader[better] = t
        loo = left_out[leader, np.arange(num_examples)].mean()
        if loo < best_loo:
            best_loo, kept = loo, t + 1
    return int(np.argmin(full[:kept])), kept


def run_case(base: str, pool: list[str], inputs: list[str], kind: str, seed: int, plan: list[tuple[str, int, int]],
             num_modules: int) -> dict:
    """planted.py's case (same modules, teacher and examples for the same seed), each search chosen both ways."""
    task = planted_task(base, pool, inputs, kind, seed, num_modules)
    row = {"kind": kind, "seed": seed, "runs": []}
    for name, actors, budget in plan:
        search = Search(len(task.target), budget, name, seed=seed, l1=L1)
        evaluate, per_example = recording_evaluator(task.searcher)
        minimize(search, evaluate)
        penalties = np.array([L1 * np.mean(np.abs(e.weights)) for e in search.history])
        chosen, kept = loo_stop(per_example, penalties)
        run = {"optimizer": name, "actors": actors, "budget": budget, "loo_kept": kept}
        for rule, index in (("best", int(np.argmin([e.score for e in search.history]))), ("loo_stop", chosen)):
            found = np.array(search.history[index].weights)
            run[rule] = {"gap_closed": gap_closed(task.base_loss, task.teacher_loss, task.scorer.loss(found)),
                         "distance": float(np.linalg.norm(found - task.target) / np.linalg.norm(task.target))}
        row["runs"].append(run)
    return row


def summarise(rows: list[dict]) -> dict:
    """Per optimizer and number of actors: mean gap closed and distance to w* by each rule, how often loo-stop
    returned another candidate, and the mean share of the budget it kept."""
    table: dict = {}
    for row in rows:
        for run in row["runs"]:
            table.setdefault(run["optimizer"], {}).setdefault(str(run["actors"]), []).append(run)
    return {name: {k: {**{f"{rule}_{metric}": float(np.mean([r[rule][metric] for r in runs]))
                          for rule in ("best", "loo_stop") for metric in ("gap_closed", "distance")},
                       "loo_worst_gap_closed": float(np.min([r["loo_stop"]["gap_closed"] for r in runs])),
                       "best_worst_gap_closed": float(np.min([r["best"]["gap_closed"] for r in runs])),
                       "loo_changed": f"{sum(r['loo_stop'] != r['best'] for r in runs)}/{len(runs)}",
                       "loo_kept_share": float(np.mean([r["loo_kept"] / r["budget"] for r in runs]))}
                   for k, runs in by_actors.items()}
            for name, by_actors in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size (see the module docstring)")
    parser.add_argument("--zoo", nargs="*", default=[None],
                        help="zoo directories (default: the demo's zoo, the prebuilt one); every base of each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kinds, seeds, actors, num_modules = QUICK if args.quick else (*FULL[:2], list(ACTORS), FULL[3])
    plan = search_plan(list(OPTIMIZERS), actors)
    started, rows, zoos = time.time(), [], {}
    for zoo, kind_of_base, base, pool, inputs in zoo_bases(args.zoo):
        zoos[str(zoo)] = None
        for kind in kinds:
            for seed in seeds:
                row = {"base": kind_of_base, **run_case(base, pool, inputs, kind, seed, plan, num_modules)}
                rows.append(row)
                print(f"{kind_of_base} {kind} seed {seed}: " + "  ".join(
                    f"{r['optimizer']}@{r['actors']} {r['best']['gap_closed']:.2f}->{r['loo_stop']['gap_closed']:.2f}"
                    for r in row["runs"]), flush=True)
    summary = summarise(rows)
    print(f"\n{'optimizer':12s} {'actors':>6s} {'best':>6s} {'loo-stop':>9s} {'worst: best':>12s} {'loo':>6s} "
          f"{'changed':>8s} {'kept':>5s}")
    for name, by_actors in summary.items():
        for k, e in by_actors.items():
            print(f"{name:12s} {k:>6s} {e['best_gap_closed']:6.2f} {e['loo_stop_gap_closed']:9.2f} "
                  f"{e['best_worst_gap_closed']:12.2f} {e['loo_worst_gap_closed']:6.2f} {e['loo_changed']:>8s} "
                  f"{e['loo_kept_share']:5.2f}")
    name = "loo_selection_quick" if args.quick else "loo_selection"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/loo_selection.py", *sys.argv[1:]]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "zoos": list(zoos),
        "wall_seconds": round(time.time() - started, 1), "modules": num_modules, "shots": SHOTS, "test": TEST,
        "summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}/{name}.json")


if __name__ == "__main__":
    main()
