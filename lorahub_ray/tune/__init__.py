"""Ray Tune integration: one LoraHub search per Tune trial, checkpointed every generation; task x grid sweeps.

`search_trial` (`trial`) is a Tune function trainable that runs `lorahub_ray.run.run` from its ``config`` dict
(keys: `TRIAL_KEYS`); `with_pool_resources` gives each trial a placement group that also holds its evaluator actors.
`sweep` (`sweeps`) runs tasks x a grid of settings and exports each task's best adapter. `weight_search`
(`weight_trials`) lets a Tune search algorithm propose the composition weights themselves, one candidate per
trial, evaluated by a `PoolServer` shared between the concurrent trials. Ray Tune is imported inside the
functions only, so the CLI starts without it.
"""

from lorahub_ray.tune.trial import (
    PATH_KEYS,
    POOL_KEYS,
    RUN_KEYS,
    SAMPLING_KEYS,
    SEARCH_DIR,
    TRIAL_KEYS,
    TRIAL_RESOURCES,
    SharedTrials,
    search_trial,
    trial_resources,
    trial_settings,
    with_pool_resources,
)
from lorahub_ray.tune.sweeps import BEST_DIR, DEFAULT_STORAGE, SWEEP_KEYS, format_table, sweep
from lorahub_ray.tune.weight_trials import (
    WEIGHT_METRIC,
    PoolServer,
    WeightSearchResult,
    default_weight_searcher,
    weight_keys,
    weight_search,
    weight_trial,
)
from lorahub_ray.tune.config_file import load_sweep_config
from lorahub_ray.tune.example import EXAMPLE_POOL, EXAMPLE_TASKS, EXAMPLE_WORDS, example_sweep
from lorahub_ray.tune.cli import add_tune_command, run_tune_command

__all__ = [
    "BEST_DIR", "DEFAULT_STORAGE", "EXAMPLE_POOL", "EXAMPLE_TASKS", "EXAMPLE_WORDS", "PATH_KEYS", "POOL_KEYS",
    "RUN_KEYS", "SAMPLING_KEYS", "SEARCH_DIR", "SWEEP_KEYS", "TRIAL_KEYS", "TRIAL_RESOURCES", "WEIGHT_METRIC",
    "PoolServer", "SharedTrials", "WeightSearchResult", "add_tune_command", "default_weight_searcher",
    "example_sweep", "format_table", "load_sweep_config", "run_tune_command", "search_trial", "sweep",
    "trial_resources", "trial_settings", "weight_keys", "weight_search", "weight_trial", "with_pool_resources",
]
