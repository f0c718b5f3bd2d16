"""WorkerPool and PoolServer lifecycle: which Ray is started or joined, Ray never left running after an error,
devices, and hung actors behind the Tune pool server."""

import logging
import math
import socket

import numpy as np
import pytest

from actors import Worker, WorkerSpec
from lorahub_ray.cli import main
from lorahub_ray.config import PoolConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from tests.conftest import EXAMPLES


class _Stop(Exception):
    """Raised by the recording `ray.init` so that nothing starts."""


@pytest.fixture()
def listening():
    """A local TCP port that accepts connections (a stand-in for a cluster's address)."""
    with socket.socket() as server:
        server.bind(("", 0))  # every interface: Ray resolves 127.0.0.1 to this node's address
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture()
def recorded_init(monkeypatch):
    """`ray.init` replaced by one that records its address and starts nothing."""
    import ray

    assert not ray.is_initialized()
    addresses = []

    def init(address=None, **kwargs):
        addresses.append(address)
        raise _Stop

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return addresses


def _pool(world, config: PoolConfig) -> WorkerPool:
    return WorkerPool(WorkerSpec(base=world["base"]), load_stack(world["modules"]), EXAMPLES, config)


def test_the_default_starts_a_private_ray_and_only_an_address_joins_a_cluster(recorded_init, t5_world, listening,
                                                                              monkeypatch):
    with pytest.raises(_Stop):
        _pool(t5_world, PoolConfig(num_actors=1))
    monkeypatch.setenv("RAY_ADDRESS", listening)
    with pytest.raises(_Stop):
        _pool(t5_world, PoolConfig(num_actors=1))
    with pytest.raises(_Stop):
        _pool(t5_world, PoolConfig(num_actors=1, address=f"ray://{listening}"))
    assert recorded_init == ["local", listening, f"ray://{listening}"]


def test_a_connection_error_from_ray_is_a_config_error_naming_the_address(t5_world, listening, monkeypatch):
    import ray

    def init(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ConfigError, match=f"cannot join the Ray cluster at address '{listening}': Failed to connect"):
        _pool(t5_world, PoolConfig(num_actors=1, address=listening))


