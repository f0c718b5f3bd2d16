"""Worker: holds the base model, the module cache and the tokenised examples; scores candidate weights.

A plain class, free of Ray: the driver runs it in-process or wraps it in a Ray actor.
Symbols: P candidates, N modules, E examples.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actors.cache import ModuleCache
from actors.examples import tokenize_examples
from actors.loss import example_token_losses, objective_loss
from actors.model import load_base, pick_device
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
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: ``"auto"`` (CUDA when visible, else CPU), ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op threads (``None``: torch's default). Fixing it fixes the float results.
        candidates_per_pass: candidates scored together in one forward pass (1: one at a time). Halved
            automatically when a pass runs out of memory.
    """

    base: str
    mode: str = "ab"
    apply: str = "merge"
    objective: str = "default"
    reference_batch_size: int | None = None
    example_batch_size: int | None = None
    dtype: str = "float32"
    device: str = "auto"
    num_threads: int | None = None
    candidates_per_pass: int = 1


@dataclass(frozen=True)
class CandidateLoss:
    """One candidate's loss (NaN when its evaluation failed), the seconds it took, and the error if any."""

    loss: float
    seconds: float
    error: str | None = None


class Worker:
    """Scores candidate weight vectors on the few-shot examples.

    Args:
        spec: loading and scoring settings.
        stack: the module pool (numpy arrays; shared zero-copy when they come from Ray's object store).
        examples: ``{"input", "output"}`` pairs.

    Example:
        >>> worker = Worker(WorkerSpec(base="path/to/base"), stack, examples)  # doctest: +SKIP
        >>> worker.evaluate(np.zeros((4, stack.num_modules)))  # doctest: +SKIP
    """

    def __init__(self, spec: WorkerSpec, stack: LoraStack, examples: Sequence[dict[str, str]]) -> None:
        if spec.num_threads:
            torch.set_num_threads(spec.num_threads)
        self.spec = spec
        self.device = pick_device(spec.device)
        self.model, self.tokenizer = load_base(spec.base, self.device, spec.dtype)
        self.cache = ModuleCache(self.model, stack, mode=spec.mode, apply=spec.apply)
        encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.batch = tokenize_examples(self.tokenizer, examples, encoder_decoder).to(self.device)
        self.pass_size = max(1, spec.candidates_per_pass)  # candidates per forward pass, halved on out-of-memory

    def loss(self, weights: np.ndarray) -> float:
        """The objective's loss of one candidate ``(N,)``, without gradients."""
        self.cache.apply(weights)
        size = self.spec.example_batch_size or len(self.batch)
        parts = [example_token_losses(self.model, self.batch.select(slice(i, i + size))) for i in range(0, len(self.batch), size)]
        sums = torch.cat([s for s, _ in parts])  # (E,)
        counts = torch.cat([c for _, c in parts])  # (E,)
        return objective_loss(sums, counts, self.spec.objective, self.spec.reference_batch_size)

    def losses(self, population: np.ndarray) -> list[float]:
        """The objective's loss of each candidate of ``population`` ``(P, N)`` from one forward pass."""
        P, E = len(population), len(self.batch)
        self.cache.apply_population(population)
        try:
            sums, counts = example_token_losses(self.model, self.batch.repeat(P))  # (P*E,), (P*E,)
        finally:
            self.cache.apply_population(None)
        sums, counts = sums.view(P, E), counts.view(P, E)
        return [objective_loss(sums[p], counts[p], self.spec.objective, self.spec.reference_batch_size)
                for p in range(P)]

    def evaluate(self, population: np.ndarray) -> list[CandidateLoss]:
        """Score each row of ``population`` ``(P, N)``; a failing candidate yields NaN and its error, not an exception.

        With ``candidates_per_pass > 1`` rows are scored in passes of that many (the last may be smaller);
        a pass that runs out of memory is retried at half the size, and one that fails otherwise is
        re-scored one candidate at a time so that only the failing candidates fail.
        """
        population = np.atleast_2d(population)
        results: list[CandidateLoss] = []
        start = 0
        while start < len(population):
            chunk = population[start : start + self.pass_size]
            if len(chunk) == 1:
                results.append(self._evaluate_one(chunk[0]))
            else:
                began = time.perf_counter()
                try:
                    losses = self.losses(chunk)
                except Exception as err:
                    if _out_of_memory(err):
                        self.pass_size = max(1, self.pass_size // 2)
                        continue
                    results.extend(self._evaluate_one(weights) for weights in chunk)
                else:
                    seconds = (time.perf_counter() - began) / len(chunk)
                    results.extend(CandidateLoss(loss, seconds) for loss in losses)
            start += len(chunk)
        return results

    def _evaluate_one(self, weights: np.ndarray) -> CandidateLoss:
        start = time.perf_counter()
        try:
            loss, error = self.loss(weights), None
        except Exception:  # a failing candidate must not kill the pool
            loss, error = math.nan, traceback.format_exc(limit=3)
        return CandidateLoss(loss, time.perf_counter() - start, error)

    def set_stack(self, stack: LoraStack) -> None:
        """Score candidates over another pool of modules from now on (same layers; see `ModuleCache.set_stack`)."""
        self.cache.set_stack(stack)

    def pid(self) -> int:
        """This worker's process id (for memory measurements)."""
        return os.getpid()

    def info(self) -> dict[str, str | int]:
        """Where this worker runs: device, dtype, torch threads."""
        return {"device": str(self.device), "dtype": self.spec.dtype, "threads": torch.get_num_threads(),
                "candidates_per_pass": self.pass_size}


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA or CPU) rather than a bug."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)
