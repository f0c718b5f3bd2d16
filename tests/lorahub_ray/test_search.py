"""Search without Ray: exact budget, bounds, seeding, the reference's NGOpt start, failing candidates."""

import math

import numpy as np
import pytest

from lorahub_ray.errors import BadLossWarning, ConfigError
from lorahub_ray.optimizers import default_population
from lorahub_ray.optimizers import OPTIMIZERS
from lorahub_ray.search import Outcome, Search, minimize

TARGET = np.array([0.8, -0.5, 0.3, 0.0, 1.2])


def sphere(population):
    return [Outcome(float(np.sum((w - TARGET) ** 2))) for w in population]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("budget", [1, 7, 25])
def test_budget_is_exact_and_weights_stay_in_bounds(optimizer, budget):
    search = Search(num_modules=5, budget=budget, optimizer=optimizer, population=6, bound=1.5)
    minimize(search, sphere)
    assert len(search.history) == budget
    weights = np.array([e.weights for e in search.history])
    assert np.all(np.abs(weights) <= 1.5)


def test_population_comes_from_the_setting_or_cma_default_never_from_actors():
    assert Search(20, 400, optimizer="cma").population == default_population(20) == 12
    assert Search(20, 80, optimizer="cma").population == default_population(20, 80) == 6, "80 // 12 generations"
    assert Search(20, 40, optimizer="cma").population == 4, "never below 4"
    assert Search(20, 40, optimizer="cma", population=8).population == 8
    assert Search(20, 40).population == 21, "the default's first generation: w = 0 and every module alone"
    assert Search(20, 40).steady_population == 12 and Search(20, 40, population=6).steady_population == 6
    assert Search(20, 40, optimizer="cma", population=8).steady_population == 8
    assert Search(20, 40, optimizer="ngopt", population=8).population == 1


def test_same_seed_same_search_other_seed_other_search():
    runs = []
    for seed in (3, 3, 4):
        search = Search(5, 24, seed=seed, population=6)
        minimize(search, sphere)
        runs.append([e.weights for e in search.history])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_ngopt_starts_like_the_reference_at_zero_then_probes_each_coordinate():
    search = Search(5, 6, optimizer="ngopt")
    minimize(search, sphere)
    weights = np.array([e.weights for e in search.history])
    np.testing.assert_allclose(weights[0], 0.0)
    np.testing.assert_allclose(weights[1], [0.5, 0, 0, 0, 0])


def test_score_is_loss_plus_l1_of_mean_absolute_weight():
    search = Search(5, 4, l1=0.05, population=4)
    minimize(search, sphere)
    for e in search.history:
        assert e.score == pytest.approx(e.loss + 0.05 * np.mean(np.abs(e.weights)))
    assert search.best.score == min(e.score for e in search.history)


def test_a_failing_candidate_gets_a_penalty_and_the_search_goes_on():
    calls = []

    def flaky(population):
        calls.append(len(population))
        outcomes = sphere(population)
        outcomes[0] = Outcome(math.nan, error=None) if len(calls) == 2 else outcomes[0]
        return outcomes

    search = Search(5, 12, optimizer="cma", population=4)
    with pytest.warns(BadLossWarning, match="failed"):
        minimize(search, flaky)
    failed = search.history[4]
    assert failed.loss is None
    assert failed.score > max(e.score for e in search.history[:4])
    assert len(search.history) == 12


def test_unknown_optimizer_lists_the_accepted_names():
    with pytest.raises(ConfigError, match=r"\['cma', 'ngopt', 'probes-cma', 'singles-cma'\]"):
        Search(5, 10, optimizer="adam")


def test_ask_twice_without_tell_is_an_error():
    search = Search(5, 10)
    search.ask()
    with pytest.raises(RuntimeError, match="tell"):
        search.ask()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_replaying_recorded_generations_restores_the_search_exactly(optimizer):
    whole = Search(5, 18, optimizer=optimizer, population=3, seed=5)
    minimize(whole, sphere)
    cut = 9
    resumed = Search(5, 18, optimizer=optimizer, population=3, seed=5)
    resumed.replay(whole.history[:cut])
    assert len(resumed.history) == cut and resumed.remaining == 18 - cut
    minimize(resumed, sphere)
    assert [e.weights for e in resumed.history] == [e.weights for e in whole.history]


@pytest.mark.parametrize(("optimizer", "step"), [("probes-cma", 0.5), ("singles-cma", 1.0)])
def test_probes_then_cma_starts_with_coordinate_probes_in_one_generation_then_moves_from_the_best(optimizer, step):
    search = Search(5, 30, optimizer=optimizer, population=4, seed=0)
    probes = search.ask()
    np.testing.assert_allclose(probes, np.vstack([np.zeros(5), step * np.eye(5)]))
    search.tell(sphere(probes))
    best_probe = probes[int(np.argmin([o.loss for o in sphere(probes)]))]
    following = search.ask()
    assert following.shape == (4, 5)
    assert np.linalg.norm(following.mean(axis=0) - best_probe) < np.linalg.norm(following.mean(axis=0))
    search.tell(sphere(following))
    minimize(search, sphere)
    assert len(search.history) == 30 and search.best.score < search.history[0].score


def test_same_seed_same_search_for_every_optimizer():
    for optimizer in OPTIMIZERS:
        runs = []
        for _ in range(2):
            search = Search(5, 16, optimizer=optimizer, population=4, seed=11)
            minimize(search, sphere)
            runs.append([e.weights for e in search.history])
        assert runs[0] == runs[1], optimizer
