"""`sweep`: tasks x a grid of settings as Tune trials, each task's best adapter exported."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError, WorkerError
from lorahub_ray.export import ADAPTER_DIR, RESULT_FILE
from lorahub_ray.inputs import load_inputs
from lorahub_ray.output import is_own, staged_result
from lorahub_ray.many import check_shareable
from lorahub_ray.pool import ray_session
from lorahub_ray.run import worker_spec
from lorahub_ray.shared_pool import SharedPool
from lorahub_ray.tune.trial import (
    PATH_KEYS,
    POOL_KEYS,
    SEARCH_DIR,
    TRIAL_KEYS,
    TRIAL_RESOURCES,
    SharedTrials,
    _check_keys,
    search_trial,
    trial_resources,
    trial_settings,
    with_pool_resources,
)

SWEEP_KEYS = ("tasks", "param_space", "storage_path", "name", "max_concurrent_trials", "max_failures", "shared_pool")
BEST_DIR = "best"  # <experiment>/best/<task>/: the task's best adapter and result.json
DEFAULT_STORAGE = "~/ray_results"  # Tune's default storage path


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
    read = load_inputs(first.base, [config.modules for config, _ in trials], list(tasks.values()))
    stack, sets = read.stack(pool.module_dtype), read.example_sets()
    with ray_session(pool) as pool:
        server = ray.remote(num_cpus=0)(SharedPool).remote(worker_spec(first, pool), stack, sets, pool)
        try:
            try:
                ray.get(server.start.remote())
            except ray.exceptions.RayTaskError as err:
                raise err.cause from None  # the pool's own error (resources, a base that fails to load)
            yield SharedTrials(server, tuple(read.names), tuple(tasks))
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
    checked: set[tuple[str, tuple[str, ...], str]] = set()
    trials = []
    for task, point in itertools.product(tasks, itertools.product(*grid)):
        trial = {**settings, **dict(point), "task": task, "examples": tasks[task]}
        trial_resources(trial)
        trials.append(trial_settings(trial))
        _check_trial_inputs(trials[-1][0], checked)
    return tasks, param_space, settings, trials


def _check_trial_inputs(config: RunConfig, checked: set[tuple[str, tuple[str, ...], str]]) -> None:
    """The trial's examples, modules and base, checked as `run` checks them (each distinct set once), so that a
    missing or mismatched input stops the sweep before Tune starts any trial."""
    key = (config.base, tuple(config.modules), str(config.examples))
    if key not in checked:
        load_inputs(config.base, [config.modules], [config.examples])
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
