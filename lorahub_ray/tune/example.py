"""`example_sweep`: the toy sweep `lorahub-ray tune --example` builds and runs offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lorahub_ray.tune.config_file import load_sweep_config
from lorahub_ray.tune.sweeps import sweep

EXAMPLE_WORDS = ("abc", "hello", "ray", "lora", "tiny")
EXAMPLE_TASKS: dict[str, Callable[[str], str]] = {
    "reverse": lambda word: word[::-1], "upper": str.upper, "double": lambda word: word + word,
}
EXAMPLE_POOL = 24  # toy modules the example samples from


def example_sweep(out_dir: str | Path, resume: bool = False) -> list[dict]:
    """Build a tiny offline world in ``out_dir`` (a random T5, `EXAMPLE_POOL` random LoRA modules, three tasks),
    write ``out_dir/sweep.json`` (l1 in {0, 0.05, 0.1} x 10 or 20 sampled modules, over three tasks) and run it."""
    from lorahub_ray.toy import build_random_base, build_random_modules

    out = Path(out_dir)
    config_path = out / "sweep.json"
    if not config_path.exists():
        world = out / "world"
        base = build_random_base(world / "base", "t5")
        modules = build_random_modules(base, world / "modules", count=EXAMPLE_POOL, rank=4, seed=1)
        (world / "tasks").mkdir()
        for task, answer in EXAMPLE_TASKS.items():
            lines = [json.dumps({"input": f"{task}: {word}\nAnswer:", "output": answer(word)}) + "\n"
                     for word in EXAMPLE_WORDS]
            (world / "tasks" / f"{task}.jsonl").write_text("".join(lines), encoding="utf-8")
        config = {
            "name": "example", "storage_path": "runs", "base": "world/base",
            "module_pool": [str(m.relative_to(out)) for m in modules], "module_seed": 0,
            "budget": 24, "seed": 42, "actors": 1, "cpus_per_actor": 1,
            "tasks": {task: f"world/tasks/{task}.jsonl" for task in EXAMPLE_TASKS},
            "param_space": {"l1": [0, 0.05, 0.1], "num_modules": [10, 20]},
        }
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return sweep(**load_sweep_config(config_path), resume=resume)
