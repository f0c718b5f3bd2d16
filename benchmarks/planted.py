"""Planted compositions: can a search find weights that are known to exist?

    python benchmarks/planted.py --quick      # CI size: 6 modules, 2 kinds, 1 seed, 1 and 2 actors (seconds)
    python benchmarks/planted.py              # full: 20 modules, 4 kinds, 3 seeds, 1, 2, 4 and 8 actors
    python benchmarks/planted.py --zoo lorahub_ray/zoo/prebuilt DIR   # several zoos: every base each holds
                                              # (`zoo build --kinds llama --out DIR` makes a decoder-only one)

The zoo's trained byte-level base and N of its LoRA modules (a random draw per seed). The teacher is the base with a
planted composition w*; the task is the teacher's greedy output on inputs of the zoo's held-out tasks. Every
registered optimizer searches on 5 examples, in this process, at equal wall-clock time: the reference (sequential
NGOpt) spends 40 evaluations, and an optimizer on k actors spends 40·k in the same time (a search's result does
not depend on the number of actors, so k is simulated by the budget, as in benchmarks/optimizers.py). The found
weights are scored on 40 held-out examples by the fraction of the loss gap between base and teacher they close:

    gap closed = (L(base) - L(found)) / (L(base) - L(teacher))        1 = as good as the teacher, 0 = no better
                                                                      than the base, < 0 = worse

and by ||w - w*|| / ||w*||. Where w* is a point of the search's space (not in `delta` mode) the few-shot score of
w* is recorded too: a search whose best few-shot score is below it has done its job on the five examples, and what
it leaves of the held-out gap is the five examples' fault (over-fitting), not the optimizer's. Kinds of w*: one
module at full weight; 3 modules with one negative weight; many small weights; and a 3-module teacher composed in
`delta` mode (B·A of each module, weighted) while the search composes in `ab` mode (LoraHub's ΣwA · ΣwB), so w*
itself is not a point of the search's space.
Writes benchmarks/results/planted[_quick].json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needs import require  # noqa: E402

from actors import Worker, WorkerSpec  # noqa: E402
from lorahub_ray.data import load_examples  # noqa: E402
from lorahub_ray.demo import ensure_zoo  # noqa: E402
from lorahub_ray.evaluate import generate  # noqa: E402
from lorahub_ray.modules import load_stack  # noqa: E402
from lorahub_ray.optimizers import OPTIMIZERS  # noqa: E402
from lorahub_ray.search import Search, l1_score, minimize  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHOTS, TEST, MAX_NEW_TOKENS = 5, 40, 16
REFERENCE, REFERENCE_BUDGET = "ngopt", 40  # the sequential reference sets the wall-clock time
ACTORS = (1, 2, 4, 8)
# (kinds of w*, seeds, numbers of actors, modules drawn) of the quick and the full run
QUICK = (["one", "three_one_negative"], [0], [1, 2], 6)
FULL = (["one", "three_one_negative", "many_small", "delta"], [0, 1, 2], list(ACTORS), 20)
L1 = 0.05  # the searches' L1 weight (RunConfig's default)


def planted_weights(kind: str, num_modules: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """w* of ``kind`` and the mode the teacher composes in."""
    w = np.zeros(num_modules)
    picks = rng.choice(num_modules, size=min(3, num_modules), replace=False)
    if kind == "one":
        w[picks[0]] = 1.0
    elif kind in ("three_one_negative", "delta"):
        w[picks] = [1.0, -0.8, 0.6][: len(picks)]
    elif kind == "many_small":
        w = rng.uniform(-0.4, 0.4, num_modules)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return w, "delta" if kind == "delta" else "ab"


def teacher_examples(worker: Worker, weights: np.ndarray, inputs: list[str], count: int) -> list[dict[str, str]]:
    """The first ``count`` inputs on which the composed model's greedy output is not empty, with that output."""
    worker.cache.apply(weights)
    outputs = generate(worker.model, worker.tokenizer, inputs, max_new_tokens=MAX_NEW_TOKENS)
    examples = [{"input": x, "output": y} for x, y in zip(inputs, outputs) if y.strip()]
    if len(examples) < count:
        raise RuntimeError(f"the teacher answered only {len(examples)} of {len(inputs)} inputs")
    return examples[:count]


def gap_closed(base_loss: float, teacher_loss: float, found_loss: float) -> float:
    """The fraction of the base-to-teacher loss gap that ``found_loss`` closes."""
    return (base_loss - found_loss) / (base_loss - teacher_loss)


