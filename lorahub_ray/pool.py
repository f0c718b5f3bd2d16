"""WorkerPool: the only Ray code. Starts ``num_actors`` workers, ships the big inputs once, maps weights -> losses.

Symbols: P candidates, N modules.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from actors import LoraStack, Worker, WorkerSpec
from lorahub_ray.config import PoolConfig
from lorahub_ray.errors import ConfigError, InefficientSettingsWarning, WorkerError
from lorahub_ray.search import Outcome

log = logging.getLogger(__name__)


class WorkerPool:
    """Evaluates populations on ``num_actors`` Ray actors (or in this process when ``num_actors == 0``).

    The module stack and the examples go into Ray's object store once; per call only weights go out and
    losses come back. Results come back in population order whatever actor ran them. An actor that dies
    has its chunk re-run on a live actor and is replaced.

    Args:
        spec: how each worker loads the base model and scores.
        stack: the module pool.
        examples: the few-shot examples.
        config: actors, resources, cluster address.

    Example:
        >>> with WorkerPool(spec, stack, examples, PoolConfig(num_actors=2)) as pool:  # doctest: +SKIP
        ...     outcomes = pool.evaluate(np.zeros((4, stack.num_modules)))
    """

    def __init__(self, spec: WorkerSpec, stack: LoraStack, examples: Sequence[dict[str, str]],
                 config: PoolConfig) -> None:
        self.config = config
        self._pass = spec.candidates_per_pass  # work is handed out in whole passes
        self._owns_ray = False  # whether close() shuts Ray down
        self._restarts = 0  # actor deaths so far
        self._local: Worker | None = None  # the in-process worker when there are no actors
        if config.num_actors == 0:
            self._local = Worker(spec, stack, examples)
            self.actors: list = []
            return
        import ray

        if not ray.is_initialized():
            self._owns_ray = True
            _start_ray(config)
        self._check_resources()
        self._remote_worker = _remote_worker_class()
        self._init_args = (spec, ray.put(stack), ray.put(list(examples)))  # one object-store copy each
        self.actors = [self._start_actor() for _ in range(config.num_actors)]
        self._wait_ready()

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

    def _start_actor(self):
        import ray

        options = {"num_cpus": self.config.cpus_per_actor, "num_gpus": self.config.gpus_per_actor}
        if ray.util.get_current_placement_group() is None:  # in one (a Tune trial's), stay in it: no strategy
            options["scheduling_strategy"] = "SPREAD"  # spread over nodes: more memory bandwidth per actor
        return self._remote_worker.options(**options).remote(*self._init_args)

    @property
    def restarts(self) -> int:
        """How many actors died and were replaced so far."""
        return self._restarts

    def nodes(self) -> list[str]:
        """The Ray node id of each actor (empty without Ray)."""
        import ray

        return ray.get([actor.node_id.remote() for actor in self.actors])

    def _wait_ready(self) -> None:
        import ray

        try:
            ray.get([actor.info.remote() for actor in self.actors])
        except ray.exceptions.RayError as err:
            self.close()
            raise WorkerError(f"the evaluator actors failed to start: {_first_line(err)}") from None

    def set_stack(self, stack: LoraStack) -> None:
        """Evaluate over another module stack from now on (shipped once; restarted actors get it too)."""
        if self._local is not None:
            self._local.set_stack(stack)
            return
        import ray

        self._init_args = (self._init_args[0], ray.put(stack), self._init_args[2])
        ray.get([actor.set_stack.remote(self._init_args[1]) for actor in self.actors])

    def evaluate(self, population: np.ndarray) -> list[Outcome]:
        """Score every row of ``population`` ``(P, N)``; one `Outcome` per row, in order."""
        population = np.atleast_2d(population)
        if self._local is not None:
            return [Outcome(r.loss, r.seconds, None, r.error) for r in self._local.evaluate(population)]
        passes = math.ceil(math.ceil(len(population) / len(self.actors)) / self._pass)
        size = passes * self._pass  # whole passes: every candidate shares a pass with the same others, whatever the actors
        chunks = [population[i : i + size] for i in range(0, len(population), size)]
        results = self._run_chunks(chunks)
        return [outcome for chunk in results for outcome in chunk]

    def _run_chunks(self, chunks: list[np.ndarray]) -> list[list[Outcome]]:
        """Hand chunks to free actors; re-queue the chunk of an actor that died and replace that actor."""
        import ray

        results: list[list[Outcome] | None] = [None] * len(chunks)
        queue, idle = deque(range(len(chunks))), deque(range(len(self.actors)))
        running: dict = {}  # object ref -> (actor index, chunk index)
        while queue or running:
            while queue and idle:
                slot, index = idle.popleft(), queue.popleft()
                running[self.actors[slot].evaluate.remote(chunks[index])] = (slot, index)
            [ref], _ = ray.wait(list(running), num_returns=1)
            slot, index = running.pop(ref)
            try:
                losses = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                queue.appendleft(index)
                self._replace(slot, err)
            else:
                results[index] = [Outcome(r.loss, r.seconds, slot, r.error) for r in losses]
            idle.append(slot)
        return results  # type: ignore[return-value]

    def _replace(self, slot: int, err: Exception) -> None:
        import ray

        self._restarts += 1
        if self._restarts > self.config.max_restarts:
            raise WorkerError(f"actors died {self._restarts} times (limit `max_restarts` = "
                              f"{self.config.max_restarts}); last: {_first_line(err)}")
        log.warning("actor %d died (%s); re-running its candidates on a new actor", slot, _first_line(err))
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start_actor()

    def close(self) -> None:
        """Stop the actors, and Ray itself if this pool started it."""
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            self.actors = []
            if self._owns_ray:
                ray.shutdown()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_ray(config: PoolConfig) -> None:
    import ray

    ray.init(address=config.address, logging_level=logging.WARNING, include_dashboard=False, configure_logging=False)


@contextmanager
def ray_session(config: PoolConfig) -> Iterator[None]:
    """Ray for the duration of the block: started (or joined, with ``config.address``) and stopped here,
    unless the pool needs none or Ray already runs (then it is left as it is)."""
    import ray

    if config.num_actors == 0 or ray.is_initialized():
        yield
        return
    _start_ray(config)
    try:
        yield
    finally:
        ray.shutdown()


def _remote_worker_class():
    """`Worker` as a Ray actor class, with the one Ray-aware method a worker needs."""
    import ray

    class RayWorker(Worker):
        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

    return ray.remote(RayWorker)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
