"""`weight_search`: a Tune searcher proposes the weights, one candidate per trial, scored on a shared `PoolServer`."""

from __future__ import annotations

import asyncio
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actors import Outcome
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError, WorkerError
from lorahub_ray.export import ADAPTER_DIR
from lorahub_ray.inputs import load_inputs
from lorahub_ray.output import MARKER, check_output, write_result
from lorahub_ray.pool import WorkerPool
from lorahub_ray.run import worker_spec
from lorahub_ray.search import Evaluation, failure_penalty, l1_score
from lorahub_ray.tune.trial import TRIAL_RESOURCES

WEIGHT_METRIC = "score"  # what the searcher minimises: loss + l1 * mean |w|, or the failure penalty


class PoolServer:
    """Shares a `WorkerPool`'s evaluator actors between concurrent Tune trials (run as an async Ray actor).

    Each request waits for a free actor, which evaluates that one candidate; so any number of trials can call
    `evaluate` at once and every actor scores one candidate at a time. A candidate whose loss is not finite, or
    whose evaluation raised, is scored like in `Search`: `failure_penalty` of the successful scores so far.
    An actor that dies, or does not answer within ``timeout_s``, is killed and replaced (``start_actor``) and the
    candidate re-run; past ``max_restarts`` replacements the request fails with `WorkerError`.

    Args:
        actors: the pool's actor handles (`WorkerPool.actors`); the server owns them while it runs.
        l1: weight of the ``mean |w|`` penalty.
        start_actor: starts a replacement actor (`WorkerPool.actor_starter`); ``None``: none is replaced.
        timeout_s: seconds one evaluation may take before its actor is treated as hung (``None``: no limit).
        max_restarts: replacements allowed in all.
    """

    def __init__(self, actors: Sequence, l1: float, start_actor: Callable[[], object] | None = None,
                 timeout_s: float | None = None, max_restarts: int = 0) -> None:
        self._actors = list(actors)
        self._idle: asyncio.Queue[int] = asyncio.Queue()  # indices of the free actors
        for slot in range(len(self._actors)):
            self._idle.put_nowait(slot)
        self._l1 = l1
        self._start_actor = start_actor
        self._timeout_s = timeout_s
        self._max_restarts = max_restarts
        self._restarts = 0  # actors replaced so far
        self._scores: list[float] = []  # the successful candidates' scores so far
        self._done = 0  # candidates finished so far: each one's `generation` is its place in this order

    async def evaluate(self, weights: Sequence[float]) -> Evaluation:
        """Score one candidate ``(N,)`` on the next free actor."""
        result, slot = await self._score(np.array([weights], dtype=np.float64))
        ok = result.error is None and math.isfinite(result.loss)
        score = l1_score(result.loss, weights, self._l1) if ok else failure_penalty(self._scores)
        if ok:
            self._scores.append(score)
        error = result.error or (None if ok else f"loss {result.loss}")
        evaluation = Evaluation(weights=[float(w) for w in weights], score=score, loss=result.loss if ok else None,
                                actor=slot, seconds=result.seconds, generation=self._done, error=error)
        self._done += 1
        return evaluation

    async def restarts(self) -> int:
        """How many actors died or hung and were replaced so far."""
        return self._restarts

    async def _score(self, population: np.ndarray) -> tuple[Outcome, int]:
        """The result of the one candidate ``(1, N)`` and the actor slot that scored it."""
        import ray

        while True:
            slot = await self._idle.get()
            try:
                [result] = await asyncio.wait_for(self._actors[slot].evaluate.remote(population), self._timeout_s)
                return result, slot
            except ray.exceptions.RayTaskError:  # the call itself raised: the candidate fails, the actor lives on
                return Outcome(math.nan, error=traceback.format_exc(limit=3)), slot
            except (ray.exceptions.RayActorError, asyncio.TimeoutError) as err:
                await self._replace(slot, err)  # then the candidate goes to the next free actor
            finally:
                self._idle.put_nowait(slot)

    async def _replace(self, slot: int, err: Exception) -> None:
        """Kill the actor in ``slot`` and start a ready replacement there, or raise `WorkerError` past the limit."""
        import ray

        why = (f"no answer within {self._timeout_s} s; treated as hung" if isinstance(err, asyncio.TimeoutError)
               else str(err).strip().splitlines()[0])
        ray.kill(self._actors[slot], no_restart=True)
        self._restarts += 1
        if self._start_actor is None or self._restarts > self._max_restarts:
            raise WorkerError(f"evaluator actors died or hung {self._restarts} times (limit `max_restarts` = "
                              f"{self._max_restarts if self._start_actor else 0}); last: {why}")
        self._actors[slot] = self._start_actor()
        await self._actors[slot].info.remote()


