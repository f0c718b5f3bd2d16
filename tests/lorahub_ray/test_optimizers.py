"""The optimizers: every candidate inside the box, one module, populations CMA-ES cannot use, scoped warnings."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.optimizers import OPTIMIZERS, PROBE_STEP
from lorahub_ray.search import Outcome, Search, minimize

LIBRARY_NOTICES = ("COBYLA: Invalid", "orphanated injected solution")


def _sphere(target: np.ndarray):
    return lambda population: [Outcome(float(np.sum((w - target) ** 2))) for w in population]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("bound", [0.5, 0.3])
@pytest.mark.parametrize("num_modules", [1, 3])
def test_every_candidate_lies_inside_the_box(optimizer, bound, num_modules):
    search = Search(num_modules, budget=40, optimizer=optimizer, seed=0, bound=bound)
    minimize(search, _sphere(np.full(num_modules, 2.0)))  # the optimum lies outside: the search presses on the walls
    weights = np.array([e.weights for e in search.history])  # (budget, N)
    assert len(weights) == 40 and np.abs(weights).max() <= bound


@pytest.mark.parametrize("optimizer", ["probes-cma", "singles-cma"])
def test_probes_move_each_weight_by_at_most_the_bound(optimizer):
    first = Search(3, budget=20, optimizer=optimizer, bound=0.3).ask()
    assert np.array_equal(first, np.vstack([np.zeros(3), 0.3 * np.eye(3)]))


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_one_module_is_searched_seeded_and_deterministic(optimizer):
    def history(seed: int) -> list[list[float]]:
        search = Search(1, budget=30, optimizer=optimizer, seed=seed, bound=1.5)
        minimize(search, _sphere(np.array([0.4])))
        return [e.weights for e in search.history]

    first = history(7)
    np.random.seed(123)  # the global generator plays no part
    assert history(7) == first and len(first) == 30
    assert abs(min(first, key=lambda w: abs(w[0] - 0.4))[0] - 0.4) < 0.1, "the search moves towards the optimum"
    if optimizer != "ngopt":  # NGOpt (Cobyla) is deterministic whatever the seed
        assert history(8) != first


def test_a_population_below_two_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"`population` must be an integer >= 2 or None .* got 1"):
        RunConfig(base="b", modules=["m"], examples="e", population=1)
    with pytest.raises(ConfigError, match=r"`population` must be an integer >= 2 or None .* got 1"):
        Search(3, budget=10, optimizer="cma", population=1)
    assert Search(3, budget=10, optimizer="cma", population=2).population == 2


def test_importing_the_optimizers_leaves_the_warning_filters_alone():
    code = ("import warnings; before = list(warnings.filters); import lorahub_ray.optimizers; "
            "print([str(f[1].pattern) for f in warnings.filters if f not in before and f[1] is not None])")
    added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not any(notice.split()[0] in added for notice in LIBRARY_NOTICES), added


def test_library_notices_are_silenced_in_the_projects_own_calls_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        for optimizer, population in (("ngopt", None), ("probes-cma", 2)):  # both emit a notice without the scope
            minimize(Search(3, budget=60, optimizer=optimizer, population=population, seed=0),
                     _sphere(np.array([0.3, 0.3, 0.3])))
        assert warnings.filters == filters
    assert not [w for w in caught if str(w.message).startswith(LIBRARY_NOTICES)]


@pytest.mark.parametrize("num_modules", [1, 3])
def test_pycma_says_nothing_about_plotting_when_matplotlib_is_missing(num_modules):
    """pycma warns on import that it cannot plot without matplotlib; a search imports it, and says nothing."""
    code = ("import sys, warnings; sys.modules['matplotlib'] = None; warnings.simplefilter('always'); "
            "import numpy as np; from lorahub_ray.search import Outcome, Search, minimize; "
            f"search = Search({num_modules}, budget=12, optimizer='cma', population=4, seed=0); "
            "minimize(search, lambda p: [Outcome(float(np.sum(w ** 2))) for w in p]); "
            "assert 'cma' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "matplotlib" not in done.stderr, done.stderr


@pytest.mark.slow
def test_a_search_over_one_module_writes_its_adapter(t5_world, examples_file, tmp_path):
    from lorahub_ray.run import run

    config = RunConfig(base=t5_world["base"], modules=t5_world["modules"][:1], examples=str(examples_file), budget=6)
    result = run(config, PoolConfig(num_actors=0), tmp_path / "out", progress=False)
    assert len(result.history) == 6 and list(result.weights) == t5_world["modules"][:1]
    assert result.history[0].weights == [0.0] and result.history[1].weights == [PROBE_STEP]  # w = 0, then a probe
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
