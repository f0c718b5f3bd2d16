"""Ray Tune integration: one LoraHub search per Tune trial, checkpointed every generation; task x grid sweeps.

`search_trial` is a Tune function trainable that runs `lorahub_ray.run.run` from its ``config`` dict (keys:
`TRIAL_KEYS`). `with_pool_resources` gives each trial a placement group that also holds its evaluator actors.
`sweep` runs tasks x a grid of settings and exports each task's best adapter. `weight_search` lets a Tune search
algorithm propose the composition weights themselves: one trial = one candidate, evaluated by a `PoolServer` that
shares one `WorkerPool`'s actors between the concurrent trials. Ray Tune is imported inside the functions only, so
the CLI starts without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from actors import CandidateLoss, ExampleSets
from lorahub_ray.base import check_base
from lorahub_ray.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError, InputError, WorkerError
from lorahub_ray.export import ADAPTER_DIR, RESULT_FILE, write_adapter, write_json
from lorahub_ray.modules import check_compatible, index_module, stack_modules
from lorahub_ray.output import MARKER, check_output, is_own, staged_result
from lorahub_ray.many import check_shareable
from lorahub_ray.pool import WorkerPool, ray_session
from lorahub_ray.run import run, worker_spec
from lorahub_ray.shared_pool import SharedPool
from lorahub_ray.search import Evaluation, Outcome, Search, failure_penalty, l1_score

RUN_KEYS = tuple(f.name for f in fields(RunConfig))
SAMPLING_KEYS = ("module_pool", "num_modules", "module_seed")  # sample `num_modules` of `module_pool`, seeded
POOL_KEYS = ("actors", "cpus_per_actor", "gpus_per_actor", "trial_cpus")
TRIAL_KEYS = (*RUN_KEYS, *SAMPLING_KEYS, *POOL_KEYS, "task")  # "task": a label, set by `sweep`
PATH_KEYS = ("base", "modules", "module_pool")
SWEEP_KEYS = ("tasks", "param_space", "storage_path", "name", "max_concurrent_trials", "max_failures", "shared_pool")
SEARCH_DIR = "search"  # the trial's `run` output, inside its trial directory
BEST_DIR = "best"  # <experiment>/best/<task>/: the task's best adapter and result.json
DEFAULT_STORAGE = "~/ray_results"  # Tune's default storage path

EXAMPLE_WORDS = ("abc", "hello", "ray", "lora", "tiny")
EXAMPLE_TASKS: dict[str, Callable[[str], str]] = {
    "reverse": lambda word: word[::-1], "upper": str.upper, "double": lambda word: word + word,
}
EXAMPLE_POOL = 24  # toy modules the example samples from


def trial_settings(config: Mapping) -> tuple[RunConfig, PoolConfig]:
    """The `RunConfig` and `PoolConfig` of a trial ``config``; `module_pool` is sampled with `module_seed` (default 0).

    Raises:
        ConfigError: an unknown key, a missing one, or a bad value (the message names it).
    """
    _check_keys(config, TRIAL_KEYS, "trial settings")
    missing = [f"`{key}`" for key in ("base", "examples") if key not in config]
    if missing:
        raise ConfigError(f"a trial needs {' and '.join(missing)}")
    settings = {key: config[key] for key in RUN_KEYS if key in config}
    run_config = RunConfig(**{**settings, "modules": _modules(config)})
    pool = PoolConfig(num_actors=config.get("actors", 1), cpus_per_actor=config.get("cpus_per_actor", 1.0),
                      gpus_per_actor=config.get("gpus_per_actor", 0.0))
    return run_config, pool


def _modules(config: Mapping) -> list[str]:
    if "module_pool" not in config:
        for key in ("num_modules", "module_seed"):
            if key in config:
                raise ConfigError(f"`{key}` samples from `module_pool`, which is not given")
        if "modules" not in config:
            raise ConfigError("a trial needs `modules` or `module_pool`")
        return config["modules"]
    if "modules" in config:
        raise ConfigError("give `modules` or `module_pool` (sampled), not both")
    pool = [str(module) for module in config["module_pool"]]
    count = config.get("num_modules", len(pool))
    if not isinstance(count, int) or not 1 <= count <= len(pool):
        raise ConfigError(f"`num_modules` must be an integer in 1..{len(pool)} (the size of `module_pool`), "
                          f"got {count!r}")
    return sorted(random.Random(config.get("module_seed", 0)).sample(pool, count))


def trial_resources(config: Mapping):
    """The trial's `tune.PlacementGroupFactory`: its own process, then one bundle per evaluator actor.

    The trial's process only waits on its actors, so it reserves ``trial_cpus`` (default 0: none). With
    ``actors`` 0 the trial evaluates in its own process, which then reserves one actor's resources.
    """
    from ray import tune

    _, pool = trial_settings(config)
    trial_cpus = config.get("trial_cpus", 0.0)
    if trial_cpus < 0:
        raise ConfigError(f"`trial_cpus` must be >= 0, got {trial_cpus!r}")
    actor = {"CPU": pool.cpus_per_actor, "GPU": pool.gpus_per_actor}
    if pool.num_actors == 0:
        return tune.PlacementGroupFactory([actor])
    return tune.PlacementGroupFactory([{"CPU": trial_cpus}, *[actor] * pool.num_actors])


def with_pool_resources(trainable: Callable[[dict], None] | None = None):
    """``trainable`` (default `search_trial`) wrapped by `tune.with_resources` with `trial_resources`.

    Tune starts a trial only when its whole placement group fits, and the pool starts its actors inside that
    group, so trials never over-subscribe the cluster.
    """
    from ray import tune

    return tune.with_resources(trainable or search_trial, trial_resources)


def search_trial(config: dict, shared: SharedTrials | None = None) -> None:
    """Tune function trainable: one LoraHub search from ``config`` (`TRIAL_KEYS`), written to ``<trial dir>/search``.

    Reports ``best_score``, ``best_loss``, ``evaluations``, ``generation`` and ``generation_seconds`` (wall seconds
    since the previous report; the first includes starting the pool) after every generation, each with a
    checkpoint (``checkpoint.json``: settings and history). A trial restored from one continues to the result of
    an uninterrupted trial. The last report also gives ``adapter``, the composed PEFT adapter's path.
    With ``shared`` the trial evaluates on the sweep's `SharedPool` instead of starting actors of its own.
    """
    from ray import tune

    run_config, pool = trial_settings(config)
    inputs = fingerprint(run_config)  # once per trial, not per report
    lap = _stopwatch()

    def report(search: Search) -> None:
        if not search.done:  # the last generation is reported with the adapter, once that is written
            _report(run_config, inputs, search.history, lap())

    evaluate = shared.evaluator(run_config.modules, config["task"]) if shared is not None else None
    result = run(run_config, pool, Path(tune.get_context().get_trial_dir()) / SEARCH_DIR, overwrite=True,
                 progress=False, on_generation=report, history=_restored_history(run_config), evaluate=evaluate)
    _report(run_config, inputs, result.history, lap(), adapter=str(result.adapter_dir))


@dataclass(frozen=True)
class SharedTrials:
    """What a sweep's trials need to evaluate on one `SharedPool`: its handle, the union of the trials' modules
    (the pool's columns) and the task names (the pool's example sets, in order)."""

    server: object
    modules: tuple[str, ...]
    tasks: tuple[str, ...]

    def evaluator(self, modules: Sequence[str], task: str) -> Callable[[np.ndarray], list[Outcome]]:
        """Scores a trial's population ``(P, len(modules))`` on ``task``'s examples (zero weight elsewhere)."""
        import ray

        columns, example_set = [self.modules.index(m) for m in modules], self.tasks.index(task)

        def evaluate(population: np.ndarray) -> list[Outcome]:
            rows = np.zeros((len(population), len(self.modules)))
            rows[:, columns] = population
            return ray.get(self.server.evaluate.remote(rows, [example_set] * len(rows)))

        return evaluate


def _stopwatch() -> Callable[[], float]:
    """A function returning the seconds since it was last called (or created)."""
    last = time.perf_counter()

    def lap() -> float:
        nonlocal last
        now, previous = time.perf_counter(), last
        last = now
        return now - previous

    return lap


def _restored_history(config: RunConfig) -> list[Evaluation]:
    """The history in the trial's checkpoint (none for a fresh trial)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as directory:
        saved, history = load_checkpoint(Path(directory))
    if saved != config:
        raise InputError("the trial's checkpoint comes from a search with other settings: "
                         f"{saved.to_dict()} != {config.to_dict()}")
    return history


