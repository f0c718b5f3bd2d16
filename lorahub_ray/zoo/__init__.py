"""An offline "module zoo": small text-to-text tasks, a byte-level base model trained from scratch and one
PEFT LoRA module per upstream task, built reproducibly on a CPU (no downloads).

Modules: `tasks` (task generators and splits), `models` (base models from a config), `train` (base and LoRA
training, example tokenisation), `build` (`build_zoo`, `load_manifest`), `check` (`check_specialists`: do the
modules beat the base on their own tasks, on fresh examples).
Command line: ``python -m lorahub_ray.zoo.build --out DIR [--size tiny|default] [--kinds t5 llama]``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ZOO_DIR", "build_zoo", "load_manifest"]


def __getattr__(name: str):  # lazy, so that `lorahub_ray.zoo.tasks` needs only the standard library
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
