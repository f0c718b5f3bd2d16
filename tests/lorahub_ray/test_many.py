"""Many searches on one pool: each search's result equals the same search run alone; settings and outputs checked."""

import json

import numpy as np
import pytest

from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.many import run_many
from lorahub_ray.run import resume, run
from tests.conftest import EXAMPLES

OTHER = [{"input": "x", "output": "yz"}, {"input": "hello there", "output": "q"}, {"input": "a b", "output": "zz"}]


def _configs(world):
    modules = world["modules"]
    return [RunConfig(base=world["base"], modules=modules, examples=EXAMPLES, budget=9, seed=1),
            RunConfig(base=world["base"], modules=modules, examples=OTHER, budget=6, seed=2, optimizer="cma",
                      population=3),
            RunConfig(base=world["base"], modules=modules, examples=EXAMPLES, budget=7, seed=3, optimizer="ngopt")]


def _same(many, alone):
    assert many.weights == alone.weights and many.best_score == alone.best_score
    assert [e.weights for e in many.history] == [e.weights for e in alone.history]
    assert [e.score for e in many.history] == [e.score for e in alone.history]


def test_each_search_of_many_matches_it_run_alone_in_process(world, tmp_path):
    configs = _configs(world)
    results = run_many(configs, PoolConfig(num_actors=0), [tmp_path / str(i) for i in range(3)], progress=False)
    assert [r.evaluations for r in results] == [9, 6, 7]
    for i, (config, result) in enumerate(zip(configs, results)):
        _same(result, run(config, PoolConfig(num_actors=0), progress=False))
        saved = json.loads((tmp_path / str(i) / "result.json").read_text())
        assert saved["weights"] == result.weights and (tmp_path / str(i) / "adapter").is_dir()


def test_mixed_passes_on_actors_give_the_lone_searches_losses(t5_world, local_ray):
    """Two actors scoring up to 4 candidates a pass: 2 x 3 candidates a round go out as 4 + 2, so a pass mixes
    searches with other examples. The losses match the lone searches' within float rounding, and so do the paths
    the searches take."""
    configs = [RunConfig(base=t5_world["base"], modules=t5_world["modules"], examples=chosen, budget=9, seed=5,
                         optimizer="cma", population=3) for chosen in (EXAMPLES, OTHER)]
    pool = PoolConfig(num_actors=2, candidates_per_pass=4)
    results = run_many(configs, pool, progress=False)
    for config, result in zip(configs, results):
        alone = run(config, PoolConfig(num_actors=0), progress=False)
        np.testing.assert_allclose([e.score for e in result.history], [e.score for e in alone.history], rtol=1e-5)
        np.testing.assert_allclose([e.weights for e in result.history], [e.weights for e in alone.history])


def test_searches_over_different_module_lists_share_the_union(t5_world, tmp_path):
    modules = t5_world["modules"]
    configs = [RunConfig(base=t5_world["base"], modules=modules[:2], examples=EXAMPLES, budget=5, seed=1),
               RunConfig(base=t5_world["base"], modules=modules[1:][::-1], examples=OTHER, budget=5, seed=1)]
    results = run_many(configs, PoolConfig(num_actors=0), [tmp_path / "a", None], progress=False)
    for config, result in zip(configs, results):
        alone = run(config, PoolConfig(num_actors=0), progress=False)
        assert list(result.weights) == config.modules and result.stack.names == tuple(config.modules)
        np.testing.assert_allclose([e.score for e in result.history], [e.score for e in alone.history], rtol=1e-6)
    assert json.loads((tmp_path / "a" / "result.json").read_text())["config"]["modules"] == modules[:2]


def test_a_search_of_many_resumes_alone_from_its_checkpoint(world, tmp_path):
    configs = _configs(world)[:2]
    stopped = {"rounds": 0}

    class Stop(Exception):
        pass

    import lorahub_ray.many as many

    real = many._after_generation

    def stop_after_two_rounds(search, index, *args):
        real(search, index, *args)
        stopped["rounds"] += index == 1
        if stopped["rounds"] == 2:
            raise Stop

    many._after_generation = stop_after_two_rounds
    try:
        with pytest.raises(Stop):
            run_many(configs, PoolConfig(num_actors=0), [tmp_path / "a", tmp_path / "b"], progress=False)
    finally:
        many._after_generation = real
    assert (tmp_path / "b" / "checkpoint.json").is_file() and not (tmp_path / "b" / "result.json").exists()
    _same(resume(tmp_path / "b", PoolConfig(num_actors=0), progress=False),
          run(configs[1], PoolConfig(num_actors=0), progress=False))


def test_settings_that_must_be_shared_are_checked_first(world, tmp_path):
    configs = _configs(world)
    with pytest.raises(ConfigError, match=r"configs\[1\].mode is 'delta'"):
        run_many([configs[0], RunConfig(**{**configs[1].to_dict(), "mode": "delta"})], PoolConfig(num_actors=0))
    with pytest.raises(ConfigError, match="prefilter"):
        run_many([RunConfig(**{**configs[0].to_dict(), "prefilter": "random:2"})], PoolConfig(num_actors=0))
    with pytest.raises(ConfigError, match="distinct"):
        run_many(configs[:2], PoolConfig(num_actors=0), [tmp_path / "x", tmp_path / "x"])
    with pytest.raises(ConfigError, match="one directory"):
        run_many(configs[:2], PoolConfig(num_actors=0), [tmp_path / "x"])
    assert not (tmp_path / "x").exists()
