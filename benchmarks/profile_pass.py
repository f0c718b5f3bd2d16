"""Where one batched evaluation pass spends its time, on a random-weight model of a real shape.

A pass scores P candidates in one forward (`Worker.losses`): it composes every candidate's factors for every adapted
layer, runs the model over P copies of the examples with each candidate's LoRA added to its own rows (a hook per
layer), and takes the loss. Timed side by side (medians of passes timed in turns, so that a busy machine slows
all alike):

  pass      the whole pass
  compose   composing the P candidates' factors (and resetting the layers to the plain base)
  body      the same forward and loss with the hooks off: the bare model's own work over the same rows
  lora      pass - compose - body: the hooks' per-candidate low-rank products

and, from passes under torch.profiler (per pass), each operator group's share: matrix products (``aten::mm``, ``addmm``,
``bmm``, ``baddbmm``), attention, every other operator, and the rest of the pass's wall-clock (on the CPU: Python
and framework time outside any operator; on CUDA: the device's idle time). The model's own matrix work is what a
faster pass cannot remove; the rest is what it can.

    python benchmarks/profile_pass.py                           # the SmolLM2-135M shape, 8 candidates, on the CPU
    python benchmarks/profile_pass.py --shape flan-t5-large --candidates 4
    python benchmarks/profile_pass.py --dry-run --out /tmp/profile.json   # a tiny shape: tests this script
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lorahub_ray.atomic import write_atomic  # noqa: E402
from shapes import SHAPE_MODELS, SHAPE_MODULES, build_shape, make_examples, population, synchronize  # noqa: E402

MATMUL = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})
REPEATS = 3  # timed passes per figure, after one warm-up
TOP = 8  # operators listed by self time
RESULTS = Path(__file__).parent / "results"


def profile_pass(worker, candidates: np.ndarray, device: str, repeats: int = REPEATS) -> dict:
    """Time one pass of ``candidates`` ``(P, N)`` on ``worker`` and its parts (medians of ``repeats``), and profile
    ``repeats`` passes by operator."""
    from torch.profiler import ProfilerActivity, profile

    from actors.loss import example_token_losses
    from throughput import interleaved_medians

    def compose() -> None:
        worker.cache.apply_population(candidates)
        worker.cache.apply_population(None)

    batch = worker.batches[0].repeat(len(candidates))  # the rows `Worker.losses` builds for one example set
    parts = {"pass": lambda: worker.losses(candidates), "compose": compose,
             "body": lambda: example_token_losses(worker.model, batch)}
    seconds = interleaved_medians({part: lambda fn=fn: (fn(), synchronize(device)) for part, fn in parts.items()},
                                  repeats)
    figures = {"candidates": len(candidates), "rows": len(batch), "tokens": int(batch.attention_mask.sum()),
               **{f"{part}_ms": 1e3 * value for part, value in seconds.items()}}
    figures["lora_ms"] = figures["pass_ms"] - figures["compose_ms"] - figures["body_ms"]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiled:
        start = time.perf_counter()
        for _ in range(repeats):
            worker.losses(candidates)
        synchronize(device)
        wall_ms = 1e3 * (time.perf_counter() - start)
    figures["profile"] = operator_groups(profiled.key_averages(), wall_ms, device, repeats)
    return figures


def operator_groups(events, wall_ms: float, device: str, passes: int) -> dict:
    """Self time per pass by operator group of ``passes`` profiled passes (CPU time on the CPU; on CUDA the device
    time of the kernels each operator launched), and the wall-clock no operator accounts for; the profiler's own
    overhead is in every figure, so the shares say more than the milliseconds."""
    from torch.autograd import DeviceType

    cuda = device == "cuda"
    groups = dict.fromkeys(("matmul", "attention", "other_ops"), 0.0)
    top = []
    for event in events:
        if cuda and event.device_type != DeviceType.CPU:  # a kernel: already counted in the operator that launched it
            continue
        self_ms = (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e3 / passes
        group = "matmul" if event.key in MATMUL else "attention" if "attention" in event.key else "other_ops"
        groups[group] += self_ms
        top.append({"operator": event.key, "calls": event.count / passes, "self_ms": self_ms})
    outside = "device_idle_ms" if cuda else "outside_operators_ms"
    return {"passes": passes, "wall_ms": wall_ms / passes, **{f"{group}_ms": value for group, value in groups.items()},
            outside: wall_ms / passes - sum(groups.values()),
            "operator_calls": sum(event["calls"] for event in top),
            "top": sorted(top, key=lambda event: -event["self_ms"])[:TOP]}


def main(argv: list[str] | None = None) -> dict:
    shapes = {**SHAPE_MODELS["gpu"], **SHAPE_MODELS["dry"]}
    parser = argparse.ArgumentParser(description="where one batched evaluation pass spends its time")
    parser.add_argument("--shape", choices=sorted(shapes), default="smollm2-135m", help="the model's shape")
    parser.add_argument("--candidates", type=int, default=8, help="candidates in the pass (P)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the worker's dtype (auto: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dry-run", action="store_true", help="the tiny-llama shape: tests this script")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile_pass.json", help="where to write the figures")
    args = parser.parse_args(argv)
    if args.candidates < 2:
        parser.error("--candidates must be at least 2 (one candidate takes the merged path, not a batched pass)")
    import torch

    from actors import Worker, WorkerSpec
    from lorahub_ray.modules import load_stack
    from lorahub_ray.toy import build_random_modules
    from throughput import machine

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "tiny-llama" if args.dry_run else args.shape
    kind, settings, rank, length = shapes[name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lorahub-ray-profile-") as tmp:
        base = build_shape(kind, settings, Path(tmp) / "base", args.device)
        modules = build_random_modules(base, Path(tmp) / "modules", SHAPE_MODULES, rank=rank, seed=1)
        spec = WorkerSpec(base=str(base), device=args.device, dtype=args.dtype, candidates_per_pass=args.candidates)
        worker = Worker(spec, load_stack([str(m) for m in modules]), make_examples(length))
        arguments = argv if argv is not None else sys.argv[1:]
        figures = {"command": " ".join(["python benchmarks/profile_pass.py", *arguments]),
                   "machine": {**machine(), "threads": torch.get_num_threads()},
                   "shape": name, "kind": kind, "rank": rank, "modules": SHAPE_MODULES, "device": args.device,
                   "dtype": str(next(worker.model.parameters()).dtype).removeprefix("torch."),
                   **profile_pass(worker, population(SHAPE_MODULES, args.candidates), args.device)}
    figures["wall_seconds"] = time.perf_counter() - started
    write_atomic(args.out, json.dumps(figures, indent=1) + "\n")  # no half-written file if the run is stopped
    report(figures)
    print(f"wrote {args.out}")
    return figures


def summary(figures: dict) -> str:
    """One line: each part's and each operator group's share of the pass."""
    ops = figures["profile"]
    rest = "device_idle" if "device_idle_ms" in ops else "outside_operators"
    return (f"{figures['candidates']} candidates, " + ", ".join(
        f"{part} {figures[f'{part}_ms'] / figures['pass_ms']:.0%}" for part in ("body", "lora", "compose"))
        + "; profiled: " + ", ".join(f"{group} {ops[f'{group}_ms'] / ops['wall_ms']:.0%}"
                                     for group in ("matmul", "attention", "other_ops", rest)))


def report(figures: dict) -> None:
    print(f"{figures['shape']} ({figures['kind']}, {figures['modules']} modules of rank {figures['rank']}), "
          f"{figures['candidates']} candidates, {figures['rows']} rows, {figures['tokens']} tokens, "
          f"{figures['device']} {figures['dtype']}:")
    whole = figures["pass_ms"]
    for part in ("pass", "body", "lora", "compose"):
        print(f"  {part:8s} {figures[f'{part}_ms']:9.2f} ms  {figures[f'{part}_ms'] / whole:6.1%}")
    profiled = figures["profile"]
    print(f"  profiled pass {profiled['wall_ms']:.2f} ms, {profiled['operator_calls']:.0f} operator calls:")
    for key in [k for k in profiled if k.endswith("_ms") and k != "wall_ms"]:
        print(f"    {key.removesuffix('_ms'):22s} {profiled[key]:9.2f} ms  {profiled[key] / profiled['wall_ms']:6.1%}")
    for event in profiled["top"]:
        print(f"      {event['operator']:40s} {event['calls']:6.0f} calls {event['self_ms']:9.2f} ms")


if __name__ == "__main__":
    main()
