"""The GPU check: what a session lent one GPU runs in one go (under 5 minutes on one H200).

It builds a random-weight base of a real shape (the SmolLM2-135M body: 30 layers of 576, 9 heads; byte vocabulary)
and random LoRA modules on the machine itself, then measures:

  devices     the device that actors reserving 0, 0.5 and 1 GPU actually use (``Worker.info()``)
  bfloat16    the loss difference of bfloat16 from float32 on CUDA, on the same candidates
  passes      evaluations per second with ``candidates_per_pass`` 1, 8 and 32 (one in-process worker on CUDA),
              and each worker's pass size after its run (halved automatically on out-of-memory)
  actors      a search on 1 actor (1 GPU) and on 2 actors (0.5 GPU each): the same history, evaluations per second
  shapes      for real model shapes (SmolLM2-135M, Flan-T5-large, a 1B Llama), random weights, 20 modules, 5 examples:
              ms per evaluation of the reference loop, the bare float32 forward, the engine one candidate at a
              time (float32), the engine with default settings (dtype and pass size auto) and with the best pass
              size measured (bfloat16); each against the compute limit (2 x parameters x tokens FLOPs at the
              device's measured bfloat16 matmul rate)
  many        S searches (each its own examples and seed) at once on one pool (`run_many`, default pool settings)
              against the same searches run one after another, each starting its actors (`run`); wall-clock from
              the call to the last result. On the GPU the one-after-another time is measured on the first
              `SEQUENTIAL_MEASURED` searches and scaled to S; the identical results are checked on those.
  profile     for each shape, where one pass of the default settings spends its time (`profile_pass.py`: compose,
              the bare body, the LoRA hooks; matrix products, attention, other operators, device idle time)

    python benchmarks/gpu_check.py                      # on a CUDA machine; writes benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --out $OUT/gpu.json  # on the lent machine (see ../shared/device/README.md)
    python benchmarks/gpu_check.py --cpu-dry-run        # tiny shapes on CPU, to test this script (seconds)

Without CUDA it refuses to run, unless ``--cpu-dry-run``: then Ray is given one logical GPU, actors are told
``device="cpu"``, and every figure is measured on tiny shapes (the figures say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lorahub_ray.atomic import write_atomic  # noqa: E402
from needs import require  # noqa: E402
from profile_pass import profile_pass, summary  # noqa: E402
from shapes import (EXAMPLES, SHAPE_MODELS, SHAPE_MODULES, build_shape, evaluation_flops,  # noqa: E402
                    make_examples, peak_matmul_flops, population, synchronize)

# ---- settings -------------------------------------------------------------------------------------------
SHAPES = {  # kind, d_model, layers, heads, d_ff, modules, rank, example input bytes
    "gpu": ("llama", 576, 30, 9, 1536, 20, 16, 256),  # the SmolLM2-135M body (its GQA and vocabulary aside)
    "dry": ("llama", 32, 2, 4, 64, 3, 4, 24),
}
PASSES = (1, 8, 32)  # candidates_per_pass measured
DTYPE_CANDIDATES = 8  # candidates scored in float32 and in bfloat16
SEARCH_PASS = 8  # candidates_per_pass of the 1- and 2-actor searches
SEARCH_BUDGET = {"gpu": 96, "dry": 8}
ROUNDS = {"gpu": 3, "dry": 1}  # timed populations per pass size (after one warm-up)
DEVICE_GPUS = (0.0, 0.5, 1.0)  # gpus_per_actor whose device is reported
SHAPE_PASSES = {"gpu": (64, 128, 256), "dry": (2, 4)}  # bfloat16 pass sizes tried for the best setting
MANY = {"gpu": (24, 200), "dry": (3, 8)}  # searches and budget of each in the many-searches check
SEQUENTIAL_MEASURED = {"gpu": 2, "dry": 3}  # of those, run one after another
RESULTS = Path(__file__).parent / "results"
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="the GPU check: devices, bfloat16, passes, 1 vs 2 actors, many "
                                                 "searches on one pool")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on CPU: tests this script only")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="where to write the figures")
    args = parser.parse_args(argv)
    require(__file__, ("ray", "nevergrad"), install='pip install -e . (on the lent GPU machine: carry the wheels '
                                                    'of ../shared/device/wheels.sh)')
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("error: gpu_check.py measures a GPU, and torch sees no CUDA device here; run it on a GPU machine "
              "(or pass --cpu-dry-run to test the script on tiny shapes)", file=sys.stderr)
        raise SystemExit(2)
    started = time.perf_counter()
    figures = run_checks("dry" if args.cpu_dry_run else "gpu")
    figures["wall_seconds"] = time.perf_counter() - started
    write_atomic(args.out, json.dumps(figures, indent=1) + "\n")  # no half-written file if the run is stopped
    report(figures)
    print(f"wrote {args.out}")
    return figures


def run_checks(mode: str) -> dict:
    """Every measurement of one run: ``mode`` ``"gpu"`` or ``"dry"`` (CPU, tiny shapes)."""
    import ray

    from lorahub_ray.modules import load_stack
    from lorahub_ray.toy import build_random_base, build_random_modules

    kind, d_model, layers, heads, d_ff, count, rank, length = SHAPES[mode]
    device = "cpu" if mode == "dry" else "cuda"
    with tempfile.TemporaryDirectory(prefix="lorahub-ray-gpu-check-") as tmp:
        base = str(build_random_base(Path(tmp) / "base", kind, d_model=d_model, layers=layers, heads=heads,
                                     d_ff=d_ff))
        stack = load_stack([str(p) for p in build_random_modules(base, Path(tmp) / "modules", count, rank=rank)])
        examples = make_examples(length)
        figures = {"mode": mode, "config": config(mode), "versions": versions(), "device": device_info(device)}
        figures["shapes"] = shape_checks(mode, device, Path(tmp) / "shapes")
        figures["dtypes"] = dtype_difference(base, stack, examples, device)
        figures["passes"] = pass_throughput(base, stack, examples, device, ROUNDS[mode])
        ray.init(address="local", num_cpus=4 if mode == "dry" else None, num_gpus=1 if mode == "dry" else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            figures["actors"] = actor_checks(base, stack, examples, "cpu" if mode == "dry" else "auto",
                                             SEARCH_BUDGET[mode])
            figures["many"] = many_searches(base, list(stack.names), length, "cpu" if mode == "dry" else "auto",
                                            *MANY[mode], SEQUENTIAL_MEASURED[mode])
        finally:
            ray.shutdown()
    figures["ratios"] = ratios(figures)
    return figures


def shape_checks(mode: str, device: str, root: Path) -> dict:
    """ms per evaluation for every shape of `SHAPE_MODELS`, side by side, and the compute limit of each."""
    import torch

    from actors import Worker, WorkerSpec
    from actors.examples import IGNORE
    from lorahub_ray.modules import load_stack
    from lorahub_ray.toy import build_random_modules
    from throughput import bare_forward, median_seconds, reference_evaluation

    peak = peak_matmul_flops(device)
    rows = []
    for name, (kind, settings, rank, length) in SHAPE_MODELS[mode].items():
        base = build_shape(kind, settings, root / name / "base", device)
        modules = build_random_modules(base, root / name / "modules", SHAPE_MODULES, rank=rank, seed=1)
        stack, examples = load_stack([str(m) for m in modules]), make_examples(length)
        candidates = population(SHAPE_MODULES, max(SHAPE_PASSES[mode]) * 2)
        timed = lambda fn: median_seconds(lambda: (fn(), synchronize(device)), repeats=3)  # noqa: E731
        reference = reference_evaluation(base, modules, examples, device)
        row: dict = {"shape": name, "kind": kind, "rank": rank,
                     "reference_ms": 1e3 * timed(lambda: reference(candidates[0]))}
        del reference
        one = Worker(WorkerSpec(base=str(base), device=device, dtype="float32", candidates_per_pass=1), stack,
                     examples)
        row.update(parameters=sum(p.numel() for p in one.model.parameters()),
                   tokens=int(one.batch.attention_mask.sum()), answer_tokens=int((one.batch.labels != IGNORE).sum()),
                   flops=evaluation_flops(one.model, one.batch),
                   bare_forward_float32_ms=1e3 * timed(lambda: bare_forward(one.model, one.batch)),
                   one_at_a_time_float32_ms=1e3 * timed(lambda: one.loss(candidates[0])))
        del one
        for label, spec in [("default", {}), *[(f"bfloat16_pass{size}", {"dtype": "bfloat16",
                                                                          "candidates_per_pass": size})
                                               for size in SHAPE_PASSES[mode]]]:
            if device == "cuda":
                torch.cuda.empty_cache()
            worker = Worker(WorkerSpec(base=str(base), device=device, **spec), stack, examples)
            size = worker.pass_size
            chosen = candidates[: max(2 * size, 2)]
            row[f"{label}_ms"] = 1e3 * timed(lambda: worker.evaluate(chosen)) / len(chosen)
            row[f"{label}_pass"] = worker.pass_size
            if label == "default":
                row["profile"] = profile_or_error(worker, candidates[: max(worker.pass_size, 2)], device)
            del worker
        best = min(ms for key, ms in row.items() if key.endswith("_ms") and key.startswith(("bfloat16_pass",
                                                                                              "default")))
        row.update(best_ms=best, compute_limit_ms=1e3 * row["flops"] / peak, default_vs_best=best / row["default_ms"])
        row["best_vs_limit"] = row["compute_limit_ms"] / best
        rows.append(row)
    return {"peak_flops": peak, "modules": SHAPE_MODULES, "examples": EXAMPLES, "rows": rows}


def profile_or_error(worker, candidates: np.ndarray, device: str) -> dict:
    """`profile_pass.profile_pass` of one default pass, or its error: a profile must not cost the run's other
    figures."""
    try:
        return profile_pass(worker, candidates, device)
    except Exception as err:  # recorded in the figures; the other checks go on
        return {"error": f"{type(err).__name__}: {err}"}


def dtype_difference(base: str, stack, examples: list[dict[str, str]], device: str) -> dict:
    """The same candidates scored in float32 and in bfloat16 on ``device``."""
    from actors import Worker, WorkerSpec

    candidates = population(stack.num_modules, DTYPE_CANDIDATES)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        worker = Worker(WorkerSpec(base=base, device=device, dtype=dtype), stack, examples)
        losses[dtype] = [r.loss for r in worker.evaluate(candidates)]
        del worker
    diff = np.abs(np.array(losses["bfloat16"]) - np.array(losses["float32"]))
    return {"candidates": DTYPE_CANDIDATES, "float32_losses": losses["float32"], "bfloat16_losses": losses["bfloat16"],
            "max_abs_diff": float(diff.max()), "max_rel_diff": float((diff / np.abs(losses["float32"])).max())}


def pass_throughput(base: str, stack, examples: list[dict[str, str]], device: str, rounds: int) -> list[dict]:
    """Evaluations per second of one in-process float32 worker for each pass size in `PASSES`."""
    import torch

    from actors import Worker, WorkerSpec

    rows = []
    for size in PASSES:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        worker = Worker(WorkerSpec(base=base, device=device, candidates_per_pass=size), stack, examples)
        candidates = population(stack.num_modules, max(PASSES))  # whole passes of every size
        worker.evaluate(candidates[:size])  # warm-up: kernels, allocator
        synchronize(device)
        start = time.perf_counter()
        for _ in range(rounds):
            results = worker.evaluate(candidates)
        synchronize(device)
        seconds = time.perf_counter() - start
        rows.append({"candidates_per_pass": size, "evaluations": rounds * len(candidates), "seconds": seconds,
                     "evals_per_s": rounds * len(candidates) / seconds, "pass_size_after": worker.pass_size,
                     "failed": sum(r.error is not None for r in results),
                     "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None})
        del worker
    return rows


def actor_checks(base: str, stack, examples: list[dict[str, str]], device: str, budget: int) -> dict:
    """Each actor's device for `DEVICE_GPUS`, and one search on 1 actor x 1 GPU and on 2 actors x 0.5 GPU."""
    import ray

    from lorahub_ray.config import PoolConfig, RunConfig
    from lorahub_ray.pool import WorkerPool
    from lorahub_ray.run import worker_spec

    run_config = RunConfig(base=base, modules=list(stack.names), examples=examples, budget=budget)
    devices, searches = [], {}
    for gpus in DEVICE_GPUS:
        actors = 2 if gpus == 0.5 else 1
        pool_config = PoolConfig(num_actors=actors, gpus_per_actor=gpus, device=device,
                                 candidates_per_pass=SEARCH_PASS)
        with WorkerPool(worker_spec(run_config, pool_config), stack, examples, pool_config) as pool:
            infos = ray.get([actor.info.remote() for actor in pool.actors])
            devices.append({"gpus_per_actor": gpus, "actors": actors, "device": [i["device"] for i in infos],
                            "gpu_ids": [i.get("gpu_ids") for i in infos]})
            if gpus > 0:
                searches[f"{actors}_actors"] = timed_search(pool, stack.num_modules, budget)
    one, two = searches["1_actors"], searches["2_actors"]
    scores = np.array(one.pop("scores")), np.array(two.pop("scores"))
    return {"devices": devices, "search": {
        "pass": SEARCH_PASS, "budget": budget, "one_actor": one, "two_actors": two,
        "same_history": bool(np.array_equal(*scores)) and one["best_weights"] == two["best_weights"],
        "max_score_diff": float(np.abs(scores[0] - scores[1]).max())}}