def _report(config: RunConfig, inputs: dict, history: Sequence[Evaluation], seconds: float,
            **extra: object) -> None:
    """`tune.report` the search so far with a checkpoint holding ``checkpoint.json``."""
    from ray import tune

    best = min(history, key=lambda e: e.score)
    metrics = {"best_score": best.score, "best_loss": best.loss, "evaluations": len(history),
               "generation": history[-1].generation + 1, "generation_seconds": seconds, **extra}
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(Path(directory), config, history, inputs)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def sweep(tasks: Mapping[str, str | Path | list[dict]], param_space: Mapping[str, object], *,
          storage_path: str | Path | None = None, name: str = "lorahub-sweep", max_concurrent_trials: int | None = None,
          max_failures: int = 0, resume: bool = False, verbose: int = 1, shared_pool: bool = False,
          **settings: object) -> list[dict]:
    """Run one `search_trial` per task x grid point of ``param_space`` with Ray Tune; print and return each task's best.

    Args:
        tasks: task name -> its few-shot examples (JSONL path, or the examples).
        param_space: trial setting -> the list of values to grid over (or a single value).
        storage_path: Tune's storage directory (default ``~/ray_results``); the experiment is ``<it>/<name>``.
        name: the experiment name.
        max_concurrent_trials: cap on trials at once (default: as many as the cluster's resources fit).
        max_failures: retries of a failed trial, each continuing from the trial's last checkpoint.
        resume: continue the interrupted experiment ``<storage_path>/<name>``, each trial from its checkpoint.
        verbose: Tune's console output (0 silent, 1 default).
        shared_pool: every trial evaluates on one `SharedPool` of ``actors`` actors started once for the sweep,
            whose calls mix the candidates of the trials running at once, instead of starting actors of its own
            (`with_pool_resources`). The trials then share ``base``, ``mode``, ``objective`` and the pool settings,
            and run no pre-filter. Each trial's result is the one it gets alone (on a GPU, up to float rounding).
        settings: trial settings shared by every trial (`TRIAL_KEYS`: ``base``, ``modules`` or ``module_pool``,
            ``budget``, ``actors``...). Local paths are made absolute (trials run in other directories).

    Returns:
        One row per task for its best trial (lowest ``best_score``, the first on ties): ``task``, ``params`` (the
        swept settings), ``best_score``, ``best_loss``, ``weights`` (module -> weight), ``adapter`` (a copy of the
        trial's adapter in ``<experiment>/best/<task>/adapter``) and ``trial`` (the trial directory).

    Raises:
        ConfigError: bad settings (checked for every trial before any starts), naming the field.
        WorkerError: a trial failed (its error is in the trial directory).
    """
    from ray import tune

    _check_trial_limits(max_concurrent_trials, max_failures)
    tasks, param_space, settings, trials = _check_sweep(tasks, param_space, settings)
    if shared_pool:
        _check_shared(param_space, trials)
    experiment = Path(storage_path or DEFAULT_STORAGE).expanduser().resolve() / name
    if resume and not tune.Tuner.can_restore(str(experiment)):
        raise ConfigError(f"`resume`: {str(experiment)!r} holds no Tune experiment to continue")
    if not resume and experiment.exists():
        raise ConfigError(f"`name`: {str(experiment)!r} already exists; choose another name or resume it")
    with _shared_pool(tasks, trials) if shared_pool else contextlib.nullcontext() as shared:
        if shared is None:
            trainable = with_pool_resources()
        else:  # the pool's actors hold the CPUs; a trial only runs its optimizer and waits on the pool
            own = {**TRIAL_RESOURCES, "cpu": settings.get("trial_cpus", 0.0)}
            trainable = tune.with_resources(tune.with_parameters(search_trial, shared=shared), own)
        results = _fit(trainable, tasks, param_space, settings, experiment, resume, max_concurrent_trials,
                       max_failures, verbose)
    rows = _best_rows(results, list(tasks), [key for key in param_space if isinstance(param_space[key], list)],
                      experiment / BEST_DIR)
    print(format_table(rows))
    return rows


