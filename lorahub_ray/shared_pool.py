"""One pool of evaluator actors serving many concurrent searches, such as Ray Tune trials: `SharedPool`.

`SharedPool` runs as an async Ray actor that holds a `WorkerPool`; its actors hold every search's examples
(`actors.ExampleSets`) and the union of the searches' modules, and are started once. A search sends each generation
to `SharedPool.evaluate`. The requests that arrive while a call runs, or within ``gather_s`` of the first, go into
the next call together, so one pass mixes candidates of different searches, each row scored on its own search's
examples with its own weights. A row's loss does not depend on the rows that share its call, except by float
rounding when a pass holds several candidates (a GPU's passes; on a CPU a pass holds one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from actors import ExampleSets, LoraStack, WorkerSpec
from lorahub_ray.config import PoolConfig
from lorahub_ray.pool import WorkerPool
from lorahub_ray.search import Outcome

GATHER_S = 0.05  # how long the first waiting request waits for others to join its call


class SharedPool:
    """A `WorkerPool` shared by concurrent searches: create it as a Ray actor (``ray.remote(num_cpus=0)``), then
    call `start` (which raises the pool's own error, e.g. a `ConfigError` for resources the cluster lacks).

    Args:
        spec, stack, sets, config: the `WorkerPool`'s (``stack``: the union of the searches' modules; ``sets``:
            every search's examples).
        gather_s: seconds the first request waits for others before a call starts.
    """

    def __init__(self, spec: WorkerSpec, stack: LoraStack, sets: ExampleSets, config: PoolConfig,
                 gather_s: float = GATHER_S) -> None:
        self._pool_args = (spec, stack, sets, config)
        self._pool: WorkerPool | None = None
        self._gather_s = gather_s
        self._waiting: list[tuple[np.ndarray, list[int], asyncio.Future]] = []
        self._turn = asyncio.Lock()  # one call to the pool at a time
        self.calls = 0  # pool calls so far

    async def start(self) -> dict[str, int]:
        """Start the pool's actors; its `stats`."""
        self._pool = WorkerPool(*self._pool_args)
        return await self.stats()

    async def evaluate(self, population: np.ndarray, example_sets: Sequence[int]) -> list[Outcome]:
        """Score every row of ``population`` ``(P, N_union)``, row p on example set ``example_sets[p]``; one
        `Outcome` per row, in order (as `WorkerPool.evaluate`)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((np.atleast_2d(population), list(example_sets), future))
        async with self._turn:
            if not future.done():  # not served by an earlier call: serve everything waiting now
                await asyncio.sleep(self._gather_s)
                batch, self._waiting = self._waiting, []
                await self._call(batch)
        return future.result()

    async def _call(self, batch: list[tuple[np.ndarray, list[int], asyncio.Future]]) -> None:
        population = np.concatenate([rows for rows, _, _ in batch])
        sets = [index for _, indices, _ in batch for index in indices]
        self.calls += 1
        try:
            outcomes = await asyncio.to_thread(self._pool.evaluate, population, sets)
        except Exception as err:  # noqa: BLE001 - every request of the call gets the pool's error
            for _, _, future in batch:
                future.set_exception(err)
            return
        start = 0
        for rows, _, future in batch:
            future.set_result(outcomes[start : start + len(rows)])
            start += len(rows)

    async def stats(self) -> dict[str, int]:
        """``calls`` (pool calls so far), ``actors`` and ``restarts`` (actors replaced so far)."""
        return {"calls": self.calls, "actors": len(self._pool.actors), "restarts": self._pool.restarts}

    async def close(self) -> None:
        """Stop the pool's actors."""
        self._pool.close()
