"""Pre-filters (random, loss, similarity) and the lazy module store."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from actors import Worker, WorkerSpec
from lorahub_ray import modules as module_store
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.modules import check_compatible, index_module, load_stack, stack_modules
from lorahub_ray.prefilter import PrefilterSpec, select, similarities
from lorahub_ray.run import run
from lorahub_ray.toy import build_random_modules
from tests.conftest import EXAMPLES


@pytest.fixture(scope="module")
def pool_of_eight(t5_world, tmp_path_factory):
    paths = build_random_modules(t5_world["base"], tmp_path_factory.mktemp("eight"), count=8, rank=4, seed=5)
    return [str(p) for p in paths]


def _alone_losses(base, modules):
    worker = Worker(WorkerSpec(base=base, device="cpu"), load_stack(modules), EXAMPLES)
    return [r.loss for r in worker.evaluate(np.eye(len(modules)))]


def test_prefilter_spec_parsing():
    assert PrefilterSpec.parse("loss:20") == PrefilterSpec("loss", 20)
    for bad in ("loss", "loss:0", "best:5", "loss:x"):
        with pytest.raises(ConfigError, match="`prefilter` must look like NAME:K"):
            PrefilterSpec.parse(bad)


def test_random_prefilter_is_seeded_and_costs_no_evaluation(pool_of_eight):
    names = pool_of_eight
    def never(indices):
        raise AssertionError("random must not evaluate")
    one = select(PrefilterSpec("random", 3), names, [None] * 8, ["x"], never, seed=1)
    two = select(PrefilterSpec("random", 3), names, [None] * 8, ["x"], never, seed=1)
    other = select(PrefilterSpec("random", 3), names, [None] * 8, ["x"], never, seed=2)
    assert one.selected == two.selected != other.selected and len(one.selected) == 3 and one.evaluations == 0


def test_loss_prefilter_keeps_the_modules_with_the_lowest_loss_alone(t5_world, pool_of_eight, monkeypatch):
    expected = sorted(np.argsort(_alone_losses(t5_world["base"], pool_of_eight))[:3].tolist())
    sizes = []
    real_stack = module_store.stack_modules

    def recording_stack(entries, dtype="float32"):
        sizes.append(len(entries))
        return real_stack(entries, dtype)

    monkeypatch.setattr(sys.modules["lorahub_ray.run"], "stack_modules", recording_stack)
    config = RunConfig(base=t5_world["base"], modules=pool_of_eight, examples=EXAMPLES, budget=4, population=2,
                       prefilter="loss:3")
    result = run(config, PoolConfig(num_actors=0), progress=False)
    assert result.prefilter.selected == expected and result.prefilter.evaluations == 8
    assert list(result.weights) == [pool_of_eight[i] for i in expected]
    assert max(sizes) <= 3  # never more than K modules stacked at once
    assert result.to_dict()["prefilter"]["selected"] == expected


def test_similarity_prefilter_ranks_by_training_inputs_and_falls_back_to_loss(pool_of_eight):
    near = [{"input": f"Reverse the word: {w}\nAnswer:"} for w in ("cat", "house", "lamp", "river")]
    far = [{"input": f"Sum the digits: {d}\nAnswer:"} for d in ("3 4 1", "9 9", "5 0 2 7")]
    for path, sample in ((pool_of_eight[0], far), (pool_of_eight[1], near), (pool_of_eight[2], far)):
        with open(f"{path}/train_sample.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in sample)
    names = pool_of_eight
    directories = [index_module(n).directory for n in names]
    evaluated = []

    def losses(indices):
        evaluated.extend(indices)
        return [float(i) for i in indices]  # module 3 is the best of those without a sample

    inputs = [ex["input"] for ex in EXAMPLES]
    top = select(PrefilterSpec("similarity", 1), names, directories, inputs, losses, 0)
    assert top.scores[names[1]] > top.scores[names[0]]
    assert top.selected == [1] and evaluated == [] and top.evaluations == 0
    filled = select(PrefilterSpec("similarity", 4), names, directories, inputs, losses, 0)
    assert filled.selected == [0, 1, 2, 3] and sorted(evaluated) == [3, 4, 5, 6, 7] and filled.evaluations == 5
    for path in pool_of_eight[:3]:
        (Path(path) / "train_sample.jsonl").unlink()


def test_similarity_is_higher_for_alike_texts():
    sims = similarities(["Reverse the word: abc"], [["Reverse the word: xyz"], ["7 + 8 = ?"]])
    assert sims[0] > sims[1] >= 0


def test_indexing_reads_no_tensors_and_stacking_reads_only_the_selected(pool_of_eight, monkeypatch):
    reads = []
    real_read = module_store.ModuleEntry.read_factors

    def counting_read(self):
        reads.append(self.name)
        return real_read(self)

    monkeypatch.setattr(module_store.ModuleEntry, "read_factors", counting_read)
    entries = [index_module(name) for name in pool_of_eight]
    check_compatible(entries)
    assert reads == []
    stack = stack_modules([entries[2], entries[5]])
    assert reads == [pool_of_eight[2], pool_of_eight[5]] and stack.num_modules == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_module_store(t5_world, dtype):
    full = load_stack(t5_world["modules"])
    half = load_stack(t5_world["modules"], dtype=dtype)
    assert half.nbytes == full.nbytes // 2
    w = np.array([0.5, -0.8, 1.1])
    losses = [Worker(WorkerSpec(base=t5_world["base"], device="cpu"), s, EXAMPLES).loss(w) for s in (full, half)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
