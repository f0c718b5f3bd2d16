"""One pool shared by concurrent searches: `SharedPool` mixes requests into one call; Tune trials on it."""

import json

import numpy as np
import pytest

from actors import ExampleSets, WorkerSpec
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.modules import load_stack
from lorahub_ray.run import run
from lorahub_ray.shared_pool import SharedPool
from lorahub_ray.tune import sweep
from tests.conftest import EXAMPLES

UPPER = [{"input": f"Upper: {ex['output']}\nAnswer:", "output": ex["output"].upper()} for ex in EXAMPLES]


@pytest.mark.ray
def test_requests_that_arrive_together_share_one_call_and_keep_their_own_losses(local_ray, t5_world):
    from actors import Worker

    stack = load_stack(t5_world["modules"])
    sets = ExampleSets(((*EXAMPLES,), (*UPPER,)))
    spec = WorkerSpec(base=t5_world["base"], num_threads=1)
    server = local_ray.remote(num_cpus=0)(SharedPool).remote(spec, stack, sets, PoolConfig(num_actors=1),
                                                             gather_s=1.0)
    assert local_ray.get(server.start.remote())["actors"] == 1
    rng = np.random.default_rng(0)
    first, second = rng.uniform(-1, 1, (3, stack.num_modules)), rng.uniform(-1, 1, (2, stack.num_modules))
    refs = [server.evaluate.remote(first, [0, 0, 0]), server.evaluate.remote(second, [1, 1])]
    got = local_ray.get(refs)
    assert local_ray.get(server.stats.remote())["calls"] == 1, "the second request joined the first one's call"
    alone = Worker(spec, stack, sets)
    assert [o.loss for o in got[0]] == [r.loss for r in alone.evaluate(first, [0, 0, 0])]
    assert [o.loss for o in got[1]] == [r.loss for r in alone.evaluate(second, [1, 1])]
    local_ray.get(server.close.remote())
    local_ray.kill(server)


def _tasks(root):
    tasks = {}
    for name, examples in (("reverse", EXAMPLES), ("upper", UPPER)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in examples))
        tasks[name] = str(root / f"{name}.jsonl")
    return tasks


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_trials_on_one_shared_pool_get_the_results_they_get_alone(local_ray, t5_world, tmp_path):
    tasks = _tasks(tmp_path)
    settings = dict(base=t5_world["base"], modules=t5_world["modules"], budget=6, population=3, seed=5)
    started = _evaluator_actors()
    rows = sweep(tasks, {"l1": [0.0, 0.1]}, storage_path=tmp_path / "runs", name="shared", verbose=0,
                 shared_pool=True, actors=1, **settings)
    assert _evaluator_actors() == started + 1, "one evaluator actor for the 4 trials, none of their own"
    trials = sorted((tmp_path / "runs" / "shared").glob("search_trial_*"))
    assert len(trials) == 4
    for trial in trials:
        saved = json.loads((trial / "search" / "result.json").read_text())
        config = RunConfig(**{**settings, "examples": tasks[_task(trial)], "l1": saved["config"]["l1"]})
        alone = run(config, PoolConfig(num_actors=0), progress=False)
        assert [e["loss"] for e in saved["history"]] == [e.loss for e in alone.history]
        assert saved["weights"] == alone.weights
    assert {row["task"] for row in rows} == set(tasks)
    for row in rows:
        assert (tmp_path / "runs" / "shared" / "best" / row["task"] / "adapter").is_dir()


def _evaluator_actors() -> int:
    """Evaluator actors started so far on this Ray, dead ones too (from the GCS's actor table: the state API needs
    the dashboard, which the test cluster does not start)."""
    from ray._private.state import actors

    return sum(info["ActorClassName"].endswith("RayWorker") for info in actors().values())


def _task(trial) -> str:
    return json.loads((trial / "params.json").read_text())["task"]


@pytest.mark.parametrize("change, message", [
    ({"param_space": {"actors": [1, 2]}}, r"sweeps \['actors'\]: with `shared_pool` every trial uses the one pool"),
    ({"param_space": {"mode": ["ab", "delta"]}}, r"trials\[1\]\.mode is 'delta' but trials\[0\]\.mode is 'ab'"),
    ({"param_space": {"prefilter": ["loss:2"]}}, r"trials\[0\]\.prefilter is 'loss:2': searches on one pool run no"),
    ({"actors": 0}, r"a shared pool needs `actors` >= 1"),
])
def test_a_shared_pool_sweep_refuses_trials_that_cannot_share_it(t5_world, tmp_path, change, message):
    settings = dict(base=t5_world["base"], modules=t5_world["modules"], budget=6, population=3,
                    param_space={"l1": [0.0]})
    settings.update(change)
    with pytest.raises(ConfigError, match=message):
        sweep(_tasks(tmp_path), storage_path=tmp_path / "runs", name="refused", verbose=0, shared_pool=True,
              **settings)
    assert not (tmp_path / "runs").exists()


@pytest.mark.ray
def test_a_shared_pool_that_cannot_start_raises_its_own_error(local_ray, t5_world, tmp_path):
    with pytest.raises(ConfigError, match=r"3 actors x 1.0 CPU = 3.0 CPU, but the Ray cluster has 2.0"):
        sweep(_tasks(tmp_path), {"l1": [0.0]}, storage_path=tmp_path / "runs", name="big", verbose=0,
              shared_pool=True, base=t5_world["base"], modules=t5_world["modules"], budget=6, actors=3)


def test_run_on_a_given_evaluator_is_the_run_on_its_own_pool(t5_world, tmp_path):
    from actors import Worker

    config = RunConfig(base=t5_world["base"], modules=t5_world["modules"], examples=EXAMPLES, budget=6, population=3,
                       seed=3)
    worker = Worker(WorkerSpec(base=t5_world["base"], num_threads=1), load_stack(t5_world["modules"]), EXAMPLES)
    calls = []

    def evaluate(population):
        calls.append(len(population))
        return worker.evaluate(population)

    given = run(config, output=tmp_path / "given", progress=False, evaluate=evaluate)
    own = run(config, PoolConfig(num_actors=0), progress=False)
    assert sum(calls) == config.budget and len(calls) > 1
    assert given.weights == own.weights and given.best_score == own.best_score
    assert (tmp_path / "given" / "adapter").is_dir() and (tmp_path / "given" / "result.json").is_file()
    with pytest.raises(ConfigError, match=r"`prefilter` 'loss:2': a search on a shared evaluator runs no pre-filter"):
        run(RunConfig(**{**config.to_dict(), "prefilter": "loss:2"}), progress=False, evaluate=evaluate)
