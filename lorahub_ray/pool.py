"""WorkerPool: the only Ray code. Starts ``num_actors`` workers, ships the big inputs once, maps weights -> losses.

Symbols: P candidates, N modules.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from actors import ExampleSets, LoraStack, Outcome, Worker, WorkerSpec
from lorahub_ray.config import PoolConfig
from lorahub_ray.errors import ConfigError, InefficientSettingsWarning, WorkerError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # how long a cluster's address may take to accept a connection before joining is refused


class WorkerPool:
    """Evaluates populations on ``num_actors`` Ray actors (or in this process when ``num_actors == 0``).

    The module stack and the examples go into Ray's object store once; per call only weights go out and
    losses come back. Results come back in population order whatever actor ran them. An actor that dies, or
    that does not answer within ``config.generation_timeout_s``, is replaced and its chunk re-run. Ray started
    here is stopped by `close`, or before an error leaves the constructor.

    Args:
        spec: how each worker loads the base model and scores.
        stack: the module pool.
        examples: the few-shot examples, or `ExampleSets` for several searches at once (see `evaluate`).
        config: actors, resources, cluster address; ``self.config`` holds it resolved on the cluster
            (`PoolConfig.resolve`).

    Example:
        >>> with WorkerPool(spec, stack, examples, PoolConfig(num_actors=2)) as pool:  # doctest: +SKIP
        ...     outcomes = pool.evaluate(np.zeros((4, stack.num_modules)))
    """

    def __init__(self, spec: WorkerSpec, stack: LoraStack, examples: Sequence[dict[str, str]] | ExampleSets,
                 config: PoolConfig) -> None:
        self.config = config
        self._pass = spec.candidates_per_pass  # work is handed out in whole passes
        self._owns_ray = False  # whether close() shuts Ray down
        self._restarts = 0  # actor deaths so far
        self._local: Worker | None = None  # the in-process worker when there are no actors
        if config.num_actors == 0:
            _check_local_device(spec.device)
            self._local = Worker(spec, stack, examples)
            self.actors: list = []
            return
        import ray

        self.actors = []
        if not ray.is_initialized():
            _start_ray(config)
            self._owns_ray = True
        try:
            self.config = config = config.resolve(ray.cluster_resources().get("GPU", 0.0))
            self._check_resources()
            spec = replace(spec, gpus=config.gpus_per_actor)  # the actor's device follows what it reserved
            shipped = examples if isinstance(examples, ExampleSets) else list(examples)
            self._init_args = (spec, ray.put(stack), ray.put(shipped))  # one object-store copy each
            self.actors = [self._start_actor() for _ in range(config.num_actors)]
            self._pass = min(info["candidates_per_pass"] for info in self._wait_ready())
        except BaseException:
            self.close()
            raise

    def _check_resources(self) -> None:
        import ray

        total = ray.cluster_resources()
        for resource, per_actor in (("CPU", self.config.cpus_per_actor), ("GPU", self.config.gpus_per_actor)):
            need = per_actor * self.config.num_actors
            have = total.get(resource, 0.0)
            if need > have:
                message = (f"{self.config.num_actors} actors x {per_actor} {resource} = {need} {resource}, "
                           f"but the Ray cluster has {have}")
                if self.config.address is None:
                    raise ConfigError(f"{message}; lower `num_actors` or the per-actor resources")
                warnings.warn(f"{message}; actors wait until the cluster grows", InefficientSettingsWarning)

    def actor_starter(self) -> Callable[[], object]:
        """A picklable function that starts one more actor like this pool's (its replacements use it too)."""
        import ray

        options = {"num_cpus": self.config.cpus_per_actor, "num_gpus": self.config.gpus_per_actor}
        if ray.util.get_current_placement_group() is None:  # in one (a Tune trial's), stay in it: no strategy
            options["scheduling_strategy"] = "SPREAD"  # spread over nodes: more memory bandwidth per actor
        return functools.partial(_new_actor, options, self._init_args)

    def _start_actor(self):
        return self.actor_starter()()

    @property
    def restarts(self) -> int:
        """How many actors died or hung and were replaced so far."""
        return self._restarts

    def nodes(self) -> list[str]:
        """The Ray node id of each actor (empty without Ray)."""
        import ray

        return ray.get([actor.node_id.remote() for actor in self.actors])

    def _wait_ready(self) -> list[dict]:
        import ray

        try:
            return ray.get([actor.info.remote() for actor in self.actors])
        except ray.exceptions.RayError as err:
            raise WorkerError(f"the evaluator actors failed to start: {_first_line(err)}") from None

    def set_stack(self, stack: LoraStack) -> None:
        """Evaluate over another module stack from now on (shipped once; restarted actors get it too)."""
        if self._local is not None:
            self._local.set_stack(stack)
            return
        import ray

        self._init_args = (self._init_args[0], ray.put(stack), self._init_args[2])
        ray.get([actor.set_stack.remote(self._init_args[1]) for actor in self.actors])

    def evaluate(self, population: np.ndarray, example_sets: Sequence[int] | None = None) -> list[Outcome]:
        """Score every row of ``population`` ``(P, N)``, row p on example set ``example_sets[p]`` (``None``: the
        first set for all); one `Outcome` per row, in order."""
        population = np.atleast_2d(population)
        sets = [0] * len(population) if example_sets is None else list(example_sets)
        if self._local is not None:
            return self._local.evaluate(population, sets)
        passes = math.ceil(math.ceil(len(population) / len(self.actors)) / self._pass)
        size = passes * self._pass  # whole passes: every candidate shares a pass with the same others, whatever the actors
        chunks = [(population[i : i + size], sets[i : i + size]) for i in range(0, len(population), size)]
        results = self._run_chunks(chunks)
        return [outcome for chunk in results for outcome in chunk]

    def _run_chunks(self, chunks: list[tuple[np.ndarray, list[int]]]) -> list[list[Outcome]]:
        """Hand chunks to free actors; re-queue the chunk of an actor that died or hung and replace that actor."""
        results: list[list[Outcome] | None] = [None] * len(chunks)
        queue, idle = deque(range(len(chunks))), deque(range(len(self.actors)))
        running: dict = {}  # object ref -> (actor index, chunk index, deadline on the monotonic clock)
        timeout = self.config.generation_timeout_s
        while queue or running:
            while queue and idle:
                slot, index = idle.popleft(), queue.popleft()
                deadline = math.inf if timeout is None else time.monotonic() + timeout
                running[self.actors[slot].evaluate.remote(*chunks[index])] = (slot, index, deadline)
            ref, losses, lost = self._next_finished(running)
            slot, index, _ = running.pop(ref)
            if lost is not None:
                queue.appendleft(index)
                self._replace(slot, lost)
            else:
                results[index] = [replace(r, actor=slot) for r in losses]
            idle.append(slot)
        return results  # type: ignore[return-value]

    def _next_finished(self, running: dict) -> tuple[object, list | None, str | None]:
        """The next chunk done: its ref, and its losses or why its actor is lost (died, or past its deadline)."""
        import ray

        earliest = min(deadline for _, _, deadline in running.values())
        wait = None if earliest == math.inf else max(0.0, earliest - time.monotonic())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=wait)
        if not ready:
            late = min(running, key=lambda ref: running[ref][2])
            return late, None, (f"no answer within `generation_timeout_s` = {self.config.generation_timeout_s} s; "
                                "treated as hung")
        try:
            return ready[0], ray.get(ready[0]), None
        except ray.exceptions.RayActorError as err:
            return ready[0], None, _first_line(err)

    def _replace(self, slot: int, why: str) -> None:
        """Kill actor ``slot`` and start a new one in its place, ready before it is given work."""
        import ray

        self._restarts += 1
        if self._restarts > self.config.max_restarts:
            raise WorkerError(f"actors died or hung {self._restarts} times (limit `max_restarts` = "
                              f"{self.config.max_restarts}); last: {why}")
        log.warning("actor %d lost (%s); re-running its candidates on a new actor", slot, why)
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start_actor()
        try:
            ray.get(self.actors[slot].info.remote())
        except ray.exceptions.RayError as err:
            raise WorkerError(f"a replacement evaluator actor failed to start: {_first_line(err)}") from None

    def close(self) -> None:
        """Stop the actors, and Ray itself if this pool started it. Safe to call more than once."""
        if self._local is not None:
            return
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_local_device(device: str) -> None:
    """In-process evaluation on ``"cuda"`` needs a GPU that this process's torch can see."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device` 'cuda' in this process (`num_actors` 0), but torch sees no GPU here "
                          f"(torch {torch.__version__}); use `device` 'auto' or 'cpu', or actors with GPUs")


def ray_address(config: PoolConfig) -> str:
    """The address Ray is started with: ``config.address``, else the ``RAY_ADDRESS`` environment variable, else
    ``"local"``: a private instance, never a cluster that ``ray start`` left on this machine."""
    return config.address or os.environ.get("RAY_ADDRESS") or "local"


def _start_ray(config: PoolConfig) -> None:
    """Start a private Ray, or join the cluster at `ray_address`; a cluster that cannot be reached is a
    `ConfigError` within `CONNECT_TIMEOUT_S` seconds, not a retry loop."""
    import ray

    address = ray_address(config)
    if address != "local":
        _check_reachable(address)
    try:
        with auth_notice_quieted():
            ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False,
                     configure_logging=False)
    except ConnectionError as err:
        raise ConfigError(f"cannot join the Ray cluster at address {address!r}: {_first_line(err)}") from None


AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"  # Ray's console notice at every start
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextmanager
def auth_notice_quieted() -> Iterator[None]:
    """Drop Ray's notice that token authentication is on (it is, and stays on) while Ray starts; every other
    message of that logger, the warning that authentication is off included, still shows."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(AUTH_NOTICE)

    logger = logging.getLogger(AUTH_LOGGER)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _check_reachable(address: str) -> None:
    """Refuse ``address`` unless its host accepts a connection on its port within `CONNECT_TIMEOUT_S` seconds."""
    from ray._private.services import canonicalize_bootstrap_address

    hint = "start it (`ray start --head`) or fix `address` / --address / RAY_ADDRESS"
    try:  # "auto": the address `ray start` recorded on this machine; "ray://host:port": the client server's
        target = canonicalize_bootstrap_address(address.split("://", 1)[-1])
    except Exception as err:
        raise ConfigError(f"`address` must be 'auto', 'host:port' or 'ray://host:port', got {address!r} "
                          f"({_first_line(err)})") from None
    if target is None:  # "auto" with nothing recorded: Ray looks for a running instance itself
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(f"no Ray cluster answers at address {address!r} ({target}) within {CONNECT_TIMEOUT_S:g} "
                          f"s: {err.strerror or err}; {hint}") from None


