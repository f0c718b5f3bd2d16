"""`load_sweep_config`: a sweep JSON file read into `sweep`'s keyword arguments."""

from __future__ import annotations

import json
from pathlib import Path

from lorahub_ray.errors import ConfigError, InputError
from lorahub_ray.tune.sweeps import SWEEP_KEYS, _absolute
from lorahub_ray.tune.trial import PATH_KEYS, TRIAL_KEYS, _check_keys


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