def weight_keys(num_modules: int) -> list[str]:
    """The trial config keys of the N weights: ``w0`` .. ``w{N-1}``."""
    return [f"w{i}" for i in range(num_modules)]


def weight_trial(config: dict, server, num_modules: int) -> None:
    """Tune function trainable: one candidate, ``config["w0"]`` .. ``w{N-1}``, scored on the shared `PoolServer`.

    Reports once: ``score`` (what the searcher minimises), ``loss`` (NaN when the candidate failed), ``actor``
    (which of the pool's actors ran it), ``order`` (its place among the finished candidates), ``seconds`` (the
    actor's) and ``error`` (empty when none).
    """
    import ray
    from ray import tune

    weights = [float(config[key]) for key in weight_keys(num_modules)]
    evaluation: Evaluation = ray.get(server.evaluate.remote(weights))
    tune.report({WEIGHT_METRIC: evaluation.score, "loss": math.nan if evaluation.loss is None else evaluation.loss,
                 "actor": evaluation.actor, "order": evaluation.generation, "seconds": evaluation.seconds,
                 "error": evaluation.error or ""})


def default_weight_searcher(num_modules: int, budget: int, num_workers: int, bound: float, seed: int):
    """`NevergradSearch` over NGOpt, told the concurrency (``num_workers``) and seeded; centred on w = 0.

    With ``num_workers=1`` (the reference's setting) NGOpt runs Cobyla, whose second ``ask`` waits for the first
    ``tell``: Tune asks for a second concurrent trial and hangs. With ``num_workers`` = the concurrent trials NGOpt
    picks an optimizer that proposes that many candidates at once. The searcher brings its own space (a seeded
    ``ng.p.Array`` in ``[-bound, bound]^N``), so the Tuner gets no ``param_space``.
    """
    import nevergrad as ng
    from ray.tune.search.nevergrad import NevergradSearch

    space = ng.p.Array(init=np.zeros(num_modules), lower=-bound, upper=bound)
    space.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.NGOpt(parametrization=space, budget=budget, num_workers=num_workers)
    return NevergradSearch(optimizer=optimizer, space=weight_keys(num_modules), metric=WEIGHT_METRIC, mode="min")


@dataclass
class WeightSearchResult:
    """The outcome of `weight_search`.

    Args:
        weights: module (as given) -> weight of the best trial (lowest score; the first finished on ties).
        best_score: its score (loss + L1 penalty).
        best_loss: its loss.
        history: one `Evaluation` per trial, in the order they finished (``generation`` is that place).
        experiment: the Tune experiment directory.
        output: the directory holding ``adapter/`` and ``result.json``, when one was written.
    """

    weights: dict[str, float]
    best_score: float
    best_loss: float | None
    history: list[Evaluation]
    experiment: Path
    output: Path | None = None

    @property
    def adapter_dir(self) -> Path | None:
        return self.output / ADAPTER_DIR if self.output else None

    def to_dict(self) -> dict:
        return {**MARKER, "weights": self.weights, "best_score": self.best_score, "best_loss": self.best_loss,
                "evaluations": len(self.history), "experiment": str(self.experiment),
                "history": [e.to_dict() for e in self.history]}