def _fit(trainable, tasks: dict, param_space: dict, settings: dict, experiment: Path, resume: bool,
         max_concurrent_trials: int | None, max_failures: int, verbose: int):
    """Run (or continue) the sweep's Tune experiment; its results."""
    from ray import tune

    if resume:
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
    else:
        space = {**settings, **{key: tune.grid_search(value) if isinstance(value, list) else value
                                for key, value in param_space.items()},
                 "task": tune.grid_search(list(tasks)), "examples": tune.sample_from(lambda c: tasks[c["task"]])}
        tuner = tune.Tuner(trainable, param_space=space,
                           tune_config=tune.TuneConfig(metric="best_score", mode="min",
                                                       max_concurrent_trials=max_concurrent_trials),
                           run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent),
                                                     verbose=verbose,
                                                     failure_config=tune.FailureConfig(max_failures=max_failures)))
    return tuner.fit()


def _check_shared(param_space: Mapping, trials: Sequence[tuple[RunConfig, PoolConfig]]) -> None:
    """Refuse a shared-pool sweep whose trials cannot share one pool (naming the setting)."""
    if swept := [key for key in POOL_KEYS if isinstance(param_space.get(key), list)]:
        raise ConfigError(f"`param_space` sweeps {swept}: with `shared_pool` every trial uses the one pool; "
                          "fix these settings")
    check_shareable([config for config, _ in trials], "trials")


