"""Run settings: `RunConfig` (what shapes the result; saved with it) and `PoolConfig` (runtime only)."""

from __future__ import annotations

import inspect
import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, fields, replace

from actors.cache import APPLY_METHODS
from actors.compose import MODES
from actors.loss import OBJECTIVES
from actors.model import DTYPE_CHOICES
from actors.stack import STORAGE_DTYPES
from lorahub_ray.errors import ConfigError
from lorahub_ray.modules import check_distinct
from lorahub_ray.optimizers import DEFAULT_OPTIMIZER, OPTIMIZERS, check_population
from lorahub_ray.prefilter import PrefilterSpec

OPTIMIZER_NAMES = tuple(OPTIMIZERS)


def _one_of(name: str, value: object, accepted: tuple) -> None:
    if value not in accepted:
        raise ConfigError(f"`{name}` must be one of {list(accepted)}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite_number(name: str, value: object, lowest: float, inclusive: bool) -> None:
    """``value`` must be a finite number ``>= lowest`` (``> lowest`` unless ``inclusive``)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
        raise ConfigError(f"`{name}` must be {'>=' if inclusive else '>'} {lowest:g} and finite, got {value!r}")


@dataclass
class RunConfig:
    """What shapes a search's result; saved in ``result.json``.

    Args:
        base: base model, a local directory, hub id or ``.gguf`` file.
        modules: LoRA adapters (local directories or hub ids), in weight order.
        examples: path of a JSONL file of ``{"input", "output"}`` lines, or the examples themselves.
        budget: number of evaluations, exactly.
        optimizer: a name in `lorahub_ray.optimizers.OPTIMIZERS`: ``"probes-cma"`` (the default: w = 0 and every
            weight at +0.5 alone in one parallel generation, then CMA-ES from the best), ``"singles-cma"`` (the
            same with every module alone at weight 1), ``"cma"`` (CMA-ES populations from 0) or ``"ngopt"`` (the
            reference's sequential NGOpt).
        population: candidates per generation for ``cma`` (``None``: CMA-ES's default ``4 + 3 ln N``, made smaller
            for small budgets so that the budget lasts 12 generations, never below 4); at least 2.
            Never derived from the number of actors, so results do not depend on it.
        mode: composition, ``"ab"`` (LoraHub: sum of A's times sum of B's) or ``"delta"`` (sum of w_i B_i A_i).
        objective: ``"default"`` (mean token cross-entropy) or ``"reference"`` (the reference's CE / E scale).
        reference_batch_size: batch size of the ``reference`` objective (``None``: all examples in one batch).
        l1: weight of the ``mean |w|`` penalty added to the loss.
        bound: weights are searched in ``[-bound, bound]``.
        seed: seeds the optimizer (and a ``random`` pre-filter); the only source of randomness in a search
            (an integer in 0..2**32 - 1).
        prefilter: ``"NAME:K"`` narrows ``modules`` to K candidates before the search: ``random``, ``loss``
            or ``similarity`` (see `lorahub_ray.prefilter`); ``None`` searches over every module.
    """

    base: str
    modules: list[str]
    examples: str | list[dict[str, str]]
    budget: int = 40
    optimizer: str = DEFAULT_OPTIMIZER
    population: int | None = None
    mode: str = "ab"
    objective: str = "default"
    reference_batch_size: int | None = None
    l1: float = 0.05
    bound: float = 1.5
    seed: int = 42
    prefilter: str | None = None

    def __post_init__(self) -> None:
        if self.prefilter is not None:
            PrefilterSpec.parse(self.prefilter)
        if isinstance(self.modules, (str, os.PathLike)):
            raise ConfigError(f"`modules` must be a list of module paths or hub ids, got one: {self.modules!r}")
        self.modules = [str(m) for m in self.modules]
        if isinstance(self.examples, os.PathLike):
            self.examples = str(self.examples)
        if not self.modules:
            raise ConfigError("`modules` must name at least one LoRA module, got none")
        check_distinct(self.modules)
        if not _is_int(self.budget) or self.budget < 1:
            raise ConfigError(f"`budget` must be an integer >= 1, got {self.budget!r}")
        _one_of("optimizer", self.optimizer, OPTIMIZER_NAMES)
        check_population(self.population)
        _one_of("mode", self.mode, MODES)
        _one_of("objective", self.objective, OBJECTIVES)
        if self.reference_batch_size is not None and (not _is_int(self.reference_batch_size)
                                                      or self.reference_batch_size < 1):
            raise ConfigError(f"`reference_batch_size` must be an integer >= 1 or None, "
                              f"got {self.reference_batch_size!r}")
        _finite_number("l1", self.l1, 0, inclusive=True)
        _finite_number("bound", self.bound, 0, inclusive=False)
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"`seed` must be an integer in 0..{2**32 - 1} (numpy's seed range), got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PoolConfig:
    """Where and how candidates are evaluated; runtime only, never saved.

    Args:
        num_actors: Ray actors evaluating in parallel; ``0`` evaluates in this process without Ray. ``None``: one
            actor per GPU of the Ray cluster when it has GPUs and ``gpus_per_actor`` is not set, else 1.
        cpus_per_actor: CPUs reserved per actor (fractional allowed); also its torch thread count.
        gpus_per_actor: GPUs reserved per actor (fractional allowed, e.g. 0.25 packs four on a GPU). ``None``: the
            cluster's GPUs shared out (1 each with one actor per GPU; ``G / num_actors``, at most 1, with
            ``num_actors`` set), or 0 on a cluster without GPUs. See `resolve`.
        address: ``None`` starts a private local Ray (or joins the cluster that the ``RAY_ADDRESS`` environment
            variable names); ``"auto"`` (the cluster ``ray start`` left on this machine), ``"host:port"`` or
            ``"ray://host:port"`` joins a cluster, which must answer within `lorahub_ray.pool.CONNECT_TIMEOUT_S`
            seconds.
        apply: in-place method, ``"merge"`` (into pristine base weights; fastest) or ``"slot"`` (a PEFT LoRA slot).
        dtype: the actors' base model and composed adapter dtype; ``"auto"``: bfloat16 on CUDA (loss and LM
            head in float32), float32 on CPU.
        device: ``"auto"`` (an actor: CUDA when it reserved a GPU, ``gpus_per_actor > 0``, else CPU whatever the
            node has; in-process: CUDA when visible), ``"cpu"`` or ``"cuda"`` (actors need ``gpus_per_actor > 0``).
        example_batch_size: examples per forward pass when scoring one candidate at a time (``None``: all).
        candidates_per_pass: candidates an actor scores together in one batched forward pass (1: one at a
            time). Work is handed out in whole passes, so results do not depend on the number of actors.
            ``"auto"``: 1 on the CPU; on a GPU, what its free memory holds (`actors.worker.Worker`), the
            smallest over the actors.
        max_restarts: actor deaths (or hangs) tolerated in one search before giving up.
        generation_timeout_s: seconds an actor may take over its share of one generation; one that takes longer
            is treated as hung: it is killed, replaced, and its candidates re-run (the result is unchanged).
            ``None``: no limit.
        module_dtype: how the driver and the object store hold the module stack (``"float16"`` and
            ``"bfloat16"`` halve its memory; actors compute in ``dtype``).
    """

    num_actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    address: str | None = None
    apply: str = "merge"
    dtype: str = "auto"
    device: str = "auto"
    example_batch_size: int | None = None
    candidates_per_pass: int | str = "auto"
    max_restarts: int = 3
    module_dtype: str = "float32"
    generation_timeout_s: float | None = 3600.0

    def __post_init__(self) -> None:
        if self.num_actors is not None and (not _is_int(self.num_actors) or self.num_actors < 0):
            raise ConfigError(f"`num_actors` must be an integer >= 0 or None (one per GPU), got {self.num_actors!r}")
        if not (isinstance(self.cpus_per_actor, (int, float)) and 0 < self.cpus_per_actor < math.inf):
            raise ConfigError(f"`cpus_per_actor` must be a number > 0, got {self.cpus_per_actor!r}")
        if self.gpus_per_actor is not None and not (
                isinstance(self.gpus_per_actor, (int, float)) and 0 <= self.gpus_per_actor < math.inf):
            raise ConfigError(f"`gpus_per_actor` must be a number >= 0 or None (the cluster's GPUs shared out), "
                              f"got {self.gpus_per_actor!r}")
        _one_of("apply", self.apply, APPLY_METHODS)
        _one_of("dtype", self.dtype, DTYPE_CHOICES)
        _one_of("device", self.device, ("auto", "cpu", "cuda"))
        if self.device == "cuda" and self.num_actors != 0 and self.gpus_per_actor is not None \
                and not self.gpus_per_actor > 0:
            raise ConfigError(f"`device` 'cuda' on actors needs `gpus_per_actor` > 0 (a GPU reserved for each), got "
                              f"{self.gpus_per_actor!r}; reserve GPUs, or use `device` 'auto' or 'cpu'")
        if self.generation_timeout_s is not None and not self.generation_timeout_s > 0:
            raise ConfigError(f"`generation_timeout_s` must be > 0 (seconds) or None (no limit), "
                              f"got {self.generation_timeout_s!r}")
        _one_of("module_dtype", self.module_dtype, tuple(STORAGE_DTYPES))
        if self.candidates_per_pass != "auto" and (
                not _is_int(self.candidates_per_pass) or self.candidates_per_pass < 1):
            raise ConfigError(f"`candidates_per_pass` must be 'auto' or an integer >= 1, "
                              f"got {self.candidates_per_pass!r}")
        if self.example_batch_size is not None and self.example_batch_size < 1:
            raise ConfigError(f"`example_batch_size` must be >= 1 or None, got {self.example_batch_size!r}")

    def resolve(self, cluster_gpus: float) -> PoolConfig:
        """This config with a concrete ``num_actors`` and ``gpus_per_actor`` on a Ray cluster of ``cluster_gpus``
        GPUs: neither set and a GPU there, one actor per whole GPU, 1 GPU each; else ``num_actors`` (default 1)
        actors sharing the GPUs (``G / num_actors`` each, at most 1) unless ``gpus_per_actor`` is set.

        Raises:
            ConfigError: ``device`` 'cuda' and no GPU for the actors.
        """
        if self.num_actors == 0:
            return replace(self, gpus_per_actor=self.gpus_per_actor or 0.0)
        if self.num_actors is None and self.gpus_per_actor is None and cluster_gpus >= 1:
            return replace(self, num_actors=int(cluster_gpus), gpus_per_actor=1.0)
        actors = 1 if self.num_actors is None else self.num_actors
        gpus = self.gpus_per_actor
        if gpus is None:  # the cluster's GPUs shared out; Ray takes fractions below 1 to 4 decimals
            gpus = min(1.0, math.floor(10_000 * cluster_gpus / actors) / 10_000)
        return replace(self, num_actors=actors, gpus_per_actor=gpus)

    @property
    def threads_per_actor(self) -> int:
        return max(1, int(self.cpus_per_actor))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` section of ``cls``'s docstring, on one line (the CLI's help)."""
    section = inspect.getdoc(cls).split("Args:", 1)[1]
    entries = re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", section, flags=re.M | re.S)
    docs = {name: " ".join(text.split()).replace('``"', '"').replace('"``', '"').replace("``", "'")
            for name, text in entries}
    return {f.name: docs[f.name] for f in fields(cls)}
