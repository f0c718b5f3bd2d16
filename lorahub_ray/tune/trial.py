"""One LoraHub search as a Ray Tune trial: its settings, resources, checkpoints and reports."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from lorahub_ray.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError, InputError
from lorahub_ray.run import run
from lorahub_ray.search import Evaluation, Outcome, Search

RUN_KEYS = tuple(f.name for f in fields(RunConfig))
SAMPLING_KEYS = ("module_pool", "num_modules", "module_seed")  # sample `num_modules` of `module_pool`, seeded
POOL_KEYS = ("actors", "cpus_per_actor", "gpus_per_actor", "trial_cpus")
TRIAL_KEYS = (*RUN_KEYS, *SAMPLING_KEYS, *POOL_KEYS, "task")  # "task": a label, set by `sweep`
PATH_KEYS = ("base", "modules", "module_pool")
SEARCH_DIR = "search"  # the trial's `run` output, inside its trial directory
TRIAL_RESOURCES = {"cpu": 0, "memory": 2**20}  # a `weight_trial`: no CPU, 1 MiB of Ray's logical memory


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


def _check_keys(config: Mapping, accepted: Sequence[str], what: str) -> None:
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ConfigError(f"{what}: unknown {unknown}; accepted: {list(accepted)}")
