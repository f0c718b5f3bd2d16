"""GPU defaults: with no resource settings, one actor per GPU of the cluster; set ones are kept."""

import pytest

from actors import WorkerSpec
from lorahub_ray.config import PoolConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from tests.conftest import EXAMPLES


@pytest.mark.parametrize(("settings", "cluster_gpus", "actors", "gpus"), [
    ({}, 4, 4, 1.0),  # nothing set: one actor per GPU
    ({}, 0, 1, 0.0),  # no GPU: one CPU actor
    ({}, 2.5, 2, 1.0),  # whole GPUs only
    ({"num_actors": 3}, 1, 3, 0.3333),  # actors set: the GPUs shared out
    ({"num_actors": 2}, 4, 2, 1.0),  # at most one each
    ({"num_actors": 2}, 0, 2, 0.0),
    ({"gpus_per_actor": 0.0}, 4, 1, 0.0),  # GPUs per actor set: kept, one actor
    ({"gpus_per_actor": 0.5, "num_actors": 2}, 4, 2, 0.5),
    ({"num_actors": 0}, 4, 0, 0.0),  # in process: no Ray resources
])
def test_resolved_actors_and_gpus(settings, cluster_gpus, actors, gpus):
    resolved = PoolConfig(**settings).resolve(cluster_gpus)
    assert (resolved.num_actors, resolved.gpus_per_actor) == (actors, gpus)


def test_cuda_actors_on_a_cluster_without_gpus_are_refused_when_resolved():
    config = PoolConfig(device="cuda")  # nothing to check before the cluster is known
    assert config.resolve(1).gpus_per_actor == 1.0
    with pytest.raises(ConfigError, match="`gpus_per_actor`"):
        config.resolve(0)


@pytest.mark.ray
def test_a_pool_with_default_settings_starts_one_actor_per_gpu_of_the_cluster(t5_world):
    """A private Ray declaring 2 GPUs (there are none: the workers compute on the CPU, as told)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    try:
        spec = WorkerSpec(base=t5_world["base"], device="cpu", num_threads=1)
        with WorkerPool(spec, load_stack(t5_world["modules"]), EXAMPLES, PoolConfig(device="cpu")) as pool:
            infos = ray.get([actor.info.remote() for actor in pool.actors])
            assert (pool.config.num_actors, pool.config.gpus_per_actor) == (2, 1.0)
        assert sorted(str(i["gpu_ids"][0]) for i in infos) == ["0", "1"], "one GPU each, a different one"
        assert all(i["gpus"] == 1.0 and i["device"] == "cpu" for i in infos)
    finally:
        ray.shutdown()
