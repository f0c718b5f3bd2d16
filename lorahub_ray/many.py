"""Many searches on one actor pool: other tasks' examples, seeds, module lists or budgets, actors started once.

Every actor holds every search's examples (`actors.ExampleSets`) and the union of their modules. Each round asks
every unfinished search for its next generation and evaluates them all in one call: a pass may mix searches, each
row scored on its own search's examples with its own weights (zero on the modules it does not search). A search is
told only its own scores, so it takes the path it takes alone with the same seed and settings: the same losses when
the searches share one module list; with different lists, a loss can differ from the lone search's by float
rounding (the union's zero weights change the summation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lorahub_ray.checkpoint import fingerprint, save_checkpoint
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError, WorkerError
from lorahub_ray.inputs import load_inputs
from lorahub_ray.output import check_output
from lorahub_ray.pool import WorkerPool, ray_session
from lorahub_ray.run import SearchResult, worker_spec, write_search_result
from lorahub_ray.search import Search

SHARED = ("base", "mode", "objective", "reference_batch_size")  # what every actor loads or scores with


def run_many(configs: Sequence[RunConfig], pool: PoolConfig | None = None,
             outputs: Sequence[str | Path | None] | None = None, *, overwrite: bool = False,
             progress: bool = True) -> list[SearchResult]:
    """Run every search of ``configs`` at once on one pool of actors and write each result to its output.

    Args:
        configs: the searches; they share `SHARED` settings (one base model per actor) and may differ in
            everything else. Pre-filters are not supported here.
        pool: where to evaluate (default `PoolConfig()`: one actor per GPU, or one CPU actor).
        outputs: one directory per search (as `lorahub_ray.run.run`'s ``output``; ``None`` entries write nothing),
            or ``None`` for none. Each holds ``checkpoint.json`` while its search runs: `lorahub_ray.run.resume`
            continues it alone.
        overwrite, progress: as for `lorahub_ray.run.run`.

    Returns:
        One `SearchResult` per config, in order.

    Raises:
        LoraHubRayError: settings that differ where they must be shared, bad inputs or outputs (all checked before
            anything is written), or a pool that cannot evaluate.
    """
    pool = pool or PoolConfig()
    outputs = list(outputs) if outputs is not None else [None] * len(configs)
    _check_many(configs, outputs)
    read = load_inputs(configs[0].base, [c.modules for c in configs], [c.examples for c in configs])
    finals = [check_output(output, overwrite) for output in outputs]
    columns = [read.columns(config.modules) for config in configs]  # union index per weight
    inputs = [fingerprint(c, [read.entries[i] for i in cols]) if f is not None else None
              for c, cols, f in zip(configs, columns, finals)]
    searches = [Search(len(c.modules), c.budget, c.optimizer, c.population, c.seed, c.l1, c.bound) for c in configs]
    stack = read.stack(pool.module_dtype)
    sets = read.example_sets()
    with ray_session(pool), WorkerPool(worker_spec(configs[0], pool), stack, sets, pool) as workers, \
            tqdm(total=sum(c.budget for c in configs), desc="evaluations", unit="eval", disable=not progress) as bar:
        while active := [i for i, search in enumerate(searches) if not search.done]:
            asked = {i: searches[i].ask() for i in active}  # (P_i, N_i) each
            rows = np.zeros((sum(len(p) for p in asked.values()), stack.num_modules))  # (sum P_i, N_union)
            owners = [i for i in active for _ in asked[i]]
            start = 0
            for i in active:
                rows[start : start + len(asked[i]), columns[i]] = asked[i]
                start += len(asked[i])
            outcomes = workers.evaluate(rows, owners)
            for i in active:
                searches[i].tell([o for o, owner in zip(outcomes, owners) if owner == i])
                _after_generation(searches[i], i, configs[i], finals[i], inputs[i])
            bar.update(sum(len(s.history) for s in searches) - bar.n)
    results = []
    for config, search, final, indices in zip(configs, searches, finals, columns):
        best = search.best
        result = SearchResult(weights=dict(zip(config.modules, best.weights)), best_score=best.score,
                              best_loss=best.loss, evaluations=len(search.history), history=search.history,
                              config=config, output=final, stack=stack.select(indices))
        if final is not None:
            write_search_result(result, final, merge=False)
        results.append(result)
    return results


def _check_many(configs: Sequence[RunConfig], outputs: list) -> None:
    if not configs:
        raise ConfigError("run_many needs at least one RunConfig, got none")
    if len(outputs) != len(configs):
        raise ConfigError(f"`outputs` must hold one directory (or None) per config: {len(configs)} configs, "
                          f"{len(outputs)} outputs")
    given = [Path(o).resolve() for o in outputs if o is not None]
    if len(set(given)) != len(given):
        raise ConfigError("`outputs` must be distinct directories: two searches cannot write to one")
    check_shareable(configs, "configs")


def check_shareable(configs: Sequence[RunConfig], what: str) -> None:
    """Refuse searches that cannot share one pool: `SHARED` settings that differ, or a pre-filter.

    Raises:
        ConfigError: naming the search as ``what[index]`` and the setting.
    """
    for index, config in enumerate(configs):
        for name in SHARED:
            if getattr(config, name) != getattr(configs[0], name):
                raise ConfigError(f"{what}[{index}].{name} is {getattr(config, name)!r} but {what}[0].{name} is "
                                  f"{getattr(configs[0], name)!r}: searches on one pool share {', '.join(SHARED)}")
        if config.prefilter is not None:
            raise ConfigError(f"{what}[{index}].prefilter is {config.prefilter!r}: searches on one pool run no "
                              "pre-filter; pass the modules to search")


def _after_generation(search: Search, index: int, config: RunConfig, final: Path | None, inputs: dict | None) -> None:
    if all(e.loss is None for e in search.history):
        raise WorkerError(f"every candidate of search {index} failed so far; the first error:\n"
                          f"{search.history[0].error}")
    if final is not None:
        save_checkpoint(final, config, search.history, inputs)
