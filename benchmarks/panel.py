"""The optimizer panel: every optimizer's standing on every world, at equal wall-clock time, from committed results.

    python benchmarks/panel.py            # reads benchmarks/results/{planted,optimizers*,world}.json

Worlds and their scores (higher is better), each measured by its own benchmark:
- planted/<base>: benchmarks/planted.py, mean held-out loss gap closed over the planted kinds and seeds;
- zoo/<base>: benchmarks/optimizers.py, mean held-out exact match over the zoo's held-out tasks and seeds (several
  runs with different --optimizers merged, see ZOO_RESULTS);
- real/smollm2: benchmarks/world.py --panel (world_panel.json, merged with world_panel_<name>.json runs that add seeds,
  actors or optimizers; else world.json, which measures two optimizers and ranks nothing), mean held-out exact match
  over the BBH subtasks and seeds (SmolLM2-135M, modules of the other BBH tasks); the optimizers on k actors and the
  reference over the cases measured at k.
In every world the reference (sequential NGOpt, 40 evaluations) sets the time and an optimizer on k actors spends
40·k evaluations (the real world: 40 times its measured speed-up at k = 2). The default is the optimizer with the
best worst-case standing (its rank among the optimizers a world measured, 1 = best) over the worlds that rank at
k = 2, ties broken by the mean standing.
Writes benchmarks/results/panel.json and panel.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needs import require  # noqa: E402
from protocol import search_method, search_method_name  # noqa: E402

from lorahub_ray.optimizers import DEFAULT_OPTIMIZER, OPTIMIZERS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REFERENCE = "ngopt"
# zoo/<base> merges these files: optimizers.py runs of the same cases with different --optimizers
ZOO_RESULTS = {"t5": ("optimizers.json", "optimizers_t5_probes.json", "optimizers_t5_portfolio.json"),
               "llama": ("optimizers_llama.json", "optimizers_llama_portfolio.json")}
REFERENCE_TOLERANCE = 0.5  # points of mean exact match two runs of the same cases may differ by
# real/smollm2 merges the panel's runs (world_panel.json, and world_panel_<name>.json from runs that add seeds, actors
# or optimizers to some of its cases); without them it reads world.json
REAL_WORLD_RESULTS = (("world_panel.json", "world_panel_*.json"), ("world.json",))

Scores = dict[str, dict[int, float]]  # optimizer -> actors -> score


def planted_worlds(result: Mapping) -> dict[str, Scores]:
    """planted/<base>: the mean gap closed per optimizer and number of actors."""
    gaps: dict[str, dict[str, dict[int, list[float]]]] = {}
    for row in result["rows"]:
        for run in row["runs"]:
            gaps.setdefault(f"planted/{row['base']}", {}).setdefault(run["optimizer"], {}).setdefault(
                run["actors"], []).append(run["gap_closed"])
    return {world: {name: {k: float(np.mean(v)) for k, v in by_k.items()} for name, by_k in table.items()}
            for world, table in gaps.items()}


def zoo_world(results: Sequence[Mapping], base: str) -> dict[str, Scores]:
    """zoo/<base>: mean exact match per optimizer and number of actors, merged over runs of the same cases (tasks
    and seeds) that measured different optimizers. Each run also measures the reference; the first file's is kept,
    and another may differ from it by at most `REFERENCE_TOLERANCE` points (a case whose float rounding differs on
    another CPU), or the files are refused."""
    scores: Scores = {}
    cases = None
    for result in results:
        measured_cases = sorted({(row["task"], row["seed"]) for row in result.get("runs", [])})
        if cases is not None and measured_cases != cases:
            raise ValueError(f"zoo/{base}: the results files ran different cases (tasks x seeds); run them alike")
        cases = measured_cases
        for name, by_k in result["summary"].items():
            measured = {int(k): entry["accuracy"] for k, entry in by_k.items()}
            if name in scores:
                if scores[name].keys() != measured.keys() or any(
                        abs(scores[name][k] - measured[k]) > REFERENCE_TOLERANCE for k in measured):
                    raise ValueError(f"zoo/{base}: the results files disagree on {name} ({scores[name]} vs "
                                     f"{measured}); were they run on different zoos, tasks or seeds?")
                continue
            scores[name] = measured
    return {f"zoo/{base}": scores}


def real_world(results: Sequence[Mapping]) -> dict[str, Scores]:
    """real/smollm2: mean exact match (over subtasks, of the mean over seeds) of every search, by its number of
    actors, from world.py runs merged by case (subtask and seed; a method measured twice must agree within
    `REFERENCE_TOLERANCE`). The optimizers on k actors are averaged over the cases that measured all of them and the
    reference; the reference's score at k is its own over those same cases (at 1: over its k = 1 cases), so that a
    panel run for more actors on fewer subtasks is compared like with like."""
    merged: dict[tuple[str, int], dict[str, float]] = {}
    for result in results:
        for row in result["runs"]:
            case = merged.setdefault((row["task"], row["seed"]), {})
            for method, value in row["accuracy"].items():
                if method in case and abs(case[method] - value) > REFERENCE_TOLERANCE:
                    raise ValueError(f"real/smollm2: the results files disagree on {method} for {row['task']} "
                                     f"seed {row['seed']} ({case[method]} vs {value})")
                case.setdefault(method, value)
    by_actors: dict[int, dict[str, str]] = {}  # actors -> optimizer -> method
    for accuracy in merged.values():
        for method in accuracy:
            if search := search_method(method):
                by_actors.setdefault(search[1], {})[search[0]] = method
    scores: Scores = {}
    reference = search_method_name(REFERENCE)
    for k, methods in sorted(by_actors.items()):
        needed = {*methods.values(), reference}
        cases = [(case, accuracy) for case, accuracy in merged.items() if needed <= accuracy.keys()]
        for name, method in {**methods, REFERENCE: reference}.items():
            per_task: dict[str, list[float]] = {}
            for (task, _), accuracy in cases:
                per_task.setdefault(task, []).append(accuracy[method])
            if per_task:
                scores.setdefault(name, {})[k] = float(np.mean([np.mean(v) for v in per_task.values()]))
    return {"real/smollm2": scores}


def reference_at(by_k: Mapping[int, float], k: int) -> float | None:
    """The sequential reference's score to set against ``k`` actors: its own at its one actor (the same
    wall-clock), over the same cases where a world measured more actors on fewer cases (`real_world`)."""
    return by_k.get(k, by_k.get(1))


def at_actors(scores: Scores, k: int) -> dict[str, float]:
    """Each optimizer's score at ``k`` actors, the sequential reference's by `reference_at`."""
    found = {name: reference_at(by_k, k) if name == REFERENCE else by_k.get(k) for name, by_k in scores.items()}
    return {name: score for name, score in found.items() if score is not None}


def standings(scores: Mapping[str, float]) -> dict[str, int]:
    """Rank per optimizer, 1 = best; equal scores share the better rank."""
    return {name: 1 + sum(other > score for other in scores.values()) for name, score in scores.items()}


def choose_default(worlds: Mapping[str, Scores], k: int = 2,
                   registered: Collection[str] | None = None) -> tuple[str, dict[str, dict]]:
    """The optimizer with the best worst-case standing at ``k`` actors over the worlds that rank (measure at least
    three optimizers), ties broken by the mean standing; only optimizers measured on every such world compete, and
    of those only the ``registered`` ones (default: all; an optimizer that was measured and then dropped is shown
    but neither ranked nor counted in the others' standings)."""
    def competing(scores: Scores) -> dict[str, float]:
        return {name: score for name, score in at_actors(scores, k).items()
                if registered is None or name in registered}

    ranked = {world: standings(competing(scores)) for world, scores in worlds.items() if len(competing(scores)) >= 3}
    if not ranked:
        raise ValueError("no world measures three optimizers: nothing to rank")
    names = set.intersection(*(set(ranks) for ranks in ranked.values()))
    table = {name: {"standings": {world: ranks[name] for world, ranks in ranked.items()},
                    "worst": max(ranks[name] for ranks in ranked.values()),
                    "mean": float(np.mean([ranks[name] for ranks in ranked.values()]))} for name in sorted(names)}
    best = min(table, key=lambda name: (table[name]["worst"], table[name]["mean"], name))
    return best, table


def margins(worlds: Mapping[str, Scores], name: str, k: int) -> dict[str, float | None]:
    """``name`` on ``k`` actors minus the reference, per world (None where either was not measured)."""
    out: dict[str, float | None] = {}
    for world, scores in worlds.items():
        own, reference = scores.get(name, {}).get(k), reference_at(scores.get(REFERENCE, {}), k)
        out[world] = None if own is None or reference is None else own - reference
    return out


def curves(scores: Scores) -> tuple[bool, dict[str, tuple[list[int], list[float]]]]:
    """What `plot` draws for one world: whether it is relative to the reference, and each optimizer's (actors,
    values). A world that compares each number of actors on its own cases (`real_world`, where the reference has a
    score per k) is drawn as each score minus the reference's on those cases, so that its points compare across k."""
    reference = scores.get(REFERENCE, {})
    relative = len(reference) > 1
    drawn = {}
    for name, by_k in sorted(scores.items()):
        if name != REFERENCE:
            ks = sorted(by_k)
            drawn[name] = (ks, [by_k[k] - reference_at(reference, k) if relative else by_k[k] for k in ks])
    return relative, drawn


def plot(worlds: Mapping[str, Scores], path: Path) -> None:
    """One panel per world: score against actors per optimizer (`curves`), the reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for scores in worlds.values() for name in scores} - {REFERENCE})
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))  # one colour per optimizer
    fig, axes = plt.subplots(1, len(worlds), figsize=(4.2 * len(worlds), 3.6), squeeze=False)
    for ax, (world, scores) in zip(axes[0], worlds.items()):
        relative, drawn = curves(scores)
        unit = "gap closed" if world.startswith("planted") else "exact match (%)"
        if relative:
            ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label=f"{REFERENCE} (sequential, same cases)")
        elif 1 in scores.get(REFERENCE, {}):
            ax.axhline(scores[REFERENCE][1], color="black", linestyle="--", linewidth=1,
                       label=f"{REFERENCE} (sequential)")
        for name, (ks, values) in drawn.items():
            ax.plot(ks, values, marker="o", label=name, color=colours[name])
        ax.set_xscale("log", base=2)
        ax.set_title(world)
        ax.set_xlabel("actors (equal wall-clock)")
        ax.set_ylabel(f"{unit} minus the reference" if relative else unit)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def load_worlds(results: Path) -> dict[str, Scores]:
    """Every world whose results file is present."""
    worlds: dict[str, Scores] = {}
    if (results / "planted.json").is_file():
        worlds.update(planted_worlds(json.loads((results / "planted.json").read_text())))
    for base, names in ZOO_RESULTS.items():
        present = [json.loads((results / name).read_text()) for name in names if (results / name).is_file()]
        if present:
            worlds.update(zoo_world(present, base))
    for patterns in REAL_WORLD_RESULTS:
        if present := [path for pattern in patterns for path in sorted(results.glob(pattern))
                       if ".shard-" not in path.name]:  # a shard's rows are in its combined file
            worlds.update(real_world([json.loads(path.read_text()) for path in present]))
            break
    return worlds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=2, help="the number of actors the default is chosen at")
    args = parser.parse_args()
    require(__file__, ("matplotlib",))
    worlds = load_worlds(RESULTS)
    chosen, table = choose_default(worlds, args.actors, registered=OPTIMIZERS)
    names = sorted({name for scores in worlds.values() for name in scores})
    print(f"scores at {args.actors} actors (the reference sequential, at the same wall-clock):")
    print(f"{'world':16s}" + "".join(f"{name:>13s}" for name in names))
    for world, scores in worlds.items():
        row = at_actors(scores, args.actors)
        print(f"{world:16s}" + "".join(f"{row[n]:13.3f}" if n in row else f"{'-':>13s}" for n in names))
    dropped = [name for name in names if name not in OPTIMIZERS]
    print(f"\nstandings (1 = best) on the worlds that rank, among the registered optimizers"
          + (f" (measured, then dropped: {', '.join(dropped)})" if dropped else "") + ":")
    for name, entry in table.items():
        print(f"  {name:12s} worst {entry['worst']}  mean {entry['mean']:.2f}  {entry['standings']}")
    print(f"\nchosen by the panel: {chosen}; the package default: {DEFAULT_OPTIMIZER}")
    by_actors = {k: margins(worlds, DEFAULT_OPTIMIZER, k) for k in (1, 2, 4, 8)}
    for k, per_world in by_actors.items():
        print(f"  {DEFAULT_OPTIMIZER} on {k} actors minus the reference: " + ", ".join(
            f"{w} {m:+.3f}" for w, m in per_world.items() if m is not None))
    (RESULTS / "panel.json").write_text(json.dumps({
        "command": "python benchmarks/panel.py" + (f" --actors {args.actors}" if args.actors != 2 else ""),
        "actors": args.actors, "worlds": {w: {n: {str(k): v for k, v in by_k.items()} for n, by_k in s.items()}
                                          for w, s in worlds.items()},
        "standings": table, "dropped": dropped, "chosen": chosen, "package_default": DEFAULT_OPTIMIZER,
        "default_minus_reference": {str(k): v for k, v in by_actors.items()}}, indent=1) + "\n")
    plot(worlds, RESULTS / "panel.png")
    print(f"wrote {RESULTS}/panel.json and .png")


if __name__ == "__main__":
    main()