def search_plan(optimizers: list[str], actors: list[int]) -> list[tuple[str, int, int]]:
    """(optimizer, actors, budget) at equal wall-clock time: the sequential reference once, at its budget; every
    other optimizer on k actors with k times that budget."""
    return [(name, k, REFERENCE_BUDGET * k) for name in optimizers for k in ([1] if name == REFERENCE else actors)]


@dataclass
class PlantedTask:
    """One planted task: the teacher's w*, the few-shot and test examples, and the scorers a search needs."""

    modules: list[str]
    target: np.ndarray  # w*
    teacher_mode: str
    searcher: Worker  # scores candidates on the few-shot examples, in `ab` mode
    scorer: Worker  # scores a found candidate on the test examples, in `ab` mode
    base_loss: float  # on the test examples
    teacher_loss: float


def planted_task(base: str, pool: list[str], inputs: list[str], kind: str, seed: int, num_modules: int,
                 shots: int = SHOTS) -> PlantedTask:
    """Draw ``num_modules`` of ``pool`` and w* of ``kind`` with ``seed``; the teacher labels ``shots`` few-shot and
    `TEST` test examples among ``inputs``."""
    rng = np.random.default_rng(seed)
    modules = sorted(rng.choice(pool, size=min(num_modules, len(pool)), replace=False).tolist())
    stack = load_stack(modules)
    target, teacher_mode = planted_weights(kind, stack.num_modules, rng)
    drawn = random.Random(f"planted/{seed}").sample(inputs, min(len(inputs), 2 * (shots + TEST)))
    placeholder = [{"input": drawn[0], "output": "a"}]  # the teacher only generates; it scores nothing

    def worker(mode: str, examples: list[dict]) -> Worker:
        return Worker(WorkerSpec(base=base, mode=mode, device="cpu", num_threads=1), stack, examples)

    examples = teacher_examples(worker(teacher_mode, placeholder), target, drawn, shots + TEST)
    fewshot, test = examples[:shots], examples[shots:]
    scorer = worker("ab", test)
    return PlantedTask(modules, target, teacher_mode, worker("ab", fewshot), scorer,
                       base_loss=scorer.loss(np.zeros(stack.num_modules)),
                       teacher_loss=worker(teacher_mode, test).loss(target))


def run_case(base: str, pool: list[str], inputs: list[str], kind: str, seed: int, plan: list[tuple[str, int, int]],
             num_modules: int, shots: int = SHOTS) -> dict:
    """One planted task: the teacher, the few-shot and test examples, every planned search and its scores."""
    task = planted_task(base, pool, inputs, kind, seed, num_modules, shots)
    target = task.target
    target_score = None if task.teacher_mode != "ab" else l1_score(task.searcher.loss(target), target, L1)
    row = {"kind": kind, "seed": seed, "modules": [Path(m).name for m in task.modules], "target": target.tolist(),
           "base_loss": task.base_loss, "teacher_loss": task.teacher_loss, "target_fewshot_score": target_score,
           "runs": []}
    for name, actors, budget in plan:
        search = Search(len(target), budget, name, seed=seed, l1=L1)
        started = time.perf_counter()
        best = minimize(search, task.searcher.evaluate)
        found = np.array(best.weights)
        loss = task.scorer.loss(found)
        row["runs"].append({
            "optimizer": name, "actors": actors, "budget": budget,
            "gap_closed": gap_closed(task.base_loss, task.teacher_loss, loss), "test_loss": loss,
            "distance": float(np.linalg.norm(found - target) / np.linalg.norm(target)),
            "weights": found.tolist(), "fewshot_score": best.score, "seconds": time.perf_counter() - started})
    return row


def zoo_bases(directories: list[str | None]) -> Iterator[tuple[Path, str, str, list[str], list[str]]]:
    """(zoo, kind of base, base path, its module pool, the held-out tasks' test inputs) for every base of every zoo
    in ``directories`` (``None``: the demo's zoo, the prebuilt one)."""
    for directory in directories:
        zoo, manifest = ensure_zoo(directory)
        inputs = sorted({ex["input"] for task in manifest["heldout"] for ex in load_examples(zoo / task["test"])})
        for kind_of_base, base in manifest["bases"].items():
            pool = [str(zoo / m["path"]) for m in manifest["modules"][kind_of_base]]
            yield zoo, kind_of_base, str(zoo / base), pool, inputs


