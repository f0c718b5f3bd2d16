"""End to end: the search on an actor pool, determinism over actor counts, actor death, outputs."""

import json
import warnings

import numpy as np
import pytest
import torch
from peft import PeftModel

from actors import WorkerSpec
from actors.examples import tokenize_examples
from actors.model import load_base
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from lorahub_ray.run import run
from lorahub_ray.search import Search, minimize
from tests.conftest import EXAMPLES


def _config(world, **overrides):
    settings = dict(base=world["base"], modules=world["modules"], examples=EXAMPLES, budget=8, population=4, seed=7)
    return RunConfig(**{**settings, **overrides})


def _reloaded_loss(base, adapter):
    """Mean token cross-entropy of the saved adapter, loaded by PEFT the standard way."""
    model, tokenizer = load_base(base, torch.device("cpu"))
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    batch = tokenize_examples(tokenizer, EXAMPLES, bool(model.config.is_encoder_decoder))
    with torch.no_grad():
        return float(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss)


@pytest.mark.parametrize("mode", ["ab", "delta"])
def test_saved_adapter_reloads_to_the_best_loss_and_result_json_is_complete(world, mode, tmp_path):
    result = run(_config(world, mode=mode), PoolConfig(num_actors=0), tmp_path / "out", progress=False)
    assert _reloaded_loss(world["base"], tmp_path / "out" / "adapter") == pytest.approx(result.best_loss, rel=1e-5)
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(saved) >= {"weights", "best_score", "best_loss", "evaluations", "config", "history"}
    assert list(saved["weights"]) == world["modules"] and saved["evaluations"] == 8 == len(saved["history"])
    assert set(saved["history"][0]) >= {"weights", "score", "loss", "actor", "seconds"}
    assert saved["best_score"] == min(h["score"] for h in saved["history"])


def test_merge_option_writes_a_loadable_merged_model(t5_world, tmp_path):
    result = run(_config(t5_world, budget=4), PoolConfig(num_actors=0), tmp_path / "out", merge=True, progress=False)
    merged, tokenizer = load_base(str(tmp_path / "out" / "merged"), torch.device("cpu"))
    batch = tokenize_examples(tokenizer, EXAMPLES, True)
    with torch.no_grad():
        loss = float(merged(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss)
    assert loss == pytest.approx(result.best_loss, rel=1e-4)


def test_an_interrupted_search_leaves_only_its_checkpoint_and_resumes_to_the_same_result(t5_world, tmp_path):
    from lorahub_ray.run import resume

    def interrupt(search):
        if search.generation == 2:
            raise KeyboardInterrupt

    config = _config(t5_world, budget=12, population=3)
    with pytest.raises(KeyboardInterrupt):
        run(config, PoolConfig(num_actors=0), tmp_path / "out", progress=False, on_generation=interrupt)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["checkpoint.json"]
    resumed = resume(tmp_path / "out", PoolConfig(num_actors=0), progress=False)
    uninterrupted = run(config, PoolConfig(num_actors=0), tmp_path / "again", progress=False)
    assert [(e.weights, e.loss) for e in resumed.history] == [(e.weights, e.loss) for e in uninterrupted.history]
    assert resumed.weights == uninterrupted.weights
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter", "result.json"]


def test_nothing_is_written_when_the_search_fails_before_its_first_generation(t5_world, tmp_path):
    def interrupt(search):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_config(t5_world), PoolConfig(num_actors=0), None, progress=False, on_generation=interrupt)
    with pytest.raises(Exception, match="does not exist"):
        run(_config(t5_world, examples=str(tmp_path / "none.jsonl")), PoolConfig(num_actors=0), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_replaying_a_foreign_history_is_refused(t5_world, tmp_path):
    from lorahub_ray.errors import InputError

    history = run(_config(t5_world, seed=1), PoolConfig(num_actors=0), progress=False).history
    with pytest.raises(InputError, match="checkpoint comes from other settings"):
        run(_config(t5_world, seed=2), PoolConfig(num_actors=0), tmp_path / "out", history=history, progress=False)


@pytest.mark.ray
def test_one_and_two_actors_give_the_same_result(local_ray, world):
    one = run(_config(world), PoolConfig(num_actors=1), progress=False)
    two = run(_config(world), PoolConfig(num_actors=2), progress=False)
    assert [e.weights for e in one.history] == [e.weights for e in two.history]
    assert [e.loss for e in one.history] == [e.loss for e in two.history]
    assert one.weights == two.weights
    assert {e.actor for e in two.history} == {0, 1}


def _search(world, pool: WorkerPool, on_generation=None) -> list:
    """A 3-generation search of 4 candidates per generation on ``pool``; its history."""
    search = Search(len(world["modules"]), 12, population=4, seed=7)
    minimize(search, pool.evaluate, on_generation or (lambda search: None))
    return search.history


@pytest.fixture(scope="module")
def unfaulted(t5_world):
    """The history of the search with nothing going wrong (in-process, which equals any actor count)."""
    with WorkerPool(WorkerSpec(base=t5_world["base"], num_threads=1), load_stack(t5_world["modules"]), EXAMPLES,
                    PoolConfig(num_actors=0)) as pool:
        return [(e.weights, e.loss) for e in _search(t5_world, pool)]


def _search_with_fault(ray, world, fault: str, pool_config: PoolConfig):
    """The search on ``pool_config`` with ``fault`` in actor 0's share of generation 2: the history, the
    restarts, and whether actor 0 was replaced (its process id changed)."""
    stack = load_stack(world["modules"])
    with WorkerPool(WorkerSpec(base=world["base"], num_threads=1), stack, EXAMPLES, pool_config) as pool:
        first_pid = ray.get(pool.actors[0].pid.remote())

        def inject(search):
            if search.generation == 1:
                ray.get(pool.actors[0].inject_fault.remote(fault))

        history = _search(world, pool, inject)
        return [(e.weights, e.loss) for e in history], pool.restarts, ray.get(pool.actors[0].pid.remote()) != first_pid


@pytest.mark.ray
def test_an_actor_killed_mid_search_is_replaced_and_the_result_is_unchanged(local_ray, t5_world, unfaulted):
    survived, restarts, replaced = _search_with_fault(local_ray, t5_world, "exit", PoolConfig(num_actors=2))
    assert restarts == 1 and replaced
    assert survived == unfaulted


@pytest.mark.ray
def test_a_hung_actor_is_replaced_after_the_generation_timeout_and_the_result_is_unchanged(local_ray, t5_world,
                                                                                          unfaulted):
    # actor 0 never answers in generation 2: only the timeout can end that generation
    survived, restarts, replaced = _search_with_fault(local_ray, t5_world, "hang",
                                                      PoolConfig(num_actors=2, generation_timeout_s=5))
    assert restarts >= 1 and replaced  # >= 1: a healthy actor slower than 5 s would be replaced too
    assert survived == unfaulted


@pytest.mark.ray
def test_pool_reports_failed_startup_as_a_worker_error(local_ray, t5_world, tmp_path):
    from lorahub_ray.errors import WorkerError

    stack = load_stack(t5_world["modules"])
    with pytest.raises(WorkerError, match="failed to start"):
        WorkerPool(WorkerSpec(base=str(tmp_path / "gone")), stack, EXAMPLES, PoolConfig(num_actors=1))


@pytest.mark.ray
def test_more_actors_than_cpus_is_refused_up_front(local_ray, t5_world):
    from lorahub_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="3 actors x 1.0 CPU = 3.0 CPU, but the Ray cluster has 2.0"):
        run(_config(t5_world, population=6), PoolConfig(num_actors=3), progress=False)


