"""Ray Tune proposing the composition weights: one trial = one candidate, scored on one shared actor pool."""

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from actors import Worker, WorkerSpec
from lorahub_ray.config import PoolConfig
from lorahub_ray.modules import load_stack
from lorahub_ray.output import is_own
from lorahub_ray.pool import WorkerPool
from lorahub_ray.search import FIRST_FAILURE_SCORE, failure_penalty
from lorahub_ray.tune import PoolServer, default_weight_searcher, weight_keys, weight_search
from tests.conftest import EXAMPLES
from tests.lorahub_ray.test_tune import _loss

L1 = 0.05


@pytest.fixture(scope="module")
def worker(t5_world):
    """An in-process worker: the independent judge of every score."""
    return Worker(WorkerSpec(base=t5_world["base"]), load_stack(t5_world["modules"]), EXAMPLES)


def _score(worker: Worker, weights) -> float:
    [result] = worker.evaluate(np.array([weights]))
    return result.loss + L1 * float(np.mean(np.abs(weights)))


def _trials(experiment: Path) -> list[tuple[list[float], dict]]:
    """Each trial's weights and its one report, read from Tune's own files."""
    trials = []
    for trial in sorted(experiment.glob("weight_trial_*")):
        [report] = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        trials.append(([report["config"][key] for key in weight_keys(3)], report))
    return trials


@pytest.fixture(scope="module")
def searched(local_ray, t5_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    result = weight_search(t5_world["base"], t5_world["modules"], EXAMPLES, budget=6, num_actors=2, l1=L1, seed=3,
                           output=root / "out", storage_path=root / "runs", name="default")
    return result, root


@pytest.mark.ray
def test_every_trial_reports_the_score_of_its_own_weights_and_the_best_is_exported(searched, worker, t5_world):
    result, root = searched
    trials = _trials(root / "runs" / "default")
    assert len(trials) == 6 and len(result.history) == 6
    for weights, report in trials:
        assert report["error"] == "" and max(abs(w) for w in weights) <= 1.5
        assert report["score"] == pytest.approx(_score(worker, weights), rel=1e-5, abs=1e-6)
    assert sorted(report["order"] for _, report in trials) == list(range(6))
    assert {report["actor"] for _, report in trials} == {0, 1}  # the pool's two actors shared the trials
    best_weights, best = min(trials, key=lambda trial: trial[1]["score"])
    assert result.best_score == best["score"] and result.best_loss == best["loss"]
    assert list(result.weights.values()) == best_weights and list(result.weights) == t5_world["modules"]
    saved = json.loads((root / "out" / "result.json").read_text())
    assert saved["best_score"] == result.best_score and saved["evaluations"] == 6
    assert is_own(root / "out")  # marked as lorahub-ray's own, so a later --overwrite may replace it
    assert _loss(t5_world["base"], root / "out" / "adapter", EXAMPLES) == pytest.approx(result.best_loss, rel=1e-5)


@pytest.mark.ray
def test_a_candidate_with_a_non_finite_loss_gets_the_failure_penalty(local_ray, t5_world, tmp_path, worker):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # 1e30 overflows the composed float32 update: the model's loss is NaN
    points = [{key: 1e30 for key in weight_keys(3)}, {key: 0.0 for key in weight_keys(3)}]
    searcher = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=2, random_state=0)
    result = weight_search(t5_world["base"], t5_world["modules"], EXAMPLES, search_alg=searcher, budget=4,
                           num_actors=2, l1=L1, storage_path=tmp_path, name="nan")
    assert len(result.history) == 4
    [failed] = [e for e in result.history if e.loss is None]
    assert failed.weights == [1e30] * 3 and failed.error == "loss nan"
    before = [e.score for e in result.history if e.loss is not None and e.generation < failed.generation]
    assert failed.score == failure_penalty(before) and (before or failed.score == FIRST_FAILURE_SCORE)
    for evaluation in result.history:
        if evaluation is not failed:
            assert evaluation.score == pytest.approx(_score(worker, evaluation.weights), rel=1e-5, abs=1e-6)
    assert result.best_score == min(e.score for e in result.history) < failed.score
    assert not math.isnan(result.best_loss)


@pytest.mark.ray
def test_the_pool_server_hands_concurrent_requests_to_free_actors(local_ray, t5_world, worker):
    spec, stack = WorkerSpec(base=t5_world["base"]), load_stack(t5_world["modules"])
    candidates = [[0.1 * i, -0.2, 0.3 - 0.1 * i] for i in range(6)]
    with WorkerPool(spec, stack, EXAMPLES, PoolConfig(num_actors=2)) as pool:
        server = local_ray.remote(num_cpus=0)(PoolServer).remote(pool.actors, L1)
        evaluations = local_ray.get([server.evaluate.remote(w) for w in candidates])  # all asked at once
    assert [e.weights for e in evaluations] == candidates
    assert sorted(e.generation for e in evaluations) == list(range(6)) and {e.actor for e in evaluations} == {0, 1}
    for evaluation in evaluations:
        assert evaluation.score == pytest.approx(_score(worker, evaluation.weights), rel=1e-5, abs=1e-6)


def _two_asks(searcher) -> list:
    """Two suggestions without a result in between, asked on a thread (NGOpt with one worker would block)."""
    asked = []
    thread = threading.Thread(target=lambda: asked.extend(searcher.suggest(t) for t in ("a", "b")), daemon=True)
    thread.start()
    thread.join(timeout=60)
    return asked


def test_the_default_searcher_proposes_concurrent_candidates_seeded():
    first = _two_asks(default_weight_searcher(3, budget=8, num_workers=2, bound=1.5, seed=0))
    assert len(first) == 2 and first[0] != first[1] and set(first[0]) == {"w0", "w1", "w2"}
    assert first == _two_asks(default_weight_searcher(3, budget=8, num_workers=2, bound=1.5, seed=0))
    assert first != _two_asks(default_weight_searcher(3, budget=8, num_workers=2, bound=1.5, seed=1))