@contextmanager
def ray_session(config: PoolConfig) -> Iterator[PoolConfig]:
    """Ray for the duration of the block: started (or joined, with ``config.address``) and stopped here,
    unless the pool needs none or Ray already runs (then it is left as it is). Yields ``config`` resolved on
    the cluster (`PoolConfig.resolve`), so that its actor count is known before any actor starts."""
    import ray

    if config.num_actors == 0:
        yield config
        return
    if ray.is_initialized():
        yield config.resolve(ray.cluster_resources().get("GPU", 0.0))
        return
    _start_ray(config)
    try:
        yield config.resolve(ray.cluster_resources().get("GPU", 0.0))
    finally:
        ray.shutdown()


def _new_actor(options: dict, init_args: tuple):
    """Start one `Worker` actor with Ray ``options`` (resources, scheduling) and ``init_args``."""
    return _remote_worker_class().options(**options).remote(*init_args)


@functools.cache
def _remote_worker_class():
    """`Worker` as a Ray actor class: told the GPU ids Ray assigned it, and able to name its node."""
    import ray

    class RayWorker(Worker):
        def __init__(self, spec: WorkerSpec, stack: LoraStack,
                     examples: Sequence[dict[str, str]] | ExampleSets) -> None:
            super().__init__(spec, stack, examples, gpu_ids=ray.get_gpu_ids())

        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

    return ray.remote(RayWorker)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