@contextlib.contextmanager
def _shared_pool(tasks: Mapping[str, object],
                 trials: Sequence[tuple[RunConfig, PoolConfig]]) -> Iterator[SharedTrials]:
    """A `SharedPool` for the sweep's ``trials``: every task's examples, the union of the trials' modules."""
    import ray

    first, pool = trials[0]
    if pool.num_actors == 0:
        raise ConfigError("`actors` 0 evaluates in each trial's own process; a shared pool needs `actors` >= 1")
    union = list(dict.fromkeys(module for config, _ in trials for module in config.modules))
    entries = [index_module(module) for module in union]
    check_compatible(entries)
    stack = stack_modules(entries, pool.module_dtype)
    sets = ExampleSets(tuple(tuple(load_examples(examples)) for examples in tasks.values()))
    with ray_session(pool) as pool:
        server = ray.remote(num_cpus=0)(SharedPool).remote(worker_spec(first, pool), stack, sets, pool)
        try:
            try:
                ray.get(server.start.remote())
            except ray.exceptions.RayTaskError as err:
                raise err.cause from None  # the pool's own error (resources, a base that fails to load)
            yield SharedTrials(server, tuple(union), tuple(tasks))
            ray.get(server.close.remote())
        finally:
            ray.kill(server)


def _check_sweep(tasks: Mapping, param_space: Mapping,
                 settings: Mapping) -> tuple[dict, dict, dict, list[tuple[RunConfig, PoolConfig]]]:
    """Check a sweep's settings and every trial's, before anything starts; make local paths absolute. Returns them
    and every trial's settings (`trial_settings`)."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ConfigError(f"`tasks` must map task names to examples (a JSONL path or a list), got {tasks!r}")
    if not isinstance(param_space, Mapping):
        raise ConfigError(f"`param_space` must map trial settings to lists of values, got {param_space!r}")
    sweepable = tuple(key for key in TRIAL_KEYS if key not in ("task", "examples"))
    _check_keys(param_space, sweepable, "`param_space`")
    _check_keys(settings, sweepable, "sweep settings")
    both = sorted(set(param_space) & set(settings))
    if both:
        raise ConfigError(f"{both} are both fixed settings and swept in `param_space`; keep one")
    for key, value in param_space.items():
        if isinstance(value, list) and not value:
            raise ConfigError(f"`param_space`: `{key}` has no values")
    root = Path.cwd()
    tasks = {str(task): _absolute(examples, root) for task, examples in tasks.items()}
    for task in tasks:
        _check_task_name(task)
    for task, examples in tasks.items():
        if not isinstance(examples, list) and not Path(examples).is_file():
            raise ConfigError(f"`tasks`: the examples of {task!r}, {str(examples)!r}, are not a file")
    param_space = {key: _absolute(value, root) if key in PATH_KEYS else value for key, value in param_space.items()}
    settings = {key: _absolute(value, root) if key in PATH_KEYS else value for key, value in settings.items()}
    grid = [[(key, v) for v in value] if isinstance(value, list) else [(key, value)]
            for key, value in param_space.items()]
    checked: set[tuple[str, tuple[str, ...]]] = set()
    trials = []
    for task, point in itertools.product(tasks, itertools.product(*grid)):
        trial = {**settings, **dict(point), "task": task, "examples": tasks[task]}
        trial_resources(trial)
        trials.append(trial_settings(trial))
        _check_trial_inputs(trials[-1][0], checked)
    return tasks, param_space, settings, trials


def _check_trial_inputs(config: RunConfig, checked: set[tuple[str, tuple[str, ...]]]) -> None:
    """The trial's examples, modules and base, checked as `run` checks them (each base and module set once), so
    that a missing or mismatched input stops the sweep before Tune starts any trial."""
    load_examples(config.examples)
    key = (config.base, tuple(config.modules))
    if key not in checked:
        entries = [index_module(module) for module in config.modules]
        check_compatible(entries)
        check_base(entries[0], config.base)
        checked.add(key)


def _check_trial_limits(max_concurrent_trials: object, max_failures: object) -> None:
    if max_concurrent_trials is not None and (not isinstance(max_concurrent_trials, int)
                                              or isinstance(max_concurrent_trials, bool) or max_concurrent_trials < 1):
        raise ConfigError(f"`max_concurrent_trials` must be an integer >= 1 or None, got {max_concurrent_trials!r}")
    if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < 0:
        raise ConfigError(f"`max_failures` must be an integer >= 0, got {max_failures!r}")


def _check_task_name(task: str) -> None:
    """A task name is a directory name (its best adapter goes to ``best/<task>``): no path, never ``.``/``..``."""
    if not task or task in (".", "..") or any(sep in task for sep in ("/", "\\", "\0")) or Path(task).is_absolute():
        raise ConfigError(f"`tasks`: the task name {task!r} is not a plain directory name (non-empty, no '/' or "
                          "'\\', not '.' or '..'); its best adapter is exported to best/<task>")


def _check_keys(config: Mapping, accepted: Sequence[str], what: str) -> None:
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ConfigError(f"{what}: unknown {unknown}; accepted: {list(accepted)}")


def _absolute(value: object, root: Path) -> object:
    """``value`` with every string that names an existing path under ``root`` made absolute (lists: each item)."""
    if isinstance(value, (list, tuple)):
        return [_absolute(item, root) for item in value]
    if isinstance(value, (str, Path)) and (root / Path(value).expanduser()).exists():
        return str((root / Path(value).expanduser()).resolve())
    return value


def _best_rows(results, tasks: list[str], swept: list[str], best_dir: Path) -> list[dict]:
    """Each task's best trial, its adapter and result.json copied into ``best_dir/<task>``."""
    failed = [result for result in results if result.error]
    if failed:
        raise WorkerError(f"{len(failed)} trial(s) failed; the first, in {failed[0].path}: "
                          f"{str(failed[0].error).strip().splitlines()[-1]}")
    for task in tasks:  # before anything is replaced: every export may replace only an earlier export
        target = best_dir / task
        if target.exists() and not (target.is_dir() and (is_own(target) or not any(target.iterdir()))):
            raise ConfigError(f"the best adapter of task {task!r} goes to {str(target)!r}, which holds files that "
                              "lorahub-ray did not write (no result.json of its own); move them away and resume")
    rows = []
    for task in tasks:
        best = min((r for r in results if r.config["task"] == task), key=lambda r: r.metrics["best_score"])
        rows.append(_export(best, task, swept, best_dir / task))
    return rows


