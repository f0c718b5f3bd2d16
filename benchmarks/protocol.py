"""The LoraHub evaluation protocol shared by the quality and BBH benchmarks: one task, one seed, every method.

A `Case` is a base model, the candidate modules (already sampled), the few-shot examples and the test split.
Each method returns test exact match (percent). Compositions are applied in place on one in-process worker,
exactly as the search's actors apply them, and scored by greedy generation.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from actors import Worker, WorkerSpec
from lorahub_ray.config import PoolConfig
from lorahub_ray.evaluate import exact_match, option_accuracy
from lorahub_ray.modules import load_stack
from lorahub_ray.optimizers import OPTIMIZERS
from lorahub_ray.pool import WorkerPool
from lorahub_ray.search import Search, minimize


@dataclass
class Case:
    """One task under one seed: base model, sampled modules, few-shot examples and test examples.

    With ``options`` every test example carries its answer options, and each method is also scored by option
    accuracy (`lorahub_ray.evaluate.option_accuracy`). ``max_new_tokens`` None: the automatic generation budget.
    """

    base: str
    modules: list[str]
    fewshot: list[dict[str, str]]
    test: list[dict[str, str]]
    seed: int
    max_new_tokens: int | None = 16
    options: bool = False
    finetune_steps: int = 100
    finetune_lr: float = 5e-3
    worker: Worker = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stack = load_stack(self.modules)
        self.worker = Worker(WorkerSpec(base=self.base, device="cpu", num_threads=1), self.stack, self.fewshot)

    def accuracy(self, weights: np.ndarray) -> float:
        """Test exact match with the composition ``weights`` applied in place."""
        self.worker.cache.apply(np.asarray(weights, dtype=float))
        return exact_match(self.worker.model, self.worker.tokenizer, self.test,
                           max_new_tokens=self.max_new_tokens).accuracy

    def scores(self, weights: np.ndarray) -> dict[str, float]:
        """`accuracy` as ``exact_match``, and the option accuracy of the same composition when ``options``."""
        scores = {"exact_match": self.accuracy(weights)}
        if self.options:
            scores["option_accuracy"] = option_accuracy(self.worker.model, self.worker.tokenizer, self.test)
        return scores

    def score_model(self, model, tokenizer, examples: list[dict]) -> dict[str, float]:
        """`scores` for any model on ``examples`` (prompted test examples, or a model trained apart)."""
        scores = {"exact_match": exact_match(model, tokenizer, examples, max_new_tokens=self.max_new_tokens).accuracy}
        if self.options:
            scores["option_accuracy"] = option_accuracy(model, tokenizer, examples)
        return scores


def zero_shot(case: Case) -> dict[str, float]:
    return case.scores(np.zeros(case.stack.num_modules))


def best_single_module(case: Case) -> dict[str, float]:
    """The module with the lowest few-shot loss, alone."""
    losses = [r.loss for r in case.worker.evaluate(np.eye(case.stack.num_modules))]
    return case.scores(np.eye(case.stack.num_modules)[int(np.argmin(losses))])


def uniform_average(case: Case) -> dict[str, float]:
    n = case.stack.num_modules
    return case.scores(np.full(n, 1.0 / n))


def _demonstration(example: dict[str, str]) -> str:
    """An example as a demonstration: input and output joined by one space unless either brings its own."""
    joint = "" if example["input"][-1:].isspace() or example["output"][:1].isspace() else " "
    return f"{example['input']}{joint}{example['output']}\n\n"


def prompt_with_demonstrations(fewshot: Sequence[dict], test: Sequence[dict]) -> list[dict]:
    """``test`` with the ``fewshot`` examples, as demonstrations, before each input."""
    prefix = "".join(_demonstration(ex) for ex in fewshot)
    return [{**ex, "input": prefix + ex["input"]} for ex in test]


def in_context(case: Case) -> dict[str, float]:
    """The few-shot examples placed before each test input (no adapter)."""
    case.worker.cache.apply(np.zeros(case.stack.num_modules))
    prompted = prompt_with_demonstrations(case.fewshot, case.test)
    return case.score_model(case.worker.model, case.worker.tokenizer, prompted)


def lora_finetune(case: Case, rank: int | None = None) -> dict[str, float]:
    """A LoRA of the modules' rank and targets trained on the few-shot examples only."""
    from lorahub_ray.zoo.train import train_lora

    from actors.model import load_base

    model, tokenizer = load_base(case.base, torch.device("cpu"))
    targets = case.stack.peft_config["target_modules"]
    tuned, _ = train_lora(model, tokenizer, case.fewshot, targets, rank=rank or case.stack.rank,
                          steps=case.finetune_steps, batch_size=len(case.fewshot), lr=case.finetune_lr,
                          seed=case.seed, progress=False)
    return case.score_model(tuned.eval(), tokenizer, case.test)


@dataclass
class SearchRun:
    """A LoraHub search's trajectory: the best score after each evaluation and when each generation ended."""

    history: list
    generation_ends: list[tuple[float, int]]  # (seconds since start, evaluations so far)

    def best_scores(self) -> list[float]:
        return list(np.minimum.accumulate([e.score for e in self.history]))


def lorahub_search(case: Case, optimizer: str, budget: int, actors: int = 0, population: int | None = None,
                   l1: float = 0.05) -> SearchRun:
    """Run a search on ``actors`` Ray actors (0: in this process) and record its timeline."""
    spec = WorkerSpec(base=case.base, num_threads=1)
    with WorkerPool(spec, case.stack, case.fewshot, PoolConfig(num_actors=actors)) as pool:
        search = Search(case.stack.num_modules, budget, optimizer, population, seed=case.seed, l1=l1)
        ends: list[tuple[float, int]] = []
        start = time.perf_counter()
        minimize(search, pool.evaluate, lambda s: ends.append((time.perf_counter() - start, len(s.history))))
    return SearchRun(search.history, ends)


