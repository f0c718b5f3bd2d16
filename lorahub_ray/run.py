"""One LoraHub search end to end: examples and modules in, composed PEFT adapter and ``result.json`` out.

Read this file first: it wires data -> pool -> search -> export.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from actors import LoraStack, WorkerSpec
from lorahub_ray.base import check_base
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError, InefficientSettingsWarning, WorkerError
from lorahub_ray.export import ADAPTER_DIR, MERGED_DIR, RESULT_FILE, write_adapter, write_json, write_merged
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from lorahub_ray.search import Evaluation, Search, minimize


@dataclass
class SearchResult:
    """The outcome of `run`.

    Args:
        weights: module (as given) -> weight of the best candidate.
        best_score: its score (loss + L1 penalty).
        best_loss: its loss.
        evaluations: how many candidates were evaluated (the budget).
        history: every evaluation, in order.
        config: the settings that produced it.
        output: the output directory, when one was written.
    """

    weights: dict[str, float]
    best_score: float
    best_loss: float | None
    evaluations: int
    history: list[Evaluation]
    config: RunConfig
    output: Path | None = None
    stack: LoraStack | None = field(default=None, repr=False)

    @property
    def adapter_dir(self) -> Path | None:
        return self.output / ADAPTER_DIR if self.output else None

    def to_dict(self) -> dict:
        return {
            "weights": self.weights, "best_score": self.best_score, "best_loss": self.best_loss,
            "evaluations": self.evaluations, "config": self.config.to_dict(),
            "history": [e.to_dict() for e in self.history],
        }


def run(config: RunConfig, pool: PoolConfig | None = None, output: str | Path | None = None, *,
        merge: bool = False, overwrite: bool = False, progress: bool = True,
        on_generation: Callable[[Search], None] | None = None) -> SearchResult:
    """Search composition weights for ``config`` on a pool of evaluators and write the result to ``output``.

    Args:
        config: what to search (base, modules, examples, optimizer, budget, seed...).
        pool: where to evaluate (actors, resources, cluster); default one local actor.
        output: directory for ``adapter/`` and ``result.json`` (and ``merged/`` with ``merge``); ``None`` writes nothing.
        merge: also write the base model with the adapter merged in.
        overwrite: replace an ``output`` that already holds files.
        progress: show a progress bar.
        on_generation: called with the `Search` after each generation.

    Returns:
        The `SearchResult`; the files appear in ``output`` only once everything succeeded.

    Raises:
        LoraHubRayError: bad settings or inputs (nothing is written), or a pool that cannot evaluate.
    """
    pool = pool or PoolConfig()
    examples = load_examples(config.examples)
    stack = load_stack(config.modules)
    check_base(stack, config.base)
    final, staging = _plan_output(output, overwrite)
    search = Search(stack.num_modules, config.budget, config.optimizer, config.population,
                    config.seed, config.l1, config.bound)
    if search.population > 1 and pool.num_actors > 1 and search.population % pool.num_actors:
        warnings.warn(f"a population of {search.population} does not divide over {pool.num_actors} actors: "
                      "some actors idle at the end of each generation", InefficientSettingsWarning, stacklevel=2)
    spec = WorkerSpec(base=config.base, mode=config.mode, apply=pool.apply, objective=config.objective,
                      reference_batch_size=config.reference_batch_size,
                      example_batch_size=pool.example_batch_size, dtype=pool.dtype, device=pool.device,
                      num_threads=pool.threads_per_actor, candidates_per_pass=pool.candidates_per_pass)
    with WorkerPool(spec, stack, examples, pool) as workers, \
            tqdm(total=config.budget, desc="evaluations", unit="eval", disable=not progress) as bar:
        def after_generation(s: Search) -> None:
            if all(e.loss is None for e in s.history):
                raise WorkerError(f"every candidate so far failed; the first error:\n{s.history[0].error}")
            bar.update(len(s.history) - bar.n)
            bar.set_postfix(best=f"{s.best.score:.4f}")
            if on_generation is not None:
                on_generation(s)

        best = minimize(search, workers.evaluate, after_generation)
    result = SearchResult(
        weights=dict(zip(stack.names, best.weights)), best_score=best.score, best_loss=best.loss,
        evaluations=len(search.history), history=search.history, config=config, output=final, stack=stack,
    )
    if staging is not None:
        _write_output(result, staging, final, merge)
    return result


def _plan_output(output: str | Path | None, overwrite: bool) -> tuple[Path | None, Path | None]:
    """Check the output directory before any work; results are written to a sibling staging dir first."""
    if output is None:
        return None, None
    final = Path(output).resolve()
    if final.exists() and not final.is_dir():
        raise ConfigError(f"output {str(final)!r} is a file; expected a directory (new or empty)")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise ConfigError(f"output {str(final)!r} already holds files; choose a new directory or pass overwrite")
    if not final.parent.is_dir():
        raise ConfigError(f"output's parent {str(final.parent)!r} does not exist")
    return final, final.parent / f".{final.name}.partial-{os.getpid()}"


def _write_output(result: SearchResult, staging: Path, final: Path, merge: bool) -> None:
    """Write everything into ``staging``, then swap it into place: never a half-written ``final``."""
    import numpy as np

    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        adapter = write_adapter(staging / ADAPTER_DIR, result.stack, np.array(list(result.weights.values())),
                                result.config.mode, result.config.base)
        write_json(staging / RESULT_FILE, result.to_dict())
        if merge:
            write_merged(staging / MERGED_DIR, result.config.base, adapter)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