def weight_search(base: str, modules: Sequence[str], examples: str | Path | list[dict[str, str]], *,
                  search_alg=None, budget: int = 40, num_actors: int = 2, cpus_per_actor: float = 1.0,
                  l1: float = 0.05, bound: float = 1.5, mode: str = "ab", seed: int = 0,
                  output: str | Path | None = None, storage_path: str | Path | None = None, name: str | None = None,
                  verbose: int = 0, pool: PoolConfig | None = None) -> WeightSearchResult:
    """Let a Tune search algorithm propose the composition weights: ``budget`` trials of one candidate each.

    Every trial (`weight_trial`) is scored on one shared pool of ``num_actors`` evaluator actors (`PoolServer`);
    ``num_actors`` trials run at once.

    Args:
        base, modules, examples, budget, l1, bound, mode: as in `RunConfig`.
        search_alg: a Tune `Searcher` built without a search space (it gets ``{"w0": tune.uniform(-bound, bound),
            ...}``) and without ``metric``/``mode`` (``"score"``, ``"min"``); ``None``: `default_weight_searcher`.
            It must propose ``num_actors`` candidates before it hears back: give NGOpt ``num_workers=num_actors``.
        num_actors, cpus_per_actor: the evaluator pool, and the trials at once.
        pool: every setting of the evaluator pool (devices, dtype, restarts, a cluster's address...); when given, it
            replaces ``num_actors`` and ``cpus_per_actor`` (its ``num_actors`` must be >= 1).
        seed: seeds the default searcher (with concurrent trials its proposals also depend on which finishes first).
        output: a new or empty directory for the best candidate's ``adapter/`` and ``result.json``.
        storage_path, name: Tune's storage directory (default ``~/ray_results``) and experiment name.
        verbose: Tune's console output (0 silent).

    Raises:
        ConfigError: bad settings; InputError: bad inputs (both before anything starts).
        WorkerError: a trial failed (an actor died); a failing candidate only gets the failure penalty.
    """
    import ray
    from ray import tune

    config = RunConfig(base=base, modules=list(modules), examples=examples, budget=budget, mode=mode, l1=l1,
                       bound=bound, seed=seed)
    pool = pool or PoolConfig(num_actors=num_actors, cpus_per_actor=cpus_per_actor)
    num_actors = pool.num_actors
    if not isinstance(num_actors, int) or num_actors < 1:
        raise ConfigError(f"`num_actors` must be an integer >= 1 (the trials share the actors), got {num_actors!r}")
    target = check_output(output)
    read = load_inputs(config.base, [config.modules], [config.examples])
    stack = read.stack()
    keys = weight_keys(len(read.entries))
    searcher = search_alg or default_weight_searcher(len(keys), budget, num_actors, bound, seed)
    space = {key: tune.uniform(-bound, bound) for key in keys} if search_alg is not None else {}
    with WorkerPool(worker_spec(config, pool), stack, read.examples[0], pool) as workers:  # stops the Ray it started
        server = ray.remote(num_cpus=0)(PoolServer).remote(workers.actors, l1, workers.actor_starter(),
                                                           pool.generation_timeout_s, pool.max_restarts)
        try:  # the server (and the replacement actors it owns) never outlives the search
            # The evaluator actors hold the CPUs; a trial only waits on the server, so it reserves no CPU (and 1 MiB
            # of Ray's logical memory, since Tune refuses a request of nothing).
            trainable = tune.with_resources(tune.with_parameters(weight_trial, server=server,
                                                                 num_modules=len(keys)), TRIAL_RESOURCES)
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(metric=WEIGHT_METRIC, mode="min", search_alg=searcher,
                                            num_samples=budget, max_concurrent_trials=num_actors),
                run_config=tune.RunConfig(name=name, verbose=verbose,
                                          storage_path=str(Path(storage_path).expanduser().resolve())
                                          if storage_path else None))
            results = tuner.fit()
        finally:
            ray.kill(server)
    failed = [result for result in results if result.error]
    if failed:
        raise WorkerError(f"{len(failed)} trial(s) failed; the first, in {failed[0].path}: "
                          f"{str(failed[0].error).strip().splitlines()[-1]}")
    history = sorted((_trial_evaluation(result, keys) for result in results), key=lambda e: e.generation)
    best = min(history, key=lambda e: e.score)
    result = WeightSearchResult(weights=dict(zip(stack.names, best.weights)), best_score=best.score,
                                best_loss=best.loss, history=history, experiment=Path(results.experiment_path),
                                output=target)
    if target is not None:
        write_result(target, stack, np.array(best.weights), mode, base, result.to_dict())
    return result


def _trial_evaluation(result, keys: list[str]) -> Evaluation:
    """A finished `weight_trial`'s candidate and report as an `Evaluation`."""
    metrics = result.metrics
    return Evaluation(weights=[float(result.config[key]) for key in keys], score=metrics[WEIGHT_METRIC],
                      loss=None if math.isnan(metrics["loss"]) else metrics["loss"], actor=metrics["actor"],
                      seconds=metrics["seconds"], generation=metrics["order"], error=metrics["error"] or None)