@pytest.mark.ray
@pytest.mark.parametrize(("population", "warns"), [(6, False), (4, True)])
def test_the_uneven_population_warning_looks_past_the_first_generation(local_ray, t5_world, population, warns):
    from lorahub_ray.errors import ConfigError, InefficientSettingsWarning

    # singles-cma's first generation is N + 1 = 4 candidates; the generations after it have `population`.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="3 actors"):
            run(_config(t5_world, optimizer="singles-cma", population=population), PoolConfig(num_actors=3),
                progress=False)
    assert any(issubclass(w.category, InefficientSettingsWarning) for w in caught) == warns


@pytest.mark.ray
def test_a_failing_candidate_does_not_kill_the_pool(local_ray, t5_world):
    stack = load_stack(t5_world["modules"])
    with WorkerPool(WorkerSpec(base=t5_world["base"]), stack, EXAMPLES, PoolConfig(num_actors=2)) as pool:
        population = np.array([[np.nan, 0.0, 0.0], [0.1, 0.2, 0.3], [np.inf, 1.0, 0.0], [0.0, 0.0, 0.0]])
        outcomes = pool.evaluate(population)
        assert np.isnan(outcomes[0].loss) and np.isfinite(outcomes[1].loss) and np.isfinite(outcomes[3].loss)
        assert not np.isfinite(outcomes[2].loss)
        assert np.isfinite(pool.evaluate(np.zeros((2, 3)))[0].loss)  # the pool still works


@pytest.mark.ray
def test_batched_passes_give_the_same_result_whatever_the_actor_count(local_ray, t5_world):
    config = _config(t5_world, budget=12, population=6)
    one = run(config, PoolConfig(num_actors=1, candidates_per_pass=2), progress=False)
    two = run(config, PoolConfig(num_actors=2, candidates_per_pass=2), progress=False)
    assert [e.loss for e in one.history] == [e.loss for e in two.history]
    assert one.weights == two.weights
