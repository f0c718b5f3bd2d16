"""Worker: holds the base model, the module cache and the tokenised examples; scores candidate weights.

A plain class, free of Ray: the driver runs it in-process or wraps it in a Ray actor.
Symbols: P candidates, N modules, E examples.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from actors.cache import ModuleCache
from actors.examples import ExampleBatch, ExampleSets, TokenRow, collate, example_ids
from actors.loss import example_token_losses, objective_loss
from actors.model import load_base, pick_device, quiet_loading, resolve_dtype
from actors.stack import LoraStack


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker loads its model and scores candidates.

    Args:
        base: base model, a local directory or hub id.
        mode: composition, ``"ab"`` (LoraHub) or ``"delta"``.
        apply: in-place method, ``"merge"`` or ``"slot"``.
        objective: ``"default"`` or ``"reference"`` (see `actors.loss`).
        reference_batch_size: batch size the ``reference`` objective divides by (``None``: one batch).
        example_batch_size: examples per forward pass (``None``: all); memory only, the loss is the same.
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 elsewhere: `actors.model.resolve_dtype`), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; in a Ray actor ``"auto"`` is CUDA only when it reserved and
            was assigned a GPU (see `actors.model.pick_device`).
        gpus: the GPUs reserved for this worker (its Ray actor's ``num_gpus``; 0 in-process).
        num_threads: torch intra-op threads while it scores (``None``: torch's default). Fixing it fixes the float
            results. Set only during the worker's own calls: an in-process worker leaves the caller's count alone.
        candidates_per_pass: candidates scored together in one forward pass (1: one at a time). Halved
            automatically when a pass runs out of memory. ``"auto"``: 1 on the CPU; on CUDA, as many as
            `AUTO_PASS_MEMORY_SHARE` of the free memory holds, by the peak memory of a 2-candidate pass
            (at most `MAX_AUTO_PASS`, a power of 2).
    """

    base: str
    mode: str = "ab"
    apply: str = "merge"
    objective: str = "default"
    reference_batch_size: int | None = None
    example_batch_size: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    gpus: float = 0.0
    num_threads: int | None = None
    candidates_per_pass: int | str = "auto"


@dataclass(frozen=True)
class Outcome:
    """What evaluating one candidate gave: its loss (NaN when it failed), the seconds it took, the actor that ran it
    (set by the driver's pool; ``None`` in process) and the error if any."""

    loss: float
    seconds: float = 0.0
    actor: int | None = None
    error: str | None = None