def timed_search(pool, num_modules: int, budget: int) -> dict:
    """A seeded search on ``pool``: its best candidate, every score, evaluations per second."""
    from lorahub_ray.search import Search, minimize

    pool.evaluate(population(num_modules, SEARCH_PASS * len(pool.actors)))  # warm-up: first pass on each actor
    run = Search(num_modules, budget, seed=0)
    start = time.perf_counter()
    best = minimize(run, pool.evaluate)
    seconds = time.perf_counter() - start
    return {"best_score": best.score, "best_weights": best.weights, "scores": [e.score for e in run.history],
            "evaluations": len(run.history), "seconds": seconds, "evals_per_s": len(run.history) / seconds}


def many_searches(base: str, modules: list[str], length: int, device: str, count: int, budget: int,
                  measured: int) -> dict:
    """``count`` searches of ``budget`` on one pool against the first ``measured`` of them run one by one."""
    from lorahub_ray.config import PoolConfig, RunConfig
    from lorahub_ray.many import run_many
    from lorahub_ray.run import run

    configs = [RunConfig(base=base, modules=modules, examples=make_examples(length, seed=task), budget=budget,
                         seed=task) for task in range(count)]
    pool = PoolConfig(device=device)  # the defaults: one actor per GPU, passes sized on the device
    start = time.perf_counter()
    together = run_many(configs, pool, progress=False)
    many_seconds = time.perf_counter() - start
    start = time.perf_counter()
    alone = [run(config, pool, progress=False) for config in configs[:measured]]
    alone_seconds = time.perf_counter() - start
    return {"searches": count, "budget": budget, "evaluations": count * budget, "many_seconds": many_seconds,
            "one_after_another_measured": measured, "one_after_another_seconds": alone_seconds,
            "one_after_another_seconds_for_all": alone_seconds * count / measured,
            "same_results": all(a.weights == b.weights and a.best_score == b.best_score
                                for a, b in zip(together, alone)),
            "max_best_score_diff": max(abs(a.best_score - b.best_score) for a, b in zip(together, alone))}