def _export(result, task: str, swept: list[str], target: Path) -> dict:
    """Copy the trial's adapter and result.json into ``target``, replacing an earlier export once both are copied."""
    source = Path(result.path) / SEARCH_DIR
    with staged_result(target) as staging:
        shutil.copytree(source / ADAPTER_DIR, staging / ADAPTER_DIR)
        shutil.copy2(source / RESULT_FILE, staging / RESULT_FILE)
    saved = json.loads((target / RESULT_FILE).read_text(encoding="utf-8"))
    return {"task": task, "params": {key: result.config[key] for key in swept},
            "best_score": result.metrics["best_score"], "best_loss": result.metrics["best_loss"],
            "weights": saved["weights"], "adapter": str(target / ADAPTER_DIR), "trial": result.path}


def format_table(rows: Sequence[dict], top: int = 3) -> str:
    """The sweep's rows as a text table; ``top`` weights (largest |w|) per task, modules by directory name."""
    def weights(row: dict) -> str:
        largest = sorted(row["weights"].items(), key=lambda kv: -abs(kv[1]))[:top]
        return " ".join(f"{Path(module).name}:{w:+.2f}" for module, w in largest)

    params = list(rows[0]["params"]) if rows else []
    header = ["task", *params, "best_score", "best_loss", f"top {top} weights", "adapter"]
    lines = [[row["task"], *(str(row["params"][key]) for key in params), f"{row['best_score']:.4f}",
              f"{row['best_loss']:.4f}", weights(row), row["adapter"]] for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])


