"""Decoder-only loss: the LM head only at answer positions, equal to the full-vocabulary loss it replaces."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from actors import Worker, WorkerSpec
from actors.examples import IGNORE
from actors.loss import example_token_losses, objective_loss
from lorahub_ray.modules import load_stack
from tests.conftest import EXAMPLES

LLAMA = pytest.mark.parametrize("world", ["llama"], indirect=True)  # the `world` fixture's decoder-only base


def _full_logits_losses(model, batch):
    """The previous computation, as reference: full-vocabulary logits at every position, then the labelled ones."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]  # (E, T-1, V)
    labels = batch.labels[:, 1:]  # (E, T-1)
    token_ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="none").view(labels.shape)
    return token_ce.sum(dim=1), (labels != IGNORE).sum(dim=1)


def _worker(world, **spec):
    return Worker(WorkerSpec(base=world["base"], device="cpu", **spec), load_stack(world["modules"]), EXAMPLES)


@LLAMA
def test_answer_only_loss_equals_the_full_logits_loss_for_one_candidate(world):
    worker = _worker(world)
    w = np.array([0.9, -0.6, 1.3])
    worker.cache.apply(w)
    sums, counts = example_token_losses(worker.model, worker.batch)
    ref_sums, ref_counts = _full_logits_losses(worker.model, worker.batch)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=0)
    assert worker.loss(w) == pytest.approx(objective_loss(ref_sums, ref_counts), rel=1e-5)


@LLAMA
def test_answer_only_loss_equals_the_full_logits_loss_for_batched_candidates(world):
    worker = _worker(world)
    population = np.array([[0.9, -0.6, 1.3], [0.0, 0.0, 0.0], [-1.2, 0.4, 0.7]])
    expected = []
    for w in population:
        worker.cache.apply(w)
        expected.append(objective_loss(*_full_logits_losses(worker.model, worker.batch)))
    assert worker.losses(population) == pytest.approx(expected, rel=1e-5)


@LLAMA
@pytest.mark.parametrize("example_batch_size", [1, 2, 3])
def test_answer_only_loss_equals_the_full_logits_loss_in_example_batches(world, example_batch_size):
    worker = _worker(world, example_batch_size=example_batch_size, objective="reference", reference_batch_size=2)
    w = np.array([0.3, 0.2, -0.4])
    worker.cache.apply(w)
    ref_sums, ref_counts = _full_logits_losses(worker.model, worker.batch)
    assert worker.loss(w) == pytest.approx(objective_loss(ref_sums, ref_counts, "reference", 2), rel=1e-5)


@LLAMA
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_answer_only_loss_is_float32_and_close_to_the_full_logits_loss(world, dtype):
    worker, exact = _worker(world, dtype=dtype), _worker(world)
    w = np.array([0.9, -0.6, 1.3])
    for each in (worker, exact):
        each.cache.apply(w)
    sums, _ = example_token_losses(worker.model, worker.batch)
    assert sums.dtype == torch.float32
    assert torch.isfinite(sums).all()
    torch.testing.assert_close(sums, _full_logits_losses(worker.model, worker.batch)[0], rtol=2e-2, atol=0)
    torch.testing.assert_close(sums, _full_logits_losses(exact.model, exact.batch)[0], rtol=2e-2, atol=0)


def _head_flops(model, batch):
    """The matrix-multiply FLOPs of one loss computation beyond the model body's own."""
    with FlopCounterMode(display=False) as loss_count:
        example_token_losses(model, batch)
    with FlopCounterMode(display=False) as body_count, torch.no_grad():
        model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return loss_count.get_total_flops() - body_count.get_total_flops()


@LLAMA
def test_the_lm_head_is_applied_only_at_answer_positions(world, monkeypatch):
    worker = _worker(world)
    model, batch = worker.model, worker.batch
    V, H = model.get_output_embeddings().weight.shape
    answer_positions = int((batch.labels != IGNORE).sum())  # K: each predicted from the position before it
    E, T = batch.input_ids.shape
    assert answer_positions < E * T
    assert _head_flops(model, batch) == 2 * answer_positions * H * V
    monkeypatch.setattr(model.config, "model_type", "gemma2")  # a head with a softcap: the full forward instead
    assert _head_flops(model, batch) == 2 * E * T * H * V
