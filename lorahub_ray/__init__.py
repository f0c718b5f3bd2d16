"""lorahub-ray: gradient-free LoraHub composition of LoRA modules, evaluated on a pool of Ray actors.

Example:
    >>> from lorahub_ray import RunConfig, PoolConfig, run
    >>> config = RunConfig(base="path/to/base", modules=["lora/a", "lora/b"], examples="fewshot.jsonl")  # doctest: +SKIP
    >>> result = run(config, PoolConfig(num_actors=2), output="out")  # doctest: +SKIP
"""

from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import (
    ConfigError,
    InputError,
    LoraHubRayError,
    ModuleMismatchError,
    WorkerError,
)
from lorahub_ray.evaluate import EvalReport, evaluate_adapter
from lorahub_ray.many import run_many
from lorahub_ray.run import SearchResult, run

__all__ = [
    "ConfigError", "EvalReport", "InputError", "LoraHubRayError", "ModuleMismatchError", "PoolConfig", "RunConfig",
    "SearchResult", "WorkerError", "evaluate_adapter", "run", "run_many",
]