WEIGHT_METRIC = "score"  # what the searcher minimises: loss + l1 * mean |w|, or the failure penalty
TRIAL_RESOURCES = {"cpu": 0, "memory": 2**20}  # a `weight_trial`: no CPU, 1 MiB of Ray's logical memory


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

    async def _score(self, population: np.ndarray) -> tuple[CandidateLoss, int]:
        """The result of the one candidate ``(1, N)`` and the actor slot that scored it."""
        import ray

        while True:
            slot = await self._idle.get()
            try:
                [result] = await asyncio.wait_for(self._actors[slot].evaluate.remote(population), self._timeout_s)
                return result, slot
            except ray.exceptions.RayTaskError:  # the call itself raised: the candidate fails, the actor lives on
                return CandidateLoss(math.nan, 0.0, traceback.format_exc(limit=3)), slot
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
                  verbose: int = 0) -> WeightSearchResult:
    """Let a Tune search algorithm propose the composition weights: ``budget`` trials of one candidate each.

    Every trial (`weight_trial`) is scored on one shared pool of ``num_actors`` evaluator actors (`PoolServer`);
    ``num_actors`` trials run at once.

    Args:
        base, modules, examples, budget, l1, bound, mode: as in `RunConfig`.
        search_alg: a Tune `Searcher` built without a search space (it gets ``{"w0": tune.uniform(-bound, bound),
            ...}``) and without ``metric``/``mode`` (``"score"``, ``"min"``); ``None``: `default_weight_searcher`.
            It must propose ``num_actors`` candidates before it hears back: give NGOpt ``num_workers=num_actors``.
        num_actors, cpus_per_actor: the evaluator pool, and the trials at once.
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
    if not isinstance(num_actors, int) or num_actors < 1:
        raise ConfigError(f"`num_actors` must be an integer >= 1 (the trials share the actors), got {num_actors!r}")
    pool = PoolConfig(num_actors=num_actors, cpus_per_actor=cpus_per_actor)
    target = _empty_output(output)
    examples = load_examples(config.examples)
    entries = [index_module(module) for module in config.modules]
    check_compatible(entries)
    check_base(entries[0], config.base)
    stack = stack_modules(entries)
    keys = weight_keys(len(entries))
    searcher = search_alg or default_weight_searcher(len(keys), budget, num_actors, bound, seed)
    space = {key: tune.uniform(-bound, bound) for key in keys} if search_alg is not None else {}
    with WorkerPool(worker_spec(config, pool), stack, examples, pool) as workers:  # stops the Ray it started
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
        write_adapter(target / ADAPTER_DIR, stack, np.array(best.weights), mode, base)
        write_json(target / RESULT_FILE, result.to_dict())
    return result


def _trial_evaluation(result, keys: list[str]) -> Evaluation:
    """A finished `weight_trial`'s candidate and report as an `Evaluation`."""
    metrics = result.metrics
    return Evaluation(weights=[float(result.config[key]) for key in keys], score=metrics[WEIGHT_METRIC],
                      loss=None if math.isnan(metrics["loss"]) else metrics["loss"], actor=metrics["actor"],
                      seconds=metrics["seconds"], generation=metrics["order"], error=metrics["error"] or None)


