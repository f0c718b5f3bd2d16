"""Joining an existing multi-node Ray cluster with `address`, and actors spreading over its nodes."""

import pytest

from actors import WorkerSpec
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from lorahub_ray.run import run
from tests.conftest import EXAMPLES


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.mark.ray
def test_actors_spread_over_the_nodes_of_an_existing_cluster(two_node_cluster, t5_world):
    import ray

    stack = load_stack(t5_world["modules"])
    with WorkerPool(WorkerSpec(base=t5_world["base"]), stack, EXAMPLES,
                    PoolConfig(num_actors=2, address=two_node_cluster.address)) as pool:
        nodes = pool.nodes()
        assert len(set(nodes)) == 2
        assert set(nodes) == {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert not ray.is_initialized()  # the pool joined the cluster, so it also leaves it


@pytest.mark.ray
def test_search_on_a_cluster_equals_the_in_process_search(two_node_cluster, t5_world):
    config = RunConfig(base=t5_world["base"], modules=t5_world["modules"], examples=EXAMPLES, budget=6,
                       population=2, seed=3)
    on_cluster = run(config, PoolConfig(num_actors=2, address=two_node_cluster.address), progress=False)
    in_process = run(config, PoolConfig(num_actors=0), progress=False)
    assert [e.loss for e in on_cluster.history] == [e.loss for e in in_process.history]
    assert on_cluster.weights == in_process.weights