def ratios(figures: dict) -> dict:
    rate = {row["candidates_per_pass"]: row["evals_per_s"] for row in figures["passes"]}
    search = figures["actors"]["search"]
    return {**{f"pass{size}_vs_pass1": rate[size] / rate[1] for size in PASSES[1:]},
            "two_actors_vs_one": search["two_actors"]["evals_per_s"] / search["one_actor"]["evals_per_s"],
            **{f"{row['shape']}_default_vs_best": row["default_vs_best"] for row in figures["shapes"]["rows"]},
            **{f"{row['shape']}_best_vs_limit": row["best_vs_limit"] for row in figures["shapes"]["rows"]},
            "many_vs_one_after_another": figures["many"]["one_after_another_seconds_for_all"]
            / figures["many"]["many_seconds"]}


def config(mode: str) -> dict:
    kind, d_model, layers, heads, d_ff, count, rank, length = SHAPES[mode]
    return {"kind": kind, "d_model": d_model, "layers": layers, "heads": heads, "d_ff": d_ff, "modules": count,
            "rank": rank, "examples": EXAMPLES, "input_bytes": length, "passes": list(PASSES),
            "search_pass": SEARCH_PASS, "search_budget": SEARCH_BUDGET[mode], "rounds": ROUNDS[mode],
            "many": MANY[mode], "sequential_measured": SEQUENTIAL_MEASURED[mode]}