class Worker:
    """Scores candidate weight vectors on the few-shot examples.

    Args:
        spec: loading and scoring settings.
        stack: the module pool (numpy arrays; shared zero-copy when they come from Ray's object store).
        examples: ``{"input", "output"}`` pairs, or `ExampleSets` (several searches' sets: each candidate is then
            scored on the set it names).
        gpu_ids: the GPU ids Ray assigned to this worker's actor; ``None`` in-process (the device then follows
            ``spec.device`` and what this process sees).

    Example:
        >>> worker = Worker(WorkerSpec(base="path/to/base"), stack, examples)  # doctest: +SKIP
        >>> worker.evaluate(np.zeros((4, stack.num_modules)))  # doctest: +SKIP
    """

    def __init__(self, spec: WorkerSpec, stack: LoraStack, examples: Sequence[dict[str, str]] | ExampleSets,
                 gpu_ids: Sequence[int | str] | None = None) -> None:
        self.spec = spec
        self.gpu_ids = None if gpu_ids is None else list(gpu_ids)
        self.device = pick_device(spec.device, gpu_ids, spec.gpus)
        self.dtype = resolve_dtype(spec.dtype, self.device)
        self.model, self.tokenizer = load_base(spec.base, self.device, self.dtype)
        with quiet_loading():
            self.cache = ModuleCache(self.model, stack, mode=spec.mode, apply=spec.apply)
        self._encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        sets = examples.sets if isinstance(examples, ExampleSets) else (examples,)
        self._rows: list[list[TokenRow]] = [[example_ids(self.tokenizer, ex, self._encoder_decoder) for ex in chosen]
                                            for chosen in sets]  # each set's token ids
        self.batches = [self._collate(rows) for rows in self._rows]  # each set, padded, on the device
        self.batch = self.batches[0]
        # candidates per forward pass, halved on out-of-memory
        self.pass_size = self._auto_pass_size() if spec.candidates_per_pass == "auto" else max(1, spec.candidates_per_pass)
        self._fault: str | None = None  # set by `inject_fault`

    def _auto_pass_size(self) -> int:
        """1 on the CPU (larger matmuls already fill its cores); on CUDA, the passes that fit in free memory."""
        if self.device.type != "cuda":
            return 1
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        largest = max(range(len(self.batches)), key=lambda i: self.batches[i].input_ids.numel())
        with self._threads():
            self.losses(np.zeros((2, self.cache.num_modules)), [largest, largest])
        per_candidate = max(1, (torch.cuda.max_memory_allocated(self.device) - before) / 2)
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int(AUTO_PASS_MEMORY_SHARE * free // per_candidate)
        return max(1, min(MAX_AUTO_PASS, 2 ** int(math.log2(max(fits, 1)))))

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """``spec.num_threads`` torch threads within the block; the count before it afterwards."""
        before = torch.get_num_threads()
        if self.spec.num_threads:
            torch.set_num_threads(self.spec.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _collate(self, rows: list[TokenRow]) -> ExampleBatch:
        return collate(rows, self.tokenizer.pad_token_id, self._encoder_decoder).to(self.device)

    def loss(self, weights: np.ndarray, example_set: int = 0) -> float:
        """The objective's loss of one candidate ``(N,)`` on example set ``example_set``, without gradients."""
        batch = self.batches[example_set]
        size = self.spec.example_batch_size or len(batch)
        with self._threads():
            self.cache.apply(weights)
            parts = [example_token_losses(self.model, batch.select(slice(i, i + size)))
                     for i in range(0, len(batch), size)]
            sums = torch.cat([s for s, _ in parts])  # (E,)
            counts = torch.cat([c for _, c in parts])  # (E,)
            return objective_loss(sums, counts, self.spec.objective, self.spec.reference_batch_size)

    def losses(self, population: np.ndarray, example_sets: Sequence[int] | None = None) -> list[float]:
        """The objective's loss of each candidate of ``population`` ``(P, N)`` from one forward pass, each on its
        example set (``example_sets[p]``; ``None``: the first set for all)."""
        sets = [0] * len(population) if example_sets is None else list(example_sets)
        rows = [len(self._rows[i]) for i in sets]  # each candidate's examples, E_p
        if len(set(sets)) == 1:
            batch = self.batches[sets[0]].repeat(len(population))
        else:  # one batch of every candidate's own examples, padded to the pass's longest
            batch = self._collate([row for i in sets for row in self._rows[i]])
        with self._threads():
            self.cache.apply_population(population, rows)
            try:
                sums, counts = example_token_losses(self.model, batch)  # (sum E_p,), (sum E_p,)
            finally:
                self.cache.apply_population(None)
            return [objective_loss(s, c, self.spec.objective, self.spec.reference_batch_size)
                    for s, c in zip(sums.split(rows), counts.split(rows))]

    def evaluate(self, population: np.ndarray, example_sets: Sequence[int] | None = None) -> list[Outcome]:
        """Score each row of ``population`` ``(P, N)`` on its example set (``example_sets[p]``; ``None``: the first
        set for all); a failing candidate yields NaN and its error, not an exception.

        With ``candidates_per_pass > 1`` rows are scored in passes of that many (the last may be smaller);
        a pass that runs out of memory is retried at half the size, and one that fails otherwise is
        re-scored one candidate at a time so that only the failing candidates fail.
        """
        self._take_fault()
        population = np.atleast_2d(population)
        sets = [0] * len(population) if example_sets is None else list(example_sets)
        if len(sets) != len(population) or not all(0 <= i < len(self.batches) for i in sets):
            raise ValueError(f"`example_sets` must name one of the worker's {len(self.batches)} sets for each of the "
                             f"{len(population)} candidates, got {sets}")
        with self._threads():
            return self._evaluate(population, sets)

    def _evaluate(self, population: np.ndarray, sets: list[int]) -> list[Outcome]:
        results: list[Outcome] = []
        start = 0
        while start < len(population):
            chunk, chunk_sets = population[start : start + self.pass_size], sets[start : start + self.pass_size]
            if len(chunk) == 1:
                results.append(self._evaluate_one(chunk[0], chunk_sets[0]))
            else:
                began = time.perf_counter()
                try:
                    losses = self.losses(chunk, chunk_sets)
                except Exception as err:
                    if _out_of_memory(err):
                        self.pass_size = max(1, self.pass_size // 2)
                        continue
                    results.extend(self._evaluate_one(w, i) for w, i in zip(chunk, chunk_sets))
                else:
                    seconds = (time.perf_counter() - began) / len(chunk)
                    results.extend(Outcome(loss, seconds) for loss in losses)
            start += len(chunk)
        return results

    def _evaluate_one(self, weights: np.ndarray, example_set: int = 0) -> Outcome:
        start = time.perf_counter()
        try:
            loss, error = self.loss(weights, example_set), None
        except Exception:  # a failing candidate must not kill the pool
            loss, error = math.nan, traceback.format_exc(limit=3)
        return Outcome(loss, time.perf_counter() - start, error=error)

    def set_stack(self, stack: LoraStack) -> None:
        """Score candidates over another pool of modules from now on (same layers; see `ModuleCache.set_stack`)."""
        self.cache.set_stack(stack)

    def pid(self) -> int:
        """This worker's process id (for memory measurements)."""
        return os.getpid()

    def info(self) -> dict[str, object]:
        """Where this worker runs: device, the GPUs reserved and the GPU ids assigned (``None`` in-process),
        dtype, torch threads while scoring, candidates per pass."""
        return {"device": str(self.device), "gpus": self.spec.gpus, "gpu_ids": self.gpu_ids, "dtype": self.dtype,
                "threads": self.spec.num_threads or torch.get_num_threads(), "candidates_per_pass": self.pass_size}

    def inject_fault(self, fault: str) -> None:
        """Fault injection for tests: the next `evaluate` call never returns (``"hang"``) or ends this worker's
        process (``"exit"``), as a stuck or crashed actor would."""
        if fault not in FAULTS:
            raise ValueError(f"`fault` must be one of {list(FAULTS)}, got {fault!r}")
        self._fault = fault

    def _take_fault(self) -> None:
        fault, self._fault = self._fault, None
        if fault == "exit":
            os._exit(1)
        if fault == "hang":
            threading.Event().wait()  # forever


AUTO_PASS_MEMORY_SHARE = 0.7  # of the device's free memory, for `candidates_per_pass` "auto"
MAX_AUTO_PASS = 256  # past this a CUDA pass gained nothing measurable on the H200 (see benchmarks/README.md)
FAULTS = ("hang", "exit")  # what `Worker.inject_fault` can make an evaluation do


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA or CPU) rather than a bug."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)
