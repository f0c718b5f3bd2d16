"""The specialist check: does every module beat its base model on its own task, on many unseen examples?

The build scores the base and each module on the task's test split (100 examples by default). Near 100% that
split cannot tell them apart: a base that errs once in 300 examples usually scores 100% on it. This check adds
further examples of every upstream task, disjoint from all of the zoo's splits and from the dev examples on which
the build chose each module's training length, and scores both on them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tqdm.auto import tqdm

from lorahub_ray.errors import InputError
from lorahub_ray.evaluate import exact_match, load_model

from .build import META, load_manifest
from .tasks import Example, Task, dev_examples, draw_distinct, get_task, splits, stable_seed


def check_examples(task: Task, seed: int, n_train: int, n_fewshot: int, n_test: int, n: int,
                   n_dev: int = 0) -> list[Example]:
    """``n`` examples of ``task`` unseen in training: the zoo's test split (built with these sizes), then fresh
    examples whose inputs are in none of its splits nor among the ``n_dev`` dev examples that chose the module's
    training length; fewer when the task has fewer distinct inputs."""
    split = splits(task, seed, n_train, n_fewshot, n_test)
    taken = {ex["input"] for part in split.values() for ex in part}
    taken |= {ex["input"] for ex in dev_examples(task, seed, split, n_dev)}
    rng = random.Random(stable_seed(task.name, seed, "specialist-check"))
    return (split["test"] + draw_distinct(task, max(0, n - len(split["test"])), rng, taken))[:n]


def check_specialists(zoo: Path | str, kind: str = "t5", examples: int = 1000, batch_size: int = 64,
                      progress: bool = True) -> dict:
    """Score the base model of ``kind`` and each of its modules on ``examples`` unseen examples of the module's task.

    Returns the accuracies (fractions) per task and which modules beat, tie with or fall below the base.
    """
    zoo = Path(zoo)
    if not (zoo / "manifest.json").is_file():
        raise InputError(f"{zoo} is not a zoo (no manifest.json); build one with `lorahub-ray zoo build --out DIR`")
    manifest = load_manifest(zoo)
    if kind not in manifest["bases"]:
        raise InputError(f"the zoo at {zoo} has no {kind!r} base model; it has {sorted(manifest['bases'])}")
    base_dir = str(zoo / manifest["bases"][kind])
    if not (Path(base_dir) / META).is_file():
        raise InputError(f"{base_dir} is not a base model built by `lorahub-ray zoo build` (no {META})")
    cfg = json.loads((Path(base_dir) / META).read_text())["config"]
    base, tokenizer = load_model(base_dir)
    rows = []
    for entry in tqdm(manifest["modules"][kind], desc=f"{kind} specialist check", disable=not progress):
        task = get_task(entry["task"])
        unseen = check_examples(task, manifest["seed"], cfg["n_train"], cfg["n_fewshot"], cfg["n_test"], examples,
                                cfg.get("n_dev", 0))
        score = {name: exact_match(model, tokenizer, unseen, batch_size=batch_size,
                                   max_new_tokens=cfg["max_new_tokens"]).accuracy / 100
                 for name, model in (("base", base), ("module", load_model(base_dir, zoo / entry["path"])[0]))}
        rows.append({"task": task.name, "examples": len(unseen), **score})
    return {"kind": kind, "examples": examples, "tasks": rows,
            "beat": [r["task"] for r in rows if r["module"] > r["base"]],
            "tie": [r["task"] for r in rows if r["module"] == r["base"]],
            "below": [r["task"] for r in rows if r["module"] < r["base"]]}
