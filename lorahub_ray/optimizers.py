"""Optimizers behind the search's ask/tell loop: a registry of seeded strategies over ``[-bound, bound]^N``.

A strategy proposes generations of weight vectors and learns from their scores; it never sees Ray or
the budget's bookkeeping (see `lorahub_ray.search.Search`). nevergrad supplies the algorithms; this file
is the glue:
- ``cma``: CMA-ES populations from w = 0 (sized so that the budget lasts `MIN_GENERATIONS` generations).
- ``ngopt``: the reference's sequential NGOpt (one candidate at a time; Cobyla for small budgets).
- ``probes-cma`` (the default): a first generation of the points Cobyla starts with (w = 0 and +0.5 on each
  coordinate), evaluated in parallel, then CMA-ES started from the best of them with a step of that probe size.
- ``singles-cma``: the same with probes of weight 1: the first generation scores w = 0 and every
  module alone (so the search starts from the best single module), then CMA-ES from the best.
Probes never leave the box: with ``bound`` below the probe weight they move each weight by ``bound``.
With one module, CMA-ES runs on pycma directly (`OneWeightCMA`), because nevergrad hands one-dimensional CMA-ES
to fcmaes, which is not installed.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from lorahub_ray.errors import ConfigError


class _Lazy:
    """A module imported on first attribute access: nevergrad takes seconds, and `lorahub-ray --help` needs none."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)


ng = _Lazy("nevergrad")

PROBE_STEP = 0.5  # Cobyla's first trust radius in NGOpt: each probe moves one weight by this much
MIN_GENERATIONS = 12  # CMA-ES adapts its step and shape once per generation: a small budget needs small ones