def _empty_output(output: str | Path | None) -> Path | None:
    """``output`` resolved, checked to be a new or empty directory of its own that can be written (`check_output`)."""
    return check_output(output)


def load_sweep_config(path: str | Path) -> dict:
    """Read a sweep JSON file into `sweep`'s keyword arguments; relative paths are taken from the file's directory.

    The file is one object: ``tasks`` (name -> JSONL path), ``param_space`` (setting -> list of values), optionally
    ``storage_path``, ``name``, ``max_concurrent_trials``, ``max_failures``, ``shared_pool``, and the shared trial
    settings.
    """
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read the sweep config {str(path)!r}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"the sweep config {str(path)!r} is not valid JSON in UTF-8: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"the sweep config {str(path)!r} must be a JSON object, got {type(config).__name__}")
    _check_keys(config, (*SWEEP_KEYS, *(key for key in TRIAL_KEYS if key not in ("task", "examples"))),
                str(path))
    for key in ("tasks", "param_space"):
        if not isinstance(config.get(key), dict):
            raise ConfigError(f"the sweep config {str(path)!r} needs `{key}`, an object")
    root = path.resolve().parent
    config["tasks"] = {task: _absolute(examples, root) for task, examples in config["tasks"].items()}
    config["param_space"] = {key: _absolute(value, root) if key in PATH_KEYS else value
                             for key, value in config["param_space"].items()}
    if config.get("storage_path"):
        config["storage_path"] = str(root / Path(config["storage_path"]).expanduser())
    return {key: _absolute(value, root) if key in PATH_KEYS else value for key, value in config.items()}


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


def add_tune_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lorahub-ray tune`` to the CLI's subcommands."""
    parser = subparsers.add_parser("tune", help="sweep tasks x settings as Ray Tune trials; print each task's best")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="sweep JSON: tasks, param_space and the shared trial settings")
    source.add_argument("--example", nargs="?", const="", metavar="DIR",
                        help="the example sweep on tiny offline models, in DIR (default: a new temp dir)")
    parser.add_argument("--storage-path", default=None,
                        help="Tune's storage directory (default: the config's storage_path, else ~/ray_results)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep, each trial from its last checkpoint")


def run_tune_command(args: argparse.Namespace) -> None:
    """Run ``lorahub-ray tune`` (the table is printed by `sweep`)."""
    if args.example is not None:
        if args.storage_path:
            raise ConfigError("--storage-path goes with --config; --example writes under its DIR")
        example_sweep(args.example or tempfile.mkdtemp(prefix="lorahub-ray-tune-"), resume=args.resume)
        return
    config = load_sweep_config(args.config)
    if args.storage_path:
        config["storage_path"] = args.storage_path
    sweep(**config, resume=args.resume)
