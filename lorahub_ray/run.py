"""One LoraHub search end to end: examples and modules in, composed PEFT adapter and ``result.json`` out.

Read this file first: it wires data -> pool -> search -> export.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from actors import LoraStack, WorkerSpec
from lorahub_ray.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError, InefficientSettingsWarning, WorkerError
from lorahub_ray.export import ADAPTER_DIR
from lorahub_ray.inputs import load_inputs
from lorahub_ray.modules import ModuleEntry, stack_modules
from lorahub_ray.output import MARKER, check_output, write_result
from lorahub_ray.pool import WorkerPool, ray_session
from lorahub_ray.prefilter import PrefilterReport, PrefilterSpec, select
from lorahub_ray.search import Evaluation, Outcome, Search, minimize

log = logging.getLogger(__name__)


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
        prefilter: what the pre-filter kept and cost, when one ran (``weights`` then holds the kept modules).
    """

    weights: dict[str, float]
    best_score: float
    best_loss: float | None
    evaluations: int
    history: list[Evaluation]
    config: RunConfig
    output: Path | None = None
    prefilter: PrefilterReport | None = None
    stack: LoraStack | None = field(default=None, repr=False)

    @property
    def adapter_dir(self) -> Path | None:
        return self.output / ADAPTER_DIR if self.output else None

    def to_dict(self) -> dict:
        return {
            **MARKER, "weights": self.weights, "best_score": self.best_score, "best_loss": self.best_loss,
            "evaluations": self.evaluations, "config": self.config.to_dict(),
            "prefilter": self.prefilter.to_dict() if self.prefilter else None,
            "history": [e.to_dict() for e in self.history],
        }


def run(config: RunConfig, pool: PoolConfig | None = None, output: str | Path | None = None, *,
        merge: bool = False, overwrite: bool = False, progress: bool = True,
        on_generation: Callable[[Search], None] | None = None,
        history: Sequence[Evaluation] = (),
        evaluate: Callable[[np.ndarray], Sequence[Outcome]] | None = None) -> SearchResult:
    """Search composition weights for ``config`` on a pool of evaluators and write the result to ``output``.

    Args:
        config: what to search (base, modules, examples, optimizer, budget, seed...).
        pool: where to evaluate (actors, resources, cluster); default `PoolConfig()`: one actor per GPU of a
            private Ray, or one CPU actor without GPUs.
        output: directory for ``adapter/`` and ``result.json`` (and ``merged/`` with ``merge``); while the
            search runs it holds ``checkpoint.json``, rewritten after every generation (see `resume`).
            ``None`` writes nothing.
        merge: also write the base model with the adapter merged in.
        overwrite: replace the result in an ``output`` that holds a previous lorahub-ray search (its
            ``result.json`` or ``checkpoint.json``); the old result stays until the new one is complete, and only
            the project's own files are removed. An ``output`` holding other files is refused.
        progress: show a progress bar.
        on_generation: called with the `Search` after each generation (after the checkpoint is written).
        history: evaluations of an interrupted search with this ``config``, to continue from.
        evaluate: scores a population ``(P, N)`` (one `Outcome` per row) in place of a pool of this search's own,
            e.g. a `lorahub_ray.shared_pool.SharedPool` that serves other searches too; ``pool`` is then unused
            and no pre-filter runs.

    Returns:
        The `SearchResult`; ``adapter/`` and ``result.json`` appear in ``output`` only once everything succeeded.

    Raises:
        LoraHubRayError: bad settings or inputs, or an ``output`` that is shared (the current directory, a parent
            of it, home or the root), someone else's or unwritable (all checked before anything is written), or a
            pool that cannot evaluate.
    """
    pool = pool or PoolConfig()
    if evaluate is not None and config.prefilter:
        raise ConfigError(f"`prefilter` {config.prefilter!r}: a search on a shared evaluator runs no pre-filter; "
                          "pass the modules to search")
    read = load_inputs(config.base, [config.modules], [config.examples])
    examples, entries = read.examples[0], read.entries
    final = check_output(output, overwrite, resuming=bool(history))
    inputs = fingerprint(config, entries) if final is not None else None
    prefilter = PrefilterSpec.parse(config.prefilter) if config.prefilter else None
    num_candidates = min(prefilter.k, len(entries)) if prefilter else len(entries)
    search = Search(num_candidates, config.budget, config.optimizer, config.population,
                    config.seed, config.l1, config.bound)
    search.replay(history)
    report = None
    if evaluate is not None:
        stack = stack_modules(entries, pool.module_dtype)
        best = _minimize(search, evaluate, config, final, inputs, progress, on_generation)
    else:
        spec = worker_spec(config, pool)
        with ray_session(pool) as pool:
            _warn_if_uneven(search.steady_population, pool.num_actors)
            report = _prefilter(prefilter, entries, examples, spec, pool, config.seed) if prefilter else None
            if report is not None:
                entries = [entries[i] for i in report.selected]
            stack = stack_modules(entries, pool.module_dtype)
            with WorkerPool(spec, stack, examples, pool) as workers:
                best = _minimize(search, workers.evaluate, config, final, inputs, progress, on_generation)
    result = SearchResult(
        weights=dict(zip(stack.names, best.weights)), best_score=best.score, best_loss=best.loss,
        evaluations=len(search.history), history=search.history, config=config, output=final,
        prefilter=report, stack=stack,
    )
    if final is not None:
        write_search_result(result, final, merge)
    return result


