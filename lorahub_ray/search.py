"""Gradient-free search over composition weights: nevergrad ask/tell, the L1 penalty, exact budget, history.

Knows nothing about Ray: it calls ``evaluate(population)`` with a ``(P, N)`` array and gets one `Outcome`
per row, in order. Symbols: P candidates in a generation, N modules.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import nevergrad as ng
import numpy as np

from lorahub_ray.errors import BadLossWarning, ConfigError, InputError

FIRST_FAILURE_SCORE = 1e4  # score of a failed candidate before any candidate succeeded

# NGOpt's Cobyla passes scipy a final trust radius scipy corrects with this warning on every run: noise to users.
warnings.filterwarnings("ignore", message="COBYLA: Invalid RHOEND", category=UserWarning)


@dataclass(frozen=True)
class Outcome:
    """What evaluating one candidate gave: its loss (NaN if it failed), and where and how long it ran."""

    loss: float
    seconds: float = 0.0
    actor: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """One recorded evaluation: weights, score (= loss + L1, or a penalty), loss, actor, seconds."""

    weights: list[float]
    score: float
    loss: float | None
    actor: int | None
    seconds: float
    generation: int
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def default_population(num_modules: int) -> int:
    """CMA-ES's usual population size for N weights: ``4 + floor(3 ln N)``."""
    return 4 + int(3 * math.log(num_modules))


def _cma(parametrization: ng.p.Array, budget: int, population: int) -> ng.optimizers.base.Optimizer:
    return ng.optimizers.ParametrizedCMA(popsize=population)(parametrization, budget=budget, num_workers=population)


def _ngopt(parametrization: ng.p.Array, budget: int, population: int) -> ng.optimizers.base.Optimizer:
    # One worker, as the reference: NGOpt then picks Cobyla for small budgets, which must be told before the next ask.
    return ng.optimizers.NGOpt(parametrization=parametrization, budget=budget, num_workers=1)


# name -> (builder, whether it proposes whole populations)
OPTIMIZERS: dict[str, tuple[Callable[[ng.p.Array, int, int], ng.optimizers.base.Optimizer], bool]] = {
    "cma": (_cma, True),
    "ngopt": (_ngopt, False),
}


class Search:
    """Ask/tell search for composition weights in ``[-bound, bound]^N`` starting at 0.

    Args:
        num_modules: N, the number of weights.
        budget: evaluations, exactly (the last generation is cut short rather than overshoot).
        optimizer: a name in `OPTIMIZERS`.
        population: candidates per generation for population optimizers (``None``: `default_population`).
        seed: seeds the optimizer.
        l1: weight of the ``mean |w|`` penalty.
        bound: search box half-width.

    Example:
        >>> search = Search(num_modules=3, budget=10, seed=0)
        >>> while not search.done:
        ...     population = search.ask()
        ...     search.tell([Outcome(float(np.sum((w - 0.5) ** 2))) for w in population])
        >>> len(search.history)
        10
    """

    def __init__(self, num_modules: int, budget: int, optimizer: str = "cma", population: int | None = None,
                 seed: int = 42, l1: float = 0.05, bound: float = 1.5) -> None:
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        build, parallel = OPTIMIZERS[optimizer]
        self.parametrization = ng.p.Array(init=np.zeros(num_modules), lower=-bound, upper=bound)
        self.parametrization.random_state = np.random.RandomState(seed)
        self.population = (population or default_population(num_modules)) if parallel else 1
        self.optimizer = build(self.parametrization, budget, self.population)
        self.budget, self.l1 = budget, l1
        self.history: list[Evaluation] = []
        self.generation = 0
        self._pending: list[ng.p.Parameter] = []

    @property
    def remaining(self) -> int:
        return self.budget - len(self.history) - len(self._pending)

    @property
    def done(self) -> bool:
        return self.remaining == 0 and not self._pending

    @property
    def best(self) -> Evaluation:
        """The best evaluated candidate (lowest score; the earliest on ties)."""
        if not self.history:
            raise RuntimeError("no candidate has been evaluated yet")
        return min(self.history, key=lambda e: e.score)

    def ask(self) -> np.ndarray:
        """The next generation, ``(P, N)``; P is cut to the remaining budget."""
        if self._pending:
            raise RuntimeError("tell() the pending generation before asking for another")
        if self.done:
            raise RuntimeError(f"the budget of {self.budget} evaluations is spent")
        self._pending = [self.optimizer.ask() for _ in range(min(self.population, self.remaining))]
        return np.stack([candidate.value for candidate in self._pending])  # (P, N)

    def tell(self, outcomes: Sequence[Outcome]) -> None:
        """Record one `Outcome` per asked row (in order) and tell the optimizer each score."""
        if len(outcomes) != len(self._pending):
            raise ValueError(f"expected {len(self._pending)} outcomes, got {len(outcomes)}")
        for candidate, outcome in zip(self._pending, outcomes):
            weights = candidate.value
            score = self._score(weights, outcome)
            self.optimizer.tell(candidate, score)
            finite = outcome.error is None and math.isfinite(outcome.loss)
            self.history.append(Evaluation(
                weights=[float(w) for w in weights], score=score, loss=float(outcome.loss) if finite else None,
                actor=outcome.actor, seconds=outcome.seconds, generation=self.generation, error=outcome.error,
            ))
        self._pending = []
        self.generation += 1

    def replay(self, history: Sequence[Evaluation]) -> None:
        """Restore the state of a search that recorded ``history`` (whole generations) with the same settings.

        Each generation is asked again and must match what was recorded; the recorded scores are told back.

        Raises:
            InputError: the history does not come from a search with these settings and seed.
        """
        done = 0
        while done < len(history):
            population = self.ask()
            recorded = history[done : done + len(population)]
            if len(recorded) != len(population) or not np.allclose(
                    population, [e.weights for e in recorded], rtol=0, atol=1e-12):
                self._pending = []
                raise InputError(f"the recorded evaluations {done}..{done + len(population) - 1} differ from what "
                                 "this optimizer proposes: the checkpoint comes from other settings or versions")
            for candidate, evaluation in zip(self._pending, recorded):
                self.optimizer.tell(candidate, evaluation.score)
            self.history.extend(recorded)
            self._pending = []
            self.generation += 1
            done += len(recorded)

    def _score(self, weights: np.ndarray, outcome: Outcome) -> float:
        if outcome.error is None and math.isfinite(outcome.loss):
            return float(outcome.loss + self.l1 * np.mean(np.abs(weights)))
        finite = [e.score for e in self.history if e.loss is not None]
        penalty = max(finite) + 1.0 if finite else FIRST_FAILURE_SCORE
        reason = outcome.error.strip().splitlines()[-1] if outcome.error else f"loss {outcome.loss}"
        warnings.warn(f"candidate {len(self.history)} failed ({reason}); scored {penalty:.4g} instead",
                      BadLossWarning, stacklevel=3)
        return penalty


def minimize(search: Search, evaluate: Callable[[np.ndarray], Sequence[Outcome]],
             on_generation: Callable[[Search], None] | None = None) -> Evaluation:
    """Run ``search`` to its budget with ``evaluate`` and return the best evaluation."""
    while not search.done:
        search.tell(evaluate(search.ask()))
        if on_generation is not None:
            on_generation(search)
    return search.best
