"""Throughput of LoraHub evaluations, measured side by side on the same model, modules and examples:

  (a) reference  the reference's loop: rebuild the composed state dict, reload it, run the unmerged PEFT model
  (b) bare       the base model's own forward pass (full-vocabulary logits at every position), no modules
  (c) in-place   the engine's evaluation, one candidate at a time (merge; and the PEFT-slot variant)
  (d) batched    the engine scoring a population of candidates in one forward pass
  (e) ray        the whole search (ask, dispatch, evaluate, tell) on 1 and 2 Ray actors, evaluations/s

plus dtype speed and loss difference, and each actor's extra memory with a 200-module store; and a SmolLM2-shaped
case (random weights of SmolLM2-135M's shape, its 49,152-token vocabulary): (a), (b) and (c) interleaved.

    python benchmarks/throughput.py            # every case (several minutes on 2 CPU cores)
    python benchmarks/throughput.py --quick    # the tiny model only, under a minute
    python benchmarks/throughput.py --smollm2  # the SmolLM2-shaped case only (a few minutes)

Every single-process timing uses one torch thread, as one actor with one CPU does. Prints ratios, writes
benchmarks/results/throughput.json and benchmarks/results/throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# ---- settings -------------------------------------------------------------------------------------------
CASES = {  # name: (kind, d_model, layers per stack, heads, d_ff, modules, rank, example length in bytes)
    "tiny-t5": ("t5", 64, 2, 4, 128, 3, 4, 100),
    "t5-512x6": ("t5", 512, 6, 8, 2048, 20, 16, 100),
    "t5-1024x4": ("t5", 1024, 4, 16, 4096, 20, 16, 100),
    "llama-512x6": ("llama", 512, 6, 8, 1408, 20, 16, 100),
}
QUICK_CASES = ["tiny-t5"]
SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,  # its config
           "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": True,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
SMOLLM2_MODULES, SMOLLM2_RANK = 20, 8
REPEATS = 5  # timed evaluations per measurement (median reported)
POPULATION = 8  # candidates per batched pass and per search generation
SEARCH_BUDGET = 24  # evaluations per Ray search measurement
DTYPES = ["bfloat16"] if not torch.cuda.is_available() else ["bfloat16", "float16"]
STORE_MODULES = 200  # modules in the memory measurement
RESULTS = Path(__file__).parent / "results"
# ---------------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent))

from needs import private_ray, require  # noqa: E402

from actors import Worker, WorkerSpec  # noqa: E402
from actors.examples import IGNORE, tokenize_examples  # noqa: E402
from actors.model import quiet_loading  # noqa: E402
from lorahub_ray.config import PoolConfig  # noqa: E402
from lorahub_ray.modules import load_stack  # noqa: E402
from lorahub_ray.pool import WorkerPool  # noqa: E402
from lorahub_ray.search import Search, minimize  # noqa: E402
from lorahub_ray.toy import build_random_base, build_random_modules  # noqa: E402


def make_examples(length: int, count: int = 5, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return [{"input": "".join(rng.choice(letters, length)) + "\nAnswer:",
             "output": "".join(rng.choice(letters, 8))} for _ in range(count)]


def median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_forward(model: torch.nn.Module, batch) -> torch.Tensor:
    """The base model's own forward pass over the examples, as a user calls it: logits ``(E, T, V)``
    (``(E, T_out, V)`` for an encoder-decoder, fed the labels' decoder inputs)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.encoder_decoder:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch.labels)
    with torch.no_grad():
        return model(**inputs).logits


def interleaved_medians(fns: dict, repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...) so that a busy machine slows all
    alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def reference_evaluation(base: Path, modules: list[Path], examples: list[dict], device: str = "cpu"):
    """The reference's per-candidate work: a Python loop builds the weighted state dict, PEFT reloads it,
    and the unmerged PEFT model computes the loss (float32, on ``device``)."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    from actors.model import load_base

    model, tokenizer = load_base(str(base), torch.device(device))
    peft_model = PeftModel.from_pretrained(model, str(modules[0])).eval().to(device)
    states = [load_file(str(Path(m) / "adapter_model.safetensors"), device=device) for m in modules]
    batch = tokenize_examples(tokenizer, examples, bool(model.config.is_encoder_decoder)).to(torch.device(device))

    def evaluate(weights: np.ndarray) -> float:
        composed = {}
        for key in states[0]:
            composed[key] = sum(float(w) * state[key] for w, state in zip(weights, states))
        set_peft_model_state_dict(peft_model, composed)
        with torch.no_grad():
            return float(peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    labels=batch.labels).loss)

    return evaluate


def ray_search_rate(base: Path, stack, examples, actors: int, candidates_per_pass: int) -> float:
    spec = WorkerSpec(base=str(base), num_threads=1, candidates_per_pass=candidates_per_pass)
    with WorkerPool(spec, stack, examples, PoolConfig(num_actors=actors)) as pool:
        pool.evaluate(np.zeros((actors, stack.num_modules)))  # warm-up every actor
        Search(stack.num_modules, 1).ask()  # warm-up the optimizer's imports
        search = Search(stack.num_modules, SEARCH_BUDGET, population=POPULATION, seed=0)
        start = time.perf_counter()
        minimize(search, pool.evaluate)
        return SEARCH_BUDGET / (time.perf_counter() - start)


def measure_case(name: str, root: Path) -> dict:
    kind, d_model, layers, heads, d_ff, n_modules, rank, length = CASES[name]
    base = build_random_base(root / name / "base", kind, d_model=d_model, layers=layers, heads=heads, d_ff=d_ff)
    modules = build_random_modules(base, root / name / "modules", n_modules, rank=rank, seed=1)
    stack = load_stack([str(m) for m in modules])
    examples = make_examples(length)
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    row: dict = {"case": name, "kind": kind, "d_model": d_model, "layers": layers, "modules": n_modules,
                 "rank": rank}
    reference = reference_evaluation(base, modules, examples)
    row["a_reference_s"] = median_seconds(lambda: reference(rng.uniform(-1.5, 1.5, n_modules)))
    worker = Worker(WorkerSpec(base=str(base), device="cpu", num_threads=1), stack, examples)
    row["parameters"] = sum(p.numel() for p in worker.model.parameters())
    row["b_bare_forward_s"] = median_seconds(lambda: bare_forward(worker.model, worker.batch))
    row["c_inplace_merge_s"] = median_seconds(lambda: worker.loss(rng.uniform(-1.5, 1.5, n_modules)))
    population = rng.uniform(-1.5, 1.5, (POPULATION, n_modules))
    row["d_batched_s"] = median_seconds(lambda: worker.losses(population)) / POPULATION
    w = rng.uniform(-1.5, 1.5, n_modules)
    float32_loss = worker.loss(w)
    slot = Worker(WorkerSpec(base=str(base), device="cpu", num_threads=1, apply="slot"), stack, examples)
    row["c_inplace_slot_s"] = median_seconds(lambda: slot.loss(rng.uniform(-1.5, 1.5, n_modules)))
    row["dtypes"] = {}
    for dtype in DTYPES:
        low = Worker(WorkerSpec(base=str(base), device="cpu", num_threads=1, dtype=dtype), stack, examples)
        row["dtypes"][dtype] = {"eval_s": median_seconds(lambda: low.loss(rng.uniform(-1.5, 1.5, n_modules))),
                                "loss_abs_diff_vs_float32": abs(low.loss(w) - float32_loss)}
    for actors in (1, 2):
        for per_pass in (1, POPULATION // 2):
            row[f"e_ray_{actors}_actors_pass{per_pass}_evals_per_s"] = ray_search_rate(
                base, stack, examples, actors, per_pass)
    return row


def build_smollm2_shaped_base(out: Path) -> Path:
    """Save a random-weight Llama of SmolLM2-135M's shape with a byte tokenizer (its ids are all < the vocabulary)."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = ByT5Tokenizer()
    config = LlamaConfig(**SMOLLM2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    with quiet_loading():  # no "Writing model shards" bar
        LlamaForCausalLM(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def measure_smollm2(root: Path) -> dict:
    """ms per evaluation on a SmolLM2-shaped model: reference loop, bare full forward and the engine, in turns."""
    base = build_smollm2_shaped_base(root / "smollm2" / "base")
    modules = build_random_modules(base, root / "smollm2" / "modules", SMOLLM2_MODULES, rank=SMOLLM2_RANK, seed=1)
    examples = make_examples(100)
    rng = np.random.default_rng(0)
    torch.set_num_threads(1)
    reference = reference_evaluation(base, modules, examples)
    worker = Worker(WorkerSpec(base=str(base), device="cpu", num_threads=1), load_stack([str(m) for m in modules]),
                    examples)
    seconds = interleaved_medians({
        "a_reference_s": lambda: reference(rng.uniform(-1.5, 1.5, SMOLLM2_MODULES)),
        "b_bare_forward_s": lambda: bare_forward(worker.model, worker.batch),
        "c_inplace_merge_s": lambda: worker.loss(rng.uniform(-1.5, 1.5, SMOLLM2_MODULES)),
    })
    E, T = worker.batch.input_ids.shape
    return {"case": "smollm2-shaped", "config": SMOLLM2, "modules": SMOLLM2_MODULES, "rank": SMOLLM2_RANK,
            "parameters": sum(p.numel() for p in worker.model.parameters()), "examples": E, "tokens": T,
            "answer_tokens": int((worker.batch.labels != IGNORE).sum()), **seconds}


def report_smollm2(row: dict) -> None:
    bare, engine = row["b_bare_forward_s"], row["c_inplace_merge_s"]
    print(f"\n{row['case']}: {row['parameters'] / 1e6:.1f}M parameters, vocabulary {row['config']['vocab_size']}, "
          f"{row['examples']} examples of {row['tokens']} tokens ({row['answer_tokens']} answer tokens), "
          f"{row['modules']} rank-{row['rank']} modules, one thread")
    print(f"  (a) reference loop     {row['a_reference_s'] * 1e3:9.1f} ms/eval")
    print(f"  (b) bare full forward  {bare * 1e3:9.1f} ms/eval")
    print(f"  (c) in-place merge     {engine * 1e3:9.1f} ms/eval  = {engine / bare:.2f}x (b) (target <= 0.85x), "
          f"{row['a_reference_s'] / engine:.1f}x faster than (a)")


def store_memory(root: Path) -> dict:
    """Each actor's extra unique memory when it holds a 200-module store, against the store's size."""
    import psutil

    import ray

    kind, d_model, layers, heads, d_ff, _, rank, length = CASES["t5-512x6"]
    base = build_random_base(root / "memory" / "base", kind, d_model=d_model, layers=layers, heads=heads, d_ff=d_ff)
    module = build_random_modules(base, root / "memory" / "modules", 1, rank=rank, seed=2)[0]
    examples = make_examples(length)
    result = {}
    for count in (1, STORE_MODULES):
        stack = load_stack([str(module)])
        stack = type(stack)(names=tuple(f"m{i}" for i in range(count)), layers=tuple(
            type(layer)(layer.path, np.repeat(layer.A, count, axis=0), np.repeat(layer.B, count, axis=0))
            for layer in stack.layers), scaling=stack.scaling, rank=stack.rank,
            fan_in_fan_out=stack.fan_in_fan_out, peft_config=stack.peft_config)
        with WorkerPool(WorkerSpec(base=str(base), num_threads=1), stack, examples, PoolConfig(num_actors=2)) as pool:
            pool.evaluate(np.zeros((2, count)))
            pids = ray.get([actor.pid.remote() for actor in pool.actors])
            result[count] = {"store_bytes": stack.nbytes,
                             "actor_uss_bytes": [psutil.Process(pid).memory_full_info().uss for pid in pids]}
    extra = [big - small for big, small in zip(result[STORE_MODULES]["actor_uss_bytes"], result[1]["actor_uss_bytes"])]
    store = result[STORE_MODULES]["store_bytes"]
    return {"modules": STORE_MODULES, "store_bytes": store, "per_actor_extra_uss_bytes": extra,
            "per_actor_extra_fraction_of_store": [e / store for e in extra]}


def report(row: dict) -> None:
    bare = row["b_bare_forward_s"]
    print(f"\n{row['case']}: {row['parameters'] / 1e6:.1f}M parameters, {row['modules']} rank-{row['rank']} modules")
    print(f"  (a) reference loop     {row['a_reference_s'] * 1e3:9.1f} ms/eval")
    print(f"  (b) bare forward       {bare * 1e3:9.1f} ms/eval")
    print(f"  (c) in-place merge     {row['c_inplace_merge_s'] * 1e3:9.1f} ms/eval  = {row['c_inplace_merge_s'] / bare:.2f}x (b), "
          f"{row['a_reference_s'] / row['c_inplace_merge_s']:.1f}x faster than (a)")
    print(f"      in-place slot      {row['c_inplace_slot_s'] * 1e3:9.1f} ms/eval  = {row['c_inplace_slot_s'] / bare:.2f}x (b)")
    print(f"  (d) batched x{POPULATION}         {row['d_batched_s'] * 1e3:9.1f} ms/eval  = "
          f"{row['c_inplace_merge_s'] / row['d_batched_s']:.2f}x the rate of (c)")
    for dtype, figures in row["dtypes"].items():
        print(f"      {dtype:9s}          {figures['eval_s'] * 1e3:9.1f} ms/eval  = "
              f"{row['c_inplace_merge_s'] / figures['eval_s']:.2f}x float32 speed, |loss diff| "
              f"{figures['loss_abs_diff_vs_float32']:.2e}")
    for per_pass in (1, POPULATION // 2):
        one, two = (row[f"e_ray_{k}_actors_pass{per_pass}_evals_per_s"] for k in (1, 2))
        print(f"  (e) ray search, {per_pass} per pass: 1 actor {one:7.2f} eval/s, 2 actors {two:7.2f} eval/s "
              f"= {two / one:.2f}x")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["(a) reference", "(b) bare", "(c) in-place", "(d) batched"]
    keys = ["a_reference_s", "b_bare_forward_s", "c_inplace_merge_s", "d_batched_s"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        ax.bar(labels, [row[k] * 1e3 for k in keys], color=["#999", "#555", "#1f77b4", "#2ca02c"])
        ax.set_title(f"{row['case']} ({row['parameters'] / 1e6:.1f}M)")
        ax.set_ylabel("ms per evaluation")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description="LoraHub evaluation throughput, side by side")
    parser.add_argument("--quick", action="store_true", help="the tiny model only, no memory measurement")
    parser.add_argument("--smollm2", action="store_true", help="the SmolLM2-shaped case only")
    args = parser.parse_args()
    require(__file__, ("matplotlib",))
    if args.smollm2:
        smollm2_only()
        return
    rows, started = [], time.time()
    with private_ray(), tempfile.TemporaryDirectory() as tmp:
        for name in QUICK_CASES if args.quick else CASES:
            rows.append(measure_case(name, Path(tmp)))
            report(rows[-1])
        memory = None if args.quick else store_memory(Path(tmp))
        smollm2 = None if args.quick else measure_smollm2(Path(tmp))
    if smollm2:
        report_smollm2(smollm2)
    if memory:
        print(f"\nstore of {memory['modules']} modules ({memory['store_bytes'] / 2**20:.0f} MiB): per-actor extra "
              f"memory {[f'{f:.1%}' for f in memory['per_actor_extra_fraction_of_store']]} of the store")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "throughput_quick" if args.quick else "throughput"
    (RESULTS / f"{name}.json").write_text(json.dumps({
        "command": "python benchmarks/throughput.py" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "threads_per_evaluation": 1, "population": POPULATION, "wall_seconds": time.time() - started,
        "cases": rows, "store_memory": memory, "smollm2_shaped": smollm2,
    }, indent=2) + "\n")
    plot(rows, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json and .png")


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def smollm2_only() -> None:
    """``--smollm2``: the SmolLM2-shaped case alone; writes benchmarks/results/throughput_smollm2.json."""
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        row = measure_smollm2(Path(tmp))
    report_smollm2(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "throughput_smollm2.json"
    path.write_text(json.dumps({"command": "python benchmarks/throughput.py --smollm2", "machine": machine(),
                                "threads_per_evaluation": 1, "wall_seconds": time.time() - started,
                                "case": row}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