def default_population(num_modules: int, budget: int | None = None) -> int:
    """CMA-ES's usual population size for N weights, ``4 + floor(3 ln N)``; given a ``budget``, made smaller (down
    to 4) so that the budget lasts `MIN_GENERATIONS` generations."""
    size = 4 + int(3 * math.log(num_modules))
    return size if budget is None else max(4, min(size, budget // MIN_GENERATIONS))


def check_population(population: object) -> None:
    """A population must be ``None`` or an integer >= 2: CMA-ES recombines at least two candidates a generation."""
    if population is not None and (not isinstance(population, numbers.Integral) or isinstance(population, bool)
                                   or population < 2):
        raise ConfigError(f"`population` must be an integer >= 2 or None (CMA-ES recombines at least two candidates "
                          f"a generation), got {population!r}")


@contextmanager
def _library_notices_silenced() -> Iterator[None]:
    """Hide, in the project's own optimizer calls only, notices that users can do nothing about: NGOpt's Cobyla hands
    scipy a final trust radius that scipy corrects on every run, pycma reports its own internal mean injection
    when popsize is small, and pycma says on import that it cannot plot without matplotlib (imported at the first
    CMA-ES ask). The caller's warning filters are left as they were."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="COBYLA: Invalid (RHOEND|MAXFUN)", category=UserWarning)
        warnings.filterwarnings("ignore", message="orphanated injected solution")
        warnings.filterwarnings("ignore", message="Could not import matplotlib.pyplot", category=UserWarning)
        yield


class Strategy:
    """Proposes generations of candidates; told their scores in the order asked."""

    generation_size: int  # candidates it wants in its next generation
    population: int  # the size of its generations once under way (what a pool should divide)

    def ask(self, count: int) -> list[np.ndarray]:
        raise NotImplementedError

    def tell(self, scores: Sequence[float]) -> None:
        raise NotImplementedError


class NevergradStrategy(Strategy):
    """Any nevergrad optimizer, asked ``generation_size`` candidates at a time."""

    def __init__(self, optimizer: ng.optimizers.base.Optimizer, generation_size: int) -> None:
        self.optimizer = optimizer
        self.generation_size = self.population = generation_size
        self._pending: list[ng.p.Parameter] = []
        self._next: ng.p.Parameter | None = None  # a sequential optimizer's next candidate, asked ahead

    def ask(self, count: int) -> list[np.ndarray]:
        with _library_notices_silenced():
            ahead, self._next = ([self._next] if self._next is not None else []), None
            self._pending = ahead + [self.optimizer.ask() for _ in range(count - len(ahead))]
        return [np.array(candidate.value) for candidate in self._pending]

    def tell(self, scores: Sequence[float]) -> None:
        with _library_notices_silenced():
            for candidate, score in zip(self._pending, scores):
                self.optimizer.tell(candidate, score)
            # A sequential optimizer (NGOpt's Cobyla) resumes in its own thread after a tell and may warn there; asking
            # for its next candidate now keeps whatever it warns inside this scope. Its candidates are the same.
            if self.generation_size == 1 and self.optimizer.num_ask < (self.optimizer.budget or 0):
                self._next = self.optimizer.ask()
        self._pending = []


class OneWeightCMA(Strategy):
    """CMA-ES over one weight with pycma (nevergrad's CMA hands one dimension to fcmaes, which is not installed).

    It follows nevergrad's `ParametrizedCMA` on a bounded ``ng.p.Array``: the initial step is 0.3 times the
    parameter's sigma (``sigma``, else a sixth of the box), and a sample outside ``[-bound, bound]`` is reflected
    back into it ("bouncing"). Asked whole generations (a last one may be cut short).
    """

    def __init__(self, population: int, seed: int, bound: float, init: float = 0.0,
                 sigma: float | None = None) -> None:
        with _library_notices_silenced():
            import cma  # nevergrad's own CMA-ES backend

        self.generation_size = self.population = population
        self.bound = bound
        options = {"popsize": population, "randn": np.random.RandomState(seed).randn, "seed": np.nan, "verbose": -9}
        with _library_notices_silenced():
            self._es = cma.CMAEvolutionStrategy([float(init)], 0.3 * (sigma or bound / 3), options)
        self._asked: list[np.ndarray] = []

    def ask(self, count: int) -> list[np.ndarray]:
        with _library_notices_silenced():
            self._asked = list(self._es.ask())[:count]
        return [self._into_box(x) for x in self._asked]

    def tell(self, scores: Sequence[float]) -> None:
        if len(scores) == self.population:  # a generation cut short ends the search: nothing to learn from it
            with _library_notices_silenced():
                self._es.tell(self._asked, list(scores))
        self._asked = []

    def _into_box(self, x: np.ndarray) -> np.ndarray:
        period = 4 * self.bound  # reflect at both walls: x -> the point of [-bound, bound] it bounces to
        folded = np.mod(x + self.bound, period)
        return np.minimum(folded, period - folded) - self.bound


def _space(num_modules: int, bound: float, seed: int, init: np.ndarray | None = None,
           sigma: float | None = None) -> ng.p.Array:
    space = ng.p.Array(init=np.zeros(num_modules) if init is None else init, lower=-bound, upper=bound)
    if sigma is not None:
        space.set_mutation(sigma=sigma)
    space.random_state = np.random.RandomState(seed)
    return space


def _cma(num_modules: int, budget: int, population: int | None, seed: int, bound: float,
         init: np.ndarray | None = None, sigma: float | None = None) -> Strategy:
    size = population or default_population(num_modules, budget)
    if num_modules == 1:
        return OneWeightCMA(size, seed, bound, 0.0 if init is None else float(init[0]), sigma)
    with _library_notices_silenced():
        optimizer = ng.optimizers.ParametrizedCMA(popsize=size)(
            _space(num_modules, bound, seed, init, sigma), budget=budget, num_workers=size)
    return NevergradStrategy(optimizer, size)


def _ngopt(num_modules: int, budget: int, population: int | None, seed: int, bound: float) -> NevergradStrategy:
    # One worker, as the reference: NGOpt then picks Cobyla for small budgets, which must be told before the next ask.
    with _library_notices_silenced():
        optimizer = ng.optimizers.NGOpt(parametrization=_space(num_modules, bound, seed), budget=budget,
                                        num_workers=1)
    return NevergradStrategy(optimizer, 1)


class ProbesThenCMA(Strategy):
    """Cobyla's starting probes in one parallel generation, then CMA-ES from the best probe.

    Args:
        num_modules: N.
        budget: total evaluations (the probes take N + 1 of them).
        population: CMA-ES population after the probes (``None``: `default_population` of N, whatever the budget:
            started from the best probe, CMA-ES did better with it than with a budget-sized one).
        seed: seeds CMA-ES.
        bound: search box half-width.
        step: each probe's weight on its coordinate, and CMA-ES's initial step; at most ``bound``.
    """

    def __init__(self, num_modules: int, budget: int, population: int | None, seed: int, bound: float,
                 step: float = PROBE_STEP) -> None:
        step = min(step, bound)  # a probe outside the box would be a candidate the search may not propose
        self.probes = [np.zeros(num_modules)] + [step * row for row in np.eye(num_modules)]
        self.generation_size = len(self.probes)
        self.population = population or default_population(num_modules)
        self._start_cma = lambda best, remaining: _cma(num_modules, remaining, self.population, seed, bound,
                                                       init=best, sigma=step)
        self.budget = budget
        self._told: list[tuple[float, np.ndarray]] = []
        self._asked: list[np.ndarray] = []
        self._cma: NevergradStrategy | None = None

    def ask(self, count: int) -> list[np.ndarray]:
        if self._cma is not None:
            return self._cma.ask(count)
        self._asked = self.probes[len(self._told) : len(self._told) + count]
        return [w.copy() for w in self._asked]

    def tell(self, scores: Sequence[float]) -> None:
        if self._cma is not None:
            self._cma.tell(scores)
            return
        self._told.extend(zip(scores, self._asked))
        self.generation_size = len(self.probes) - len(self._told)
        if self.generation_size == 0 and self.budget > len(self._told):
            best = min(self._told, key=lambda pair: pair[0])[1]
            self._cma = self._start_cma(best, self.budget - len(self._told))
            self.generation_size = self._cma.generation_size


Builder = Callable[[int, int, "int | None", int, float], Strategy]
OPTIMIZERS: dict[str, Builder] = {"cma": _cma, "ngopt": _ngopt, "probes-cma": ProbesThenCMA,
                                  "singles-cma": functools.partial(ProbesThenCMA, step=1.0)}
# Chosen by the optimizer panel (benchmarks/panel.py; benchmarks/README.md#optimizer-panel): at equal wall-clock
# time on 2 actors, the best worst-case standing over planted/t5, planted/llama, zoo/t5, zoo/llama and the real
# world (SmolLM2 on BBH): 2nd, 1st, 2nd, 2nd and 1st (gap closed 0.58 and 0.64, exact match 32.8, 46.9 and 40.3;
# the real world's margins are within noise).
# singles-cma wins both zoos (32.9, 49.9) but comes last on planted/t5 (0.35: dense compositions); cma and the
# reference come last on some world.
DEFAULT_OPTIMIZER = "probes-cma"


def make_strategy(name: str, num_modules: int, budget: int, population: int | None, seed: int,
                  bound: float) -> Strategy:
    """The named strategy; the caller has checked that ``name`` is in `OPTIMIZERS`.

    Raises:
        ConfigError: ``population`` is not ``None`` or an integer >= 2.
    """
    check_population(population)
    return OPTIMIZERS[name](num_modules, budget, population, seed, bound)
