"""Gradient-free search over composition weights: nevergrad ask/tell, the L1 penalty, exact budget, history.

Knows nothing about Ray: it calls ``evaluate(population)`` with a ``(P, N)`` array and gets one `Outcome`
per row, in order. Symbols: P candidates in a generation, N modules.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from actors import Outcome  # what an evaluator returns for each candidate, re-exported here
from lorahub_ray.errors import BadLossWarning, ConfigError, InputError
from lorahub_ray.optimizers import DEFAULT_OPTIMIZER, OPTIMIZERS, make_strategy

FIRST_FAILURE_SCORE = 1e4  # score of a failed candidate before any candidate succeeded


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


class Search:
    """Ask/tell search for composition weights in ``[-bound, bound]^N`` starting at 0.

    Args:
        num_modules: N, the number of weights.
        budget: evaluations, exactly (the last generation is cut short rather than overshoot).
        optimizer: a name in `lorahub_ray.optimizers.OPTIMIZERS`.
        population: candidates per generation for population optimizers (``None``: CMA-ES's default).
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

    def __init__(self, num_modules: int, budget: int, optimizer: str = DEFAULT_OPTIMIZER,
                 population: int | None = None, seed: int = 42, l1: float = 0.05, bound: float = 1.5) -> None:
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        self.strategy = make_strategy(optimizer, num_modules, budget, population, seed, bound)
        self.budget, self.l1 = budget, l1
        self.history: list[Evaluation] = []
        self.generation = 0
        self._pending: list[np.ndarray] = []

    @property
    def population(self) -> int:
        """Candidates the optimizer wants in its next generation."""
        return self.strategy.generation_size

    @property
    def steady_population(self) -> int:
        """The size of the optimizer's generations once under way (a first generation of probes may differ)."""
        return self.strategy.population

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
        self._pending = self.strategy.ask(min(self.population, self.remaining))
        return np.stack(self._pending)  # (P, N)

    def tell(self, outcomes: Sequence[Outcome]) -> None:
        """Record one `Outcome` per asked row (in order) and tell the optimizer each score."""
        if len(outcomes) != len(self._pending):
            raise ValueError(f"expected {len(self._pending)} outcomes, got {len(outcomes)}")
        scores = []
        for weights, outcome in zip(self._pending, outcomes):
            score = self._score(weights, outcome)
            scores.append(score)
            finite = outcome.error is None and math.isfinite(outcome.loss)
            self.history.append(Evaluation(
                weights=[float(w) for w in weights], score=score, loss=float(outcome.loss) if finite else None,
                actor=outcome.actor, seconds=outcome.seconds, generation=self.generation, error=outcome.error,
            ))
        self.strategy.tell(scores)
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
            self.strategy.tell([evaluation.score for evaluation in recorded])
            self.history.extend(recorded)
            self._pending = []
            self.generation += 1
            done += len(recorded)

    def _score(self, weights: np.ndarray, outcome: Outcome) -> float:
        if outcome.error is None and math.isfinite(outcome.loss):
            return l1_score(outcome.loss, weights, self.l1)
        penalty = failure_penalty([e.score for e in self.history if e.loss is not None])
        reason = outcome.error.strip().splitlines()[-1] if outcome.error else f"loss {outcome.loss}"
        warnings.warn(f"candidate {len(self.history)} failed ({reason}); scored {penalty:.4g} instead",
                      BadLossWarning, stacklevel=3)
        return penalty


def l1_score(loss: float, weights: Sequence[float] | np.ndarray, l1: float) -> float:
    """A successful candidate's score: its loss plus ``l1 * mean |w|``."""
    return float(loss + l1 * np.mean(np.abs(weights)))


def failure_penalty(finite_scores: Sequence[float]) -> float:
    """A failed candidate's score: 1 above the worst successful score so far (`FIRST_FAILURE_SCORE` before any)."""
    return max(finite_scores) + 1.0 if finite_scores else FIRST_FAILURE_SCORE


def minimize(search: Search, evaluate: Callable[[np.ndarray], Sequence[Outcome]],
             on_generation: Callable[[Search], None] | None = None) -> Evaluation:
    """Run ``search`` to its budget with ``evaluate`` and return the best evaluation."""
    while not search.done:
        search.tell(evaluate(search.ask()))
        if on_generation is not None:
            on_generation(search)
    return search.best
