"""Worker: in-place composition against PEFT-loaded modules, objectives, apply methods, failing candidates."""

import math

import numpy as np
import pytest
import torch
from peft import PeftModel

from actors import ExampleSets, Worker, WorkerSpec
from actors.examples import tokenize_examples
from actors.loss import objective_loss
from actors.model import load_base
from lorahub_ray.modules import load_stack
from tests.conftest import EXAMPLES


def _hf_loss(base, adapter, examples):
    """The loss Hugging Face computes for one batch of examples, with the module loaded alone by PEFT."""
    model, tokenizer = load_base(base, torch.device("cpu"))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    batch = tokenize_examples(tokenizer, examples, bool(model.config.is_encoder_decoder))
    with torch.no_grad():
        return float(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss)


@pytest.mark.parametrize("apply", ["merge", "slot"])
def test_one_hot_weights_reproduce_each_module_loaded_alone(world, apply):
    stack = load_stack(world["modules"])
    worker = Worker(WorkerSpec(base=world["base"], apply=apply, device="cpu"), stack, EXAMPLES)
    for index, module in enumerate(world["modules"]):
        one_hot = np.eye(len(world["modules"]))[index]
        assert worker.loss(one_hot) == pytest.approx(_hf_loss(world["base"], module, EXAMPLES), rel=1e-5)
    assert worker.loss(np.zeros(3)) == pytest.approx(_hf_loss(world["base"], None, EXAMPLES), rel=1e-5)


def test_merge_and_slot_agree_in_both_modes(world):
    stack = load_stack(world["modules"])
    w = np.array([0.9, -0.6, 1.3])
    for mode in ("ab", "delta"):
        losses = [Worker(WorkerSpec(base=world["base"], mode=mode, apply=apply, device="cpu"), stack, EXAMPLES).loss(w)
                  for apply in ("merge", "slot")]
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_reference_objective_is_summed_batch_means_over_the_example_count(t5_world):
    """The reference: HF batch-mean loss summed over batches of 2, divided by the number of examples."""
    stack = load_stack(t5_world["modules"])
    module = t5_world["modules"][1]
    expected = sum(_hf_loss(t5_world["base"], module, EXAMPLES[i : i + 2]) for i in range(0, 5, 2)) / 5
    spec = WorkerSpec(base=t5_world["base"], objective="reference", reference_batch_size=2, device="cpu")
    assert Worker(spec, stack, EXAMPLES).loss(np.eye(3)[1]) == pytest.approx(expected, rel=1e-5)
    one_batch = Worker(WorkerSpec(base=t5_world["base"], objective="reference", device="cpu"), stack, EXAMPLES)
    assert one_batch.loss(np.eye(3)[1]) == pytest.approx(_hf_loss(t5_world["base"], module, EXAMPLES) / 5, rel=1e-5)


def test_default_objective_does_not_depend_on_the_forward_batch_size(world):
    stack = load_stack(world["modules"])
    w = np.array([0.3, 0.2, -0.4])
    whole = Worker(WorkerSpec(base=world["base"], device="cpu"), stack, EXAMPLES).loss(w)
    split = Worker(WorkerSpec(base=world["base"], device="cpu", example_batch_size=2), stack, EXAMPLES).loss(w)
    assert whole == pytest.approx(split, rel=1e-5)


def test_objective_loss_definitions():
    sums, counts = torch.tensor([4.0, 2.0, 6.0]), torch.tensor([2, 1, 3])
    assert objective_loss(sums, counts, "default") == pytest.approx(12 / 6)
    assert objective_loss(sums, counts, "reference") == pytest.approx((12 / 6) / 3)
    assert objective_loss(sums, counts, "reference", batch_size=2) == pytest.approx((6 / 3 + 6 / 3) / 3)


def test_a_failing_candidate_returns_nan_and_its_error(t5_world):
    worker = Worker(WorkerSpec(base=t5_world["base"], device="cpu"), load_stack(t5_world["modules"]), EXAMPLES)
    bad, good = worker.evaluate(np.zeros((1, 2)))[0], worker.evaluate(np.zeros((1, 3)))[0]
    assert math.isnan(bad.loss) and "shape" in bad.error
    assert math.isfinite(good.loss) and good.error is None