def versions() -> dict:
    import nevergrad
    import peft
    import ray
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "peft": peft.__version__, "ray": ray.__version__,
            "nevergrad": nevergrad.__version__, "numpy": np.__version__}


def device_info(device: str) -> dict:
    import torch

    if device != "cuda":
        return {"name": "cpu", "count": 0, "memory_bytes": None}
    properties = torch.cuda.get_device_properties(0)
    return {"name": properties.name, "count": torch.cuda.device_count(), "memory_bytes": properties.total_memory}


def report(figures: dict) -> None:
    print(f"{figures['device']['name']} ({figures['mode']}): {figures['config']}")
    for row in figures["actors"]["devices"]:
        print(f"  {row['gpus_per_actor']:.1f} GPU per actor: device {row['device']}, gpu ids {row['gpu_ids']}")
    dtypes = figures["dtypes"]
    print(f"  bfloat16 vs float32 loss: max |diff| {dtypes['max_abs_diff']:.3g} ({dtypes['max_rel_diff']:.2%})")
    for row in figures["passes"]:
        print(f"  {row['candidates_per_pass']:3d} per pass: {row['evals_per_s']:8.1f} eval/s "
              f"(pass size after the run {row['pass_size_after']})")
    search = figures["actors"]["search"]
    print(f"  search, {search['pass']} per pass: 1 actor {search['one_actor']['evals_per_s']:.1f} eval/s, "
          f"2 actors {search['two_actors']['evals_per_s']:.1f} eval/s; same history: {search['same_history']}")
    for row in figures["shapes"]["rows"]:
        print(f"  {row['shape']}: reference {row['reference_ms']:.2f} ms, bare float32 "
              f"{row['bare_forward_float32_ms']:.2f}, one at a time {row['one_at_a_time_float32_ms']:.2f}, default {row['default_ms']:.3f} (pass "
              f"{row['default_pass']}), best {row['best_ms']:.3f}, compute limit {row['compute_limit_ms']:.3f} ms "
              f"({row['best_vs_limit']:.0%} of the limit; default {row['default_vs_best']:.0%} of the best)")
    for row in figures["shapes"]["rows"]:
        print(f"  {row['shape']} default pass: " + (f"profile failed: {row['profile']['error']}"
                                                      if "error" in row["profile"] else summary(row["profile"])))
    many = figures["many"]
    print(f"  {many['searches']} searches x {many['budget']}: {many['many_seconds']:.1f} s on one pool, "
          f"{many['one_after_another_seconds_for_all']:.1f} s one after another ({many['one_after_another_measured']} "
          f"measured); same results: {many['same_results']}")


if __name__ == "__main__":
    main()