def _minimize(search: Search, evaluate: Callable[[np.ndarray], Sequence[Outcome]], config: RunConfig,
              final: Path | None, inputs: dict | None, progress: bool,
              on_generation: Callable[[Search], None] | None) -> Evaluation:
    """`minimize` with a progress bar, a checkpoint in ``final`` after every generation, and a stop once every
    candidate so far has failed."""
    with tqdm(total=config.budget, initial=len(search.history), desc="evaluations", unit="eval",
              disable=not progress) as bar:
        def after_generation(s: Search) -> None:
            if all(e.loss is None for e in s.history):
                raise WorkerError(f"every candidate so far failed; the first error:\n{s.history[0].error}")
            if final is not None:
                save_checkpoint(final, config, s.history, inputs)
            bar.update(len(s.history) - bar.n)
            bar.set_postfix(best=f"{s.best.score:.4f}")
            if on_generation is not None:
                on_generation(s)

        return minimize(search, evaluate, after_generation)


def _warn_if_uneven(population: int, actors: int) -> None:
    if population > 1 and actors > 1 and population % actors:
        warnings.warn(f"a population of {population} does not divide over {actors} actors: "
                      "some actors idle at the end of each generation", InefficientSettingsWarning, stacklevel=3)


def worker_spec(config: RunConfig, pool: PoolConfig) -> WorkerSpec:
    """What every evaluator of this search loads and how it scores."""
    return WorkerSpec(base=config.base, mode=config.mode, apply=pool.apply, objective=config.objective,
                      reference_batch_size=config.reference_batch_size, example_batch_size=pool.example_batch_size,
                      dtype=pool.dtype, device=pool.device, num_threads=pool.threads_per_actor,
                      candidates_per_pass=pool.candidates_per_pass)


def sweep_block(k: int) -> int:
    """Modules scored per block by the ``loss`` sweep: K/2, so that a block and the copy Ray serialises of it stay
    within the size of the K modules finally kept."""
    return max(1, k // 2)


def _prefilter(prefilter: PrefilterSpec, entries: list[ModuleEntry], examples: list[dict[str, str]],
               spec: WorkerSpec, pool: PoolConfig, seed: int) -> PrefilterReport:
    """Choose the search's candidates; a loss sweep scores K modules at a time on the actor pool.

    Modules are scored alone (one-hot weights), which is the same update in ``ab`` and ``delta`` mode, so
    the sweep always composes in ``ab`` mode. One block of `sweep_block` modules is held at a time.
    """
    def module_losses(indices: list[int]) -> list[float]:
        size = sweep_block(prefilter.k)
        blocks = [indices[i : i + size] for i in range(0, len(indices), size)]
        losses: list[float] = []
        first = stack_modules([entries[i] for i in blocks[0]], pool.module_dtype)
        with WorkerPool(replace(spec, mode="ab"), first, examples, pool) as scorer:
            for number, block in enumerate(blocks):
                if number:
                    scorer.set_stack(stack_modules([entries[i] for i in block], pool.module_dtype))
                losses += [outcome.loss for outcome in scorer.evaluate(np.eye(len(block)))]
        return losses

    report = select(prefilter, [e.name for e in entries], [e.directory for e in entries],
                    [ex["input"] for ex in examples], module_losses, seed)
    log.info("pre-filter %s:%d kept %d of %d modules after %d evaluations in %.1fs", prefilter.name, prefilter.k,
             len(report.selected), len(entries), report.evaluations, report.seconds)
    return report


def resume(output: str | Path, pool: PoolConfig | None = None, *, merge: bool = False, progress: bool = True,
           on_generation: Callable[[Search], None] | None = None) -> SearchResult:
    """Continue the interrupted search whose checkpoint is in ``output``, to the result it would have had.

    The search keeps the settings in its checkpoint; its inputs must be those it started with.

    Args:
        output: the ``output`` directory of the interrupted `run`.
        pool: where to evaluate now (any actor count; the same per-actor resources give the same result).
        merge, progress, on_generation: as for `run`.

    Raises:
        InputError: no checkpoint, one of another format, or an input changed since it was written: the
            examples, a module file (``adapter_config.json`` or the weights), or where a path or hub id resolves.
    """
    config, history = load_checkpoint(Path(output))
    return run(config, pool, output, history=history, merge=merge, progress=progress, on_generation=on_generation)


def write_search_result(result: SearchResult, final: Path, merge: bool) -> None:
    """Write ``result`` into ``final`` (`lorahub_ray.output.write_result`)."""
    write_result(final, result.stack, np.array(list(result.weights.values())), result.config.mode, result.config.base,
                 result.to_dict(), merge)