def test_decoder_only_prompt_tokens_are_masked(tmp_path):
    from lorahub_ray.toy import build_random_base

    base = build_random_base(tmp_path / "llama", "llama")
    _, tokenizer = load_base(str(base), torch.device("cpu"))
    batch = tokenize_examples(tokenizer, [{"input": "ab:", "output": "cd"}], encoder_decoder=False)
    assert batch.input_ids[0].tolist() == tokenizer("ab:cd", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert batch.labels[0].tolist() == [-100] * 3 + batch.input_ids[0, 3:].tolist()


@pytest.mark.parametrize("mode", ["ab", "delta"])
@pytest.mark.parametrize("apply", ["merge", "slot"])
def test_population_batched_scoring_equals_one_at_a_time(world, mode, apply):
    stack = load_stack(world["modules"])
    population = np.random.default_rng(0).uniform(-1.5, 1.5, (7, 3))
    for objective in ("default", "reference"):
        spec = WorkerSpec(base=world["base"], mode=mode, apply=apply, objective=objective, device="cpu")
        one_at_a_time = Worker(spec, stack, EXAMPLES).evaluate(population)
        batched_worker = Worker(WorkerSpec(**{**spec.__dict__, "candidates_per_pass": 4}), stack, EXAMPLES)
        batched = batched_worker.evaluate(population)
        np.testing.assert_allclose([r.loss for r in batched], [r.loss for r in one_at_a_time], rtol=1e-5)
        # the hooks are off again afterwards: a single candidate scores as before
        assert batched_worker.loss(population[0]) == pytest.approx(one_at_a_time[0].loss, rel=1e-6)


def test_a_pass_out_of_memory_is_retried_at_half_size(t5_world, monkeypatch):
    stack = load_stack(t5_world["modules"])
    population = np.random.default_rng(1).uniform(-1.5, 1.5, (7, 3))
    expected = [r.loss for r in Worker(WorkerSpec(base=t5_world["base"], device="cpu"), stack, EXAMPLES).evaluate(population)]
    worker = Worker(WorkerSpec(base=t5_world["base"], device="cpu", candidates_per_pass=8), stack, EXAMPLES)
    sizes = []
    real_losses = worker.losses

    def limited(chunk, sets=None):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_losses(chunk, sets)

    monkeypatch.setattr(worker, "losses", limited)
    results = worker.evaluate(population)
    assert sizes[:3] == [7, 4, 2] and worker.pass_size == 2
    np.testing.assert_allclose([r.loss for r in results], expected, rtol=1e-5)
    assert all(r.error is None for r in results)


def test_a_pass_that_fails_otherwise_is_rescored_one_by_one(t5_world, monkeypatch):
    stack = load_stack(t5_world["modules"])
    worker = Worker(WorkerSpec(base=t5_world["base"], device="cpu", candidates_per_pass=4), stack, EXAMPLES)
    monkeypatch.setattr(worker, "losses", lambda chunk, sets=None: (_ for _ in ()).throw(ValueError("broken pass")))
    results = worker.evaluate(np.zeros((3, 3)))
    assert all(np.isfinite(r.loss) and r.error is None for r in results)
    assert worker.pass_size == 4


def test_a_worker_that_reserved_no_gpu_runs_on_cpu_on_a_gpu_node(t5_world, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    worker = Worker(WorkerSpec(base=t5_world["base"], gpus=0.0), load_stack(t5_world["modules"]), EXAMPLES, gpu_ids=[])
    assert worker.info()["device"] == "cpu" and worker.info()["gpu_ids"] == [] and worker.info()["gpus"] == 0.0
    assert worker.info()["dtype"] == "float32", "dtype auto is float32 on a CPU"
    assert next(worker.model.parameters()).device == torch.device("cpu")
    assert next(worker.model.parameters()).dtype == torch.float32
    assert math.isfinite(worker.loss(np.zeros(3)))


def test_dtype_auto_is_bfloat16_on_cuda_and_float32_elsewhere():
    from actors.model import resolve_dtype

    assert resolve_dtype("auto", torch.device("cuda", 0)) == "bfloat16"
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype("float16", torch.device("cuda", 0)) == "float16" == resolve_dtype("float16", torch.device("cpu"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("candidates_per_pass", [1, 4])
def test_half_precision_workers_on_cpu_give_losses_close_to_float32(world, dtype, candidates_per_pass):
    stack = load_stack(world["modules"])
    population = np.random.default_rng(0).uniform(-1.5, 1.5, (4, 3))
    full = Worker(WorkerSpec(base=world["base"], device="cpu"), stack, EXAMPLES).evaluate(population)
    spec = WorkerSpec(base=world["base"], device="cpu", dtype=dtype, candidates_per_pass=candidates_per_pass)
    half = Worker(spec, stack, EXAMPLES)
    assert next(half.model.parameters()).dtype == getattr(torch, dtype)
    results = half.evaluate(population)
    assert all(r.error is None and math.isfinite(r.loss) for r in results)
    np.testing.assert_allclose([r.loss for r in results], [r.loss for r in full], rtol=2e-2)


def test_an_in_process_worker_sets_its_thread_count_only_while_it_scores(t5_world, monkeypatch):
    import actors.worker

    caller = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        worker = Worker(WorkerSpec(base=t5_world["base"], device="cpu", num_threads=1),
                        load_stack(t5_world["modules"]), EXAMPLES)
        assert torch.get_num_threads() == 3
        seen = []
        real = actors.worker.example_token_losses

        def counting(model, batch):
            seen.append(torch.get_num_threads())
            return real(model, batch)

        monkeypatch.setattr(actors.worker, "example_token_losses", counting)
        worker.evaluate(np.zeros((2, 3)))
        worker.loss(np.zeros(3))
        assert seen == [1, 1, 1] and torch.get_num_threads() == 3
        assert worker.info()["threads"] == 1
    finally:
        torch.set_num_threads(caller)


def test_an_unknown_fault_is_refused(t5_world):
    worker = Worker(WorkerSpec(base=t5_world["base"], device="cpu"), load_stack(t5_world["modules"]), EXAMPLES)
    with pytest.raises(ValueError, match=r"`fault` must be one of \['hang', 'exit'\], got 'slow'"):
        worker.inject_fault("slow")


def test_auto_pass_size_is_one_on_cpu_and_what_free_memory_holds_on_cuda(t5_world, monkeypatch):
    import actors.worker

    worker = Worker(WorkerSpec(base=t5_world["base"], device="cpu"), load_stack(t5_world["modules"]), EXAMPLES)
    assert worker.pass_size == 1 and worker.info()["candidates_per_pass"] == 1, "auto is 1 on the CPU"
    per_candidate, free = 3_000_000, 10**9  # bytes a candidate adds to a pass; free device memory
    peak = {"value": 0}
    monkeypatch.setattr(worker, "device", torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 5_000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: peak.update(value=5_000))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak["value"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    losses = worker.losses

    def pass_of(population, sets=None):
        peak["value"] += per_candidate * len(population)
        return losses(population, sets)

    monkeypatch.setattr(worker, "losses", pass_of)
    expected = 2 ** int(np.log2(actors.worker.AUTO_PASS_MEMORY_SHARE * free // per_candidate))  # 233 -> 128
    assert worker._auto_pass_size() == expected == 128
    per_candidate = 10
    assert worker._auto_pass_size() == actors.worker.MAX_AUTO_PASS
    per_candidate, free = 10**9, 10**8
    assert worker._auto_pass_size() == 1, "a pass of one always runs (out-of-memory is then the guard)"


OTHER_EXAMPLES = [{"input": "x", "output": "yz"}, {"input": "hello there", "output": "q"},
                  {"input": "a b", "output": "long answer"}]


@pytest.mark.parametrize("mode", ["ab", "delta"])
def test_one_pass_mixes_candidates_of_different_example_sets(world, mode):
    """Several searches' candidates in one forward pass score as each would alone on its own examples, whether
    the sets have the same number of examples or not."""
    stack = load_stack(world["modules"])
    population = np.random.default_rng(3).uniform(-1.5, 1.5, (5, 3))
    sets = [1, 0, 2, 1, 0]
    example_sets = ExampleSets((tuple(EXAMPLES), tuple(OTHER_EXAMPLES), tuple(EXAMPLES[::-1])))
    mixed = Worker(WorkerSpec(base=world["base"], mode=mode, device="cpu", candidates_per_pass=5), stack,
                   example_sets)
    alone = {i: Worker(WorkerSpec(base=world["base"], mode=mode, device="cpu"), stack, list(chosen))
             for i, chosen in enumerate(example_sets.sets)}
    expected = [alone[i].loss(w) for w, i in zip(population, sets)]
    np.testing.assert_allclose(mixed.losses(population, sets), expected, rtol=1e-5)
    np.testing.assert_allclose([r.loss for r in mixed.evaluate(population, sets)], expected, rtol=1e-5)
    assert len({round(x, 6) for x in expected}) == 5, "different sets and weights: different losses"
    one_by_one = Worker(WorkerSpec(base=world["base"], mode=mode, device="cpu"), stack, example_sets)
    assert [r.loss for r in one_by_one.evaluate(population, sets)] == expected, "one at a time: the same numbers"
    with pytest.raises(ValueError, match="example_sets"):
        mixed.evaluate(population, [0, 1, 3, 0, 0])