def test_an_unreachable_cluster_is_a_one_line_error_not_a_retry_loop(t5_world, examples_file, tmp_path, capsys):
    import ray

    with pytest.raises(ConfigError, match=r"no Ray cluster answers at address '127.0.0.1:1' .* within 10 s"):
        _pool(t5_world, PoolConfig(num_actors=1, address="127.0.0.1:1"))
    assert not ray.is_initialized()
    code = main(["search", "--base", t5_world["base"], "--modules", *t5_world["modules"], "--examples",
                 str(examples_file), "--output", str(tmp_path / "out"), "--address", "127.0.0.1:1", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: no Ray cluster answers at address '127.0.0.1:1'")


@pytest.mark.parametrize(("settings", "field"), [
    ({"device": "cuda", "gpus_per_actor": 0.0}, "gpus_per_actor"), ({"num_actors": -1}, "num_actors"),
    ({"num_actors": 1.5}, "num_actors"), ({"gpus_per_actor": -0.5}, "gpus_per_actor"),
    ({"generation_timeout_s": 0}, "generation_timeout_s"), ({"generation_timeout_s": -1.0}, "generation_timeout_s"),
    ({"generation_timeout_s": math.nan}, "generation_timeout_s"),
    ({"cpus_per_actor": math.nan}, "cpus_per_actor"), ({"cpus_per_actor": math.inf}, "cpus_per_actor"),
    ({"gpus_per_actor": math.nan}, "gpus_per_actor"), ({"gpus_per_actor": math.inf}, "gpus_per_actor"),
])
def test_bad_pool_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        PoolConfig(**{"num_actors": 1, **settings})


def test_cuda_is_accepted_in_process_or_with_a_gpu_reserved():
    assert PoolConfig(num_actors=0, device="cuda").device == "cuda"
    assert PoolConfig(num_actors=2, device="cuda", gpus_per_actor=0.5).device == "cuda"
    assert PoolConfig(generation_timeout_s=None).generation_timeout_s is None


@pytest.mark.ray
def test_a_pool_that_fails_its_resource_check_stops_the_ray_it_started(t5_world):
    import ray

    assert not ray.is_initialized()
    try:
        with pytest.raises(ConfigError, match="1 actors x 64.0 CPU"):
            _pool(t5_world, PoolConfig(num_actors=1, cpus_per_actor=64.0))
        assert not ray.is_initialized()
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_actors_that_reserve_no_gpu_report_cpu_and_no_gpu_ids(local_ray, t5_world):
    with _pool(t5_world, PoolConfig(num_actors=1)) as pool:
        info = local_ray.get(pool.actors[0].info.remote())
    assert (info["device"], info["gpus"], info["gpu_ids"]) == ("cpu", 0.0, [])


@pytest.mark.ray
def test_the_pool_server_replaces_a_hung_actor_and_scores_the_candidate_again(local_ray, t5_world):
    from lorahub_ray.tune import PoolServer

    spec = WorkerSpec(base=t5_world["base"], num_threads=1)
    stack = load_stack(t5_world["modules"])
    population = np.random.default_rng(2).uniform(-1, 1, (3, 3))
    expected = [r.loss for r in Worker(spec, stack, EXAMPLES).evaluate(population)]
    with WorkerPool(spec, stack, EXAMPLES, PoolConfig(num_actors=2)) as pool:
        local_ray.get(pool.actors[0].inject_fault.remote("hang"))
        server = local_ray.remote(num_cpus=0)(PoolServer).remote(pool.actors, 0.0, pool.actor_starter(), 5.0, 3)
        try:
            evaluations = local_ray.get([server.evaluate.remote(list(w)) for w in population])
            restarts = local_ray.get(server.restarts.remote())
        finally:
            local_ray.kill(server)
    assert [e.loss for e in evaluations] == expected
    assert restarts >= 1  # the hung actor (and any healthy one slower than 5 s)


def test_in_process_cuda_without_a_gpu_is_one_error_line(t5_world, examples_file, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["search", "--base", t5_world["base"], "--modules", *t5_world["modules"], "--examples",
                 str(examples_file), "--output", str(tmp_path / "out"), "--actors", "0", "--device", "cuda",
                 "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: `device` 'cuda' in this process (`num_actors` 0)")
    assert not (tmp_path / "out").exists()


class _Records(logging.Handler):
    """Keeps the messages of the records it handles."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def auth_messages():
    """The messages of Ray's authentication logger, recorded by a handler on that logger itself (Ray's loggers do
    not propagate to the root logger, which pytest's caplog listens to)."""
    from lorahub_ray.pool import AUTH_LOGGER

    logger, records = logging.getLogger(AUTH_LOGGER), _Records()
    logger.addHandler(records)
    yield records.messages
    logger.removeHandler(records)


def test_ray_start_drops_only_the_notice_that_authentication_is_on(auth_messages):
    from lorahub_ray.pool import AUTH_LOGGER, AUTH_NOTICE, auth_notice_quieted

    logger = logging.getLogger(AUTH_LOGGER)
    with auth_notice_quieted():
        logger.warning(f"{AUTH_NOTICE}. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster.")
    logger.warning(f"{AUTH_NOTICE}, after the start.")
    assert auth_messages == ["Token authentication is disabled for this Ray cluster.", f"{AUTH_NOTICE}, after the start."]


def test_the_notice_dropped_is_the_one_this_ray_prints(auth_messages):
    """Ray's own notice (Ray >= 2.5x; older Ray has no token authentication and prints none) matches `AUTH_NOTICE`."""
    from lorahub_ray.pool import AUTH_LOGGER, AUTH_NOTICE, auth_notice_quieted

    ray_auth = pytest.importorskip("ray._private.authentication.authentication_token_setup",
                                   reason="this Ray has no token authentication, so no notice to drop")
    assert ray_auth.__name__ == AUTH_LOGGER
    with auth_notice_quieted():
        ray_auth._warn_token_auth_enabled()
    ray_auth._warn_token_auth_enabled()
    assert len(auth_messages) == 1 and auth_messages[0].startswith(AUTH_NOTICE)
