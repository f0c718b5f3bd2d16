"""Large module pools: held-out accuracy versus pool size for each pre-filter, and the cost of indexing and
pre-filtering 1,000 modules.

    lorahub-ray zoo build --size large        # once: the default zoo plus 180 variants (216 modules)
    python benchmarks/pool.py                 # both parts
    python benchmarks/pool.py --scale-only    # only the 1,000-module load and pre-filter measurement

Accuracy: for pool sizes 20, 50, 100, 200 and all (216), on every held-out task of the large zoo x 2 seeds
(each a random pool of that size and 5 examples), LoraHub (CMA-ES, budget 40) over the K = 20 modules kept by
``random:20``, ``loss:20`` and ``similarity:20``, and over every module of the pool (no pre-filter).
Scale: 1,000 random modules shaped like the zoo's: seconds to index, seconds and evaluations per pre-filter, and
the driver's peak traced memory against the K kept modules' size.
Writes benchmarks/results/pool.json and pool.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needs import private_ray, require  # noqa: E402
from protocol import Case  # noqa: E402

from lorahub_ray.demo import ensure_zoo  # noqa: E402

from actors import WorkerSpec  # noqa: E402
from lorahub_ray.modules import check_compatible, index_module, stack_modules  # noqa: E402
from lorahub_ray.config import PoolConfig  # noqa: E402
from lorahub_ray.pool import WorkerPool  # noqa: E402
from lorahub_ray.prefilter import PrefilterSpec, select  # noqa: E402
from lorahub_ray.run import sweep_block  # noqa: E402
from lorahub_ray.search import Search, minimize  # noqa: E402
from lorahub_ray.toy import build_random_base, build_random_modules  # noqa: E402

# ---- settings -------------------------------------------------------------------------------------------
K = 20
POOL_SIZES = [20, 50, 100, 200, None]  # None: the whole pool
PREFILTERS = ["random", "loss", "similarity", "none"]
SEEDS = [1, 2]
BUDGET = 40
SCALE_MODULES = 1000
RESULTS = Path(__file__).parent / "results"
# ---------------------------------------------------------------------------------------------------------


def scale(root: Path, base: str | None) -> dict:
    """Index and pre-filter SCALE_MODULES random modules; time, evaluations and driver peak memory (numpy and
    Python allocations traced in this process; the evaluating actor is a separate process)."""
    if base is None:
        base = str(build_random_base(root / "base", "t5", d_model=128, layers=2, heads=4, d_ff=256))
    start = time.perf_counter()
    paths = [str(p) for p in build_random_modules(base, root / "pool", SCALE_MODULES, rank=8, seed=3)]
    built = time.perf_counter() - start
    examples = [{"input": f"Reverse the word: {w}\nAnswer:", "output": w[::-1]} for w in
                ("apple", "stone", "river", "light", "cloud")]
    tracemalloc.start()
    start = time.perf_counter()
    entries = [index_module(p) for p in paths]
    check_compatible(entries)
    index_seconds = time.perf_counter() - start
    index_bytes = tracemalloc.get_traced_memory()[0]
    rows = {"modules": SCALE_MODULES, "build_seconds": built, "index_seconds": index_seconds,
            "index_bytes": index_bytes, "prefilters": {}}
    kept_bytes = stack_modules(entries[:K]).nbytes
    rows["k_modules_bytes"] = kept_bytes
    rows["pool_bytes"] = kept_bytes * SCALE_MODULES // K
    spec = WorkerSpec(base=base, num_threads=1)
    # The evaluating actor starts before tracing: its start-up (Ray's imports) is not the store's memory.
    with WorkerPool(spec, stack_modules(entries[:K]), examples, PoolConfig(num_actors=1)) as scorer:
        scorer.evaluate(np.eye(K)[:1])

        def losses(indices: list[int]) -> list[float]:  # the sweep of lorahub_ray.run, on the running pool
            out: list[float] = []
            for first in range(0, len(indices), sweep_block(K)):
                block = indices[first : first + sweep_block(K)]
                scorer.set_stack(stack_modules([entries[i] for i in block]))
                out += [o.loss for o in scorer.evaluate(np.eye(len(block)))]
            return out

        for name in ("random", "loss"):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]  # the index and the running pool's own objects
            start = time.perf_counter()
            report = select(PrefilterSpec(name, K), paths, [e.directory for e in entries],
                            [ex["input"] for ex in examples], losses, seed=0)
            extra = tracemalloc.get_traced_memory()[1] - before
            rows["prefilters"][name] = {"seconds": time.perf_counter() - start, "evaluations": report.evaluations,
                                        "driver_peak_bytes": index_bytes + extra, "extra_over_index_bytes": extra,
                                        "extra_over_k_modules": extra / kept_bytes}
    tracemalloc.stop()
    return rows


def accuracy_vs_pool(zoo: Path, kind: str) -> dict:
    """Held-out accuracy per pre-filter and pool size (mean over tasks x seeds)."""
    from lorahub_ray.zoo.build import load_manifest
    from lorahub_ray.zoo.tasks import get_task, splits

    manifest = load_manifest(zoo)
    base = str(zoo / manifest["bases"][kind])
    everything = [str(zoo / m["path"]) for m in manifest["modules"][kind] + manifest.get("variants", {}).get(kind, [])]
    if len(everything) < 200:
        raise SystemExit(f"the zoo at {zoo} has {len(everything)} modules; build the large one first: "
                         f"lorahub-ray zoo build --size large [--out DIR]")
    table: dict = {}
    for size in POOL_SIZES:
        label = "all" if size is None else str(size)
        if size is not None and size > len(everything):
            continue
        for entry in manifest["heldout"]:
            data = splits(get_task(entry["task"]), manifest["seed"])
            test = [json.loads(line) for line in (zoo / entry["test"]).read_text().splitlines()]
            for seed in SEEDS:
                rng = random.Random(f"{entry['task']}/{seed}/{label}")
                pool = sorted(rng.sample(everything, size)) if size else everything
                fewshot = rng.sample(data["train"], 5)
                for prefilter in PREFILTERS:
                    accuracy = _lorahub_accuracy(base, pool, fewshot, test, prefilter, seed)
                    table.setdefault(prefilter, {}).setdefault(label, []).append(accuracy)
            print(f"pool {label}: {entry['task']} done", flush=True)
    return {p: {size: float(np.mean(v)) for size, v in sizes.items()} for p, sizes in table.items()}


def _lorahub_accuracy(base: str, pool: list[str], fewshot: list[dict], test: list[dict], prefilter: str,
                      seed: int) -> float:
    entries = [index_module(p) for p in pool]
    if prefilter != "none":
        spec = WorkerSpec(base=base, num_threads=1)

        def losses(indices: list[int]) -> list[float]:
            with WorkerPool(spec, stack_modules([entries[i] for i in indices]), fewshot,
                            PoolConfig(num_actors=0)) as scorer:
                return [o.loss for o in scorer.evaluate(np.eye(len(indices)))]

        report = select(PrefilterSpec(prefilter, K), pool, [e.directory for e in entries],
                        [ex["input"] for ex in fewshot], losses, seed)
        pool = [pool[i] for i in report.selected]
    case = Case(base, pool, fewshot, test, seed)
    with WorkerPool(WorkerSpec(base=base, num_threads=1), case.stack, fewshot, PoolConfig(num_actors=0)) as workers:
        search = Search(case.stack.num_modules, BUDGET, "cma", seed=seed)
        best = minimize(search, workers.evaluate)
    return case.accuracy(np.array(best.weights))


def plot(accuracy: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for prefilter, sizes in accuracy.items():
        ax.plot(list(sizes), list(sizes.values()), marker="o", label=prefilter if prefilter != "none" else "all modules")
    ax.set_xlabel("modules in the pool")
    ax.set_ylabel("held-out exact match (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description="LoraHub with large module pools")
    parser.add_argument("--zoo", type=Path, default=None,
                        help="zoo directory with a large pool (default: the cache, ~/.cache/lorahub-ray/zoo)")
    parser.add_argument("--model", choices=["t5", "llama"], default="t5")
    parser.add_argument("--scale-only", action="store_true")
    args = parser.parse_args()
    if not args.scale_only:  # the accuracy part draws a plot
        require(__file__, ("matplotlib",))
    started = time.time()
    with private_ray(), tempfile.TemporaryDirectory() as tmp:
        scale_rows = scale(Path(tmp), None)
    print(f"{SCALE_MODULES} modules: indexed in {scale_rows['index_seconds']:.1f}s "
          f"(index {scale_rows['index_bytes'] / 2**20:.1f} MiB, pool {scale_rows['pool_bytes'] / 2**20:.0f} MiB, "
          f"K={K} modules {scale_rows['k_modules_bytes'] / 2**20:.1f} MiB)")
    for name, row in scale_rows["prefilters"].items():
        print(f"  {name}:{K}: {row['seconds']:.1f}s, {row['evaluations']} evaluations, driver peak = index + "
              f"{row['extra_over_index_bytes'] / 2**20:.2f} MiB = index + {row['extra_over_k_modules']:.2f} x K modules")
    accuracy = None if args.scale_only else accuracy_vs_pool(ensure_zoo(args.zoo)[0], args.model)
    if accuracy:
        for prefilter, sizes in accuracy.items():
            print(f"{prefilter:12s} " + "  ".join(f"{size}: {acc:5.1f}" for size, acc in sizes.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "pool_scale" if args.scale_only else "pool"
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "command": " ".join(["python benchmarks/pool.py", *sys.argv[1:]]), "machine": platform.platform(),
        "wall_seconds": time.time() - started, "k": K, "scale": scale_rows, "accuracy": accuracy,
    }, indent=1) + "\n")
    if accuracy:
        plot(accuracy, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json")


if __name__ == "__main__":
    main()