def measured_speedup(case: Case, actors: int = 2) -> float:
    """Evaluations per second of an ``actors``-actor pool over the sequential in-process rate, on this machine."""
    sequential = lorahub_search(case, "cma", 48, actors=0, population=8)
    parallel = lorahub_search(case, "cma", 48, actors=actors, population=8)
    return sequential.generation_ends[-1][0] / parallel.generation_ends[-1][0]


def equal_time_budget(budget: int, speedup: float, actors: int = 2) -> int:
    """Evaluations ``actors`` actors with a measured ``speedup`` over one sequential evaluator do in the time of
    ``budget`` sequential ones; the speed-up counts at most ``actors`` times (a short measurement can read more)."""
    return max(budget, int(budget * min(speedup, actors)))


def actors_budget(budget: int, actors: int, speedup: float) -> int:
    """Evaluations ``actors`` actors do in the time of ``budget`` sequential ones: the budget itself for one, the
    measured 2-actor ``speedup`` for two (`equal_time_budget`), and ``budget * actors`` for more (simulated by the
    evaluation count, as in optimizers.py: 2 cores cannot run more actors at full speed)."""
    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    return budget if actors == 1 else equal_time_budget(budget, speedup) if actors == 2 else budget * actors


EQUAL_TIME = re.compile(r"_(\d+)actors_equal_time$")


def search_method(method: str) -> tuple[str, int] | None:
    """A search method's (optimizer, actors): ``lorahub_<optimizer>`` (sequential, the reference's budget: 1 actor)
    and ``lorahub_<optimizer>_<k>actors_equal_time`` (the budget of k actors in the reference's wall-clock, see
    `actors_budget`) for every registered optimizer (``-`` written ``_``); None for a method that is not a search."""
    if not method.startswith("lorahub_"):
        return None
    stem, actors = method.removeprefix("lorahub_"), 1
    if match := EQUAL_TIME.search(stem):
        stem, actors = stem[: match.start()], int(match.group(1))
        if actors < 2:  # one actor is the sequential search, named without the suffix
            return None
    name = stem.replace("_", "-")
    return (name, actors) if name in OPTIMIZERS else None


def search_method_name(optimizer: str, actors: int = 1) -> str:
    """The method name `search_method` reads back."""
    return "lorahub_" + optimizer.replace("-", "_") + (f"_{actors}actors_equal_time" if actors > 1 else "")


def run_methods(case: Case, methods: Sequence[str], budget: int = 40, speedup: float = 1.0) -> dict:
    """Every requested method's exact match (``accuracy``) on ``case``, its option accuracy (``option_accuracy``,
    when the case has options), and each search's convergence and number of evaluations (``evaluations``).

    A search on k actors gets `actors_budget` evaluations (``speedup``: the measured 2-actor speed-up). A search's
    result does not depend on the number of actors (tested), so they run in this process with that budget.
    """
    scores: dict = {}
    options: dict = {}
    curves: dict = {}
    evaluations: dict = {}
    simple = {"zero_shot": zero_shot, "best_single": best_single_module, "uniform": uniform_average,
              "in_context": in_context, "lora_finetune": lora_finetune}
    for method in methods:
        if method in simple:
            measured = simple[method](case)
        elif search := search_method(method):
            optimizer, actors = search
            evaluations[method] = actors_budget(budget, actors, speedup)
            run = lorahub_search(case, optimizer, evaluations[method])
            measured = case.scores(np.array(min(run.history, key=lambda e: e.score).weights))
            curves[method] = run.best_scores()
        else:
            raise ValueError(f"unknown method {method!r}")
        scores[method] = measured["exact_match"]
        if "option_accuracy" in measured:
            options[method] = measured["option_accuracy"]
    return {"accuracy": scores, **({"option_accuracy": options} if case.options else {}), "convergence": curves,
            "evaluations": evaluations}


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N): run the I-th of N interleaved slices of the cases (``None``: all, (0, 1))."""
    if text is None:
        return 0, 1
    index, count = (int(part) for part in text.split("/"))
    if not 0 <= index < count:
        raise ValueError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return index, count


def shard_file(results: Path, name: str, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` saves its rows (``--shard``) for ``--combine`` to read."""
    return results / f"{name}.shard-{index}-of-{count}.json"


def save_shard(results: Path, name: str, shard: tuple[int, int], rows: list[dict], wall_seconds: float) -> None:
    """Save one shard's rows and wall time for ``--combine``."""
    results.mkdir(parents=True, exist_ok=True)
    shard_file(results, name, *shard).write_text(json.dumps({"wall_seconds": wall_seconds, "rows": rows}))


def load_shards(results: Path, name: str, count: int) -> tuple[list[dict], list[float]]:
    """Every shard's rows in case order and each shard's wall time (the files stay until `remove_shards`)."""
    parts = [shard_file(results, name, i, count) for i in range(count)]
    if missing := [str(p) for p in parts if not p.exists()]:
        raise SystemExit(f"missing shard results: {missing}")
    loaded = [json.loads(p.read_text()) for p in parts]
    rows = sorted((row for part in loaded for row in part["rows"]), key=lambda row: row["case"])
    return rows, [part["wall_seconds"] for part in loaded]


def remove_shards(results: Path, name: str, count: int) -> None:
    """Remove the shard files once the combined results are written (a failed combine can then be rerun)."""
    for i in range(count):
        shard_file(results, name, i, count).unlink(missing_ok=True)
