"""Throughput of one evaluation: bare base-model forward vs in-place composition (merge / slot), and the
Ray search's evaluations per second with 1 and 2 actors, on random models built offline.

    python benchmarks/throughput.py            # tiny and larger encoder-decoder, plus decoder-only
    python benchmarks/throughput.py --quick    # tiny model only, under a minute

Prints one line per case with its ratio against the bare forward, and writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from actors import Worker, WorkerSpec
from actors.loss import example_token_losses
from lorahub_ray.config import PoolConfig
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from lorahub_ray.search import Search, minimize
from lorahub_ray.toy import build_random_base, build_random_modules

# ---- settings -------------------------------------------------------------------------------------------
CASES = {  # name: (kind, d_model, layers per stack, heads, d_ff, modules, rank, example length in bytes)
    "tiny-t5": ("t5", 64, 2, 4, 128, 3, 4, 40),
    "t5-512x6": ("t5", 512, 6, 8, 2048, 20, 16, 100),
    "llama-512x6": ("llama", 512, 6, 8, 1408, 20, 16, 100),
}
QUICK_CASES = ["tiny-t5"]
REPEATS = 7  # timed evaluations per measurement (median reported)
SEARCH_BUDGET = 16  # evaluations per Ray search measurement (population 4)
RESULTS = Path(__file__).parent / "results" / "throughput.json"
# ---------------------------------------------------------------------------------------------------------


def make_examples(length: int, count: int = 5, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return [{"input": "".join(rng.choice(letters, length)) + "\nAnswer:",
             "output": "".join(rng.choice(letters, max(4, length // 10)))} for _ in range(count)]


def median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_case(name: str, root: Path) -> dict:
    kind, d_model, layers, heads, d_ff, n_modules, rank, length = CASES[name]
    base = build_random_base(root / name / "base", kind, d_model=d_model, layers=layers, heads=heads, d_ff=d_ff)
    modules = build_random_modules(base, root / name / "modules", n_modules, rank=rank, seed=1)
    stack = load_stack([str(m) for m in modules])
    examples = make_examples(length)
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    row: dict = {"case": name, "modules": n_modules, "rank": rank, "parameters": None}
    for apply in ("merge", "slot"):
        worker = Worker(WorkerSpec(base=str(base), apply=apply, device="cpu", num_threads=1), stack, examples)
        if apply == "merge":
            row["parameters"] = sum(p.numel() for p in worker.model.parameters())
            row["bare_forward_s"] = median_seconds(lambda: example_token_losses(worker.model, worker.batch))
        row[f"{apply}_eval_s"] = median_seconds(lambda: worker.loss(rng.uniform(-1.5, 1.5, n_modules)))
    for actors in (1, 2):
        with WorkerPool(WorkerSpec(base=str(base), num_threads=1), stack, examples,
                        PoolConfig(num_actors=actors)) as pool:
            pool.evaluate(np.zeros((actors, n_modules)))  # warm-up
            search = Search(n_modules, SEARCH_BUDGET, population=4, seed=0)
            start = time.perf_counter()
            minimize(search, pool.evaluate)
            row[f"ray_{actors}_actor_evals_per_s"] = SEARCH_BUDGET / (time.perf_counter() - start)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in QUICK_CASES if args.quick else CASES:
            row = measure_case(name, Path(tmp))
            rows.append(row)
            bare = row["bare_forward_s"]
            print(f"{name:12s} {row['parameters'] / 1e6:6.1f}M params | bare forward {bare * 1e3:8.1f} ms | "
                  f"merge {row['merge_eval_s'] * 1e3:8.1f} ms ({row['merge_eval_s'] / bare:.2f}x bare) | "
                  f"slot {row['slot_eval_s'] * 1e3:8.1f} ms ({row['slot_eval_s'] / bare:.2f}x bare) | "
                  f"ray 1 actor {row['ray_1_actor_evals_per_s']:.1f} eval/s, 2 actors "
                  f"{row['ray_2_actor_evals_per_s']:.1f} eval/s "
                  f"({row['ray_2_actor_evals_per_s'] / row['ray_1_actor_evals_per_s']:.2f}x)", flush=True)
    ray.shutdown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "python benchmarks/throughput.py" + (" --quick" if args.quick else ""),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": __import__("os").cpu_count(), "torch": torch.__version__},
        "threads_per_evaluation": 1, "cases": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