def summarise(rows: list[dict]) -> dict:
    """Per optimizer and number of actors: the mean and worst gap closed, the mean distance to w*, how often the
    few-shot score beat w*'s own, and the mean gap closed per base kind and planted kind."""
    table: dict = {}
    for row in rows:
        for run in row["runs"]:
            entry = table.setdefault(run["optimizer"], {}).setdefault(
                str(run["actors"]), {"gap_closed": [], "distance": [], "by_kind": {}, "beats_target": []})
            if row["target_fewshot_score"] is not None:
                entry["beats_target"].append(run["fewshot_score"] < row["target_fewshot_score"])
            entry["gap_closed"].append(run["gap_closed"])
            entry["distance"].append(run["distance"])
            entry["by_kind"].setdefault(f"{row['base']}/{row['kind']}", []).append(run["gap_closed"])
    return {name: {k: {"gap_closed": float(np.mean(e["gap_closed"])), "worst_gap_closed": float(np.min(e["gap_closed"])),
                       "distance": float(np.mean(e["distance"])),
                       "fewshot_below_target": f"{sum(e['beats_target'])}/{len(e['beats_target'])}",
                       "by_kind": {kind: float(np.mean(v)) for kind, v in e["by_kind"].items()}}
                   for k, e in by_actors.items()}
            for name, by_actors in table.items()}


def plot(summary: dict, rows: list[dict], path: Path) -> None:
    """Mean gap closed against the number of actors, one panel per base; the reference as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = sorted({row["base"] for row in rows})
    fig, axes = plt.subplots(1, len(bases), figsize=(5 * len(bases), 4), squeeze=False)
    for ax, base in zip(axes[0], bases):
        for name, by_actors in summary.items():
            actors = sorted(by_actors, key=int)
            gaps = [np.mean([v for kind, v in by_actors[k]["by_kind"].items() if kind.startswith(f"{base}/")])
                    for k in actors]
            if name == REFERENCE:
                ax.axhline(gaps[0], color="black", linestyle="--", linewidth=1, label=f"{name} (sequential)")
            else:
                ax.plot([int(k) for k in actors], gaps, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"planted compositions, {base} base")
        ax.set_xlabel("actors (budget = 40 x actors, equal wall-clock)")
        ax.set_ylabel("held-out loss gap closed")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size (see the module docstring)")
    parser.add_argument("--zoo", nargs="*", default=[None],
                        help="zoo directories (default: the demo's zoo, the prebuilt one); every base of each")
    parser.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS))
    parser.add_argument("--shots", type=int, default=SHOTS,
                        help=f"examples the searches see (default {SHOTS}, LoraHub's; more shows what the few-shot "
                             "set costs: results go to planted[_quick]_shotsN)")
    args = parser.parse_args()
    require(__file__, ("matplotlib",))
    torch.set_num_threads(1)
    kinds, seeds, actors, num_modules = QUICK if args.quick else FULL
    plan = search_plan(args.optimizers, actors)
    started, rows, zoos = time.time(), [], {}
    for zoo, kind_of_base, base, pool, inputs in zoo_bases(args.zoo):
        zoos[str(zoo)] = None
        for kind in kinds:
            for seed in seeds:
                row = {"base": kind_of_base, **run_case(base, pool, inputs, kind, seed, plan, num_modules, args.shots)}
                rows.append(row)
                print(f"{kind_of_base} {kind} seed {seed}: " + "  ".join(
                    f"{r['optimizer']}@{r['actors']} {r['gap_closed']:.2f}" for r in row["runs"]), flush=True)
    summary = summarise(rows)
    print(f"\n{'optimizer':14s} {'actors':>6s} {'gap closed':>10s} {'worst':>7s} {'|w-w*|/|w*|':>12s} "
          f"{'few-shot score < w*':>20s}")
    for name, by_actors in summary.items():
        for k, entry in by_actors.items():
            print(f"{name:14s} {k:>6s} {entry['gap_closed']:10.2f} {entry['worst_gap_closed']:7.2f} "
                  f"{entry['distance']:12.2f} {entry['fewshot_below_target']:>20s}")
    name = ("planted_quick" if args.quick else "planted") + (f"_shots{args.shots}" if args.shots != SHOTS else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/planted.py", *sys.argv[1:]]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "zoos": list(zoos),
        "wall_seconds": round(time.time() - started, 1), "reference": REFERENCE, "reference_budget": REFERENCE_BUDGET,
        "modules": num_modules, "shots": args.shots, "test": TEST, "summary": summary, "rows": rows}, indent=1) + "\n")
    plot(summary, rows, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS}/{name}.json and .png")


if __name__ == "__main__":
    main()
