"""The BBH loader and the shared protocol, on a small BBH-format file and tiny random models."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bbh  # noqa: E402

from lorahub_ray.errors import InputError  # noqa: E402
from lorahub_ray.evaluate import generate, load_model  # noqa: E402


@pytest.fixture()
def bbh_dir(tmp_path):
    examples = [{"input": f"not ( {a} ) is", "target": str(not a)} for a in [True, False] * 6]
    (tmp_path / "boolean_expressions.json").write_text(json.dumps({"canary": "x", "examples": examples}))
    return tmp_path


def test_bbh_files_load_as_input_output_pairs(bbh_dir, tmp_path):
    examples = bbh.load_bbh_task(bbh_dir / "boolean_expressions.json")
    assert examples[0] == {"input": "not ( True ) is", "output": "False"} and len(examples) == 12
    (tmp_path / "bad.json").write_text(json.dumps({"examples": [{"question": "?"}]}))
    with pytest.raises(InputError, match="not a BBH task file"):
        bbh.load_bbh_task(tmp_path / "bad.json")


def test_the_protocol_runs_every_method_on_a_bbh_task(tmp_path, t5_world):
    # a third of the targets are the bare base's own greedy answers: its exact match on each split is then known
    inputs = [f"{i} not ( {a} ) is" for i, a in enumerate([True, False] * 6)]
    model, tokenizer = load_model(t5_world["base"], device="cpu")
    answers = generate(model, tokenizer, inputs, max_new_tokens=4)
    own = {text for i, text in enumerate(inputs) if i % 3 == 0}
    targets = [answer if text in own else f"{answer}!" for text, answer in zip(inputs, answers)]
    task = tmp_path / "own_answers.json"
    task.write_text(json.dumps({"examples": [{"input": x, "target": t} for x, t in zip(inputs, targets)]}))
    methods = ["zero_shot", "in_context", "best_single", "uniform", "lorahub_ngopt", "lorahub_cma"]
    summary = bbh.run_bbh(tmp_path, t5_world["base"], t5_world["modules"], seeds=[1, 2], methods=methods,
                          budget=6, modules_per_run=2, max_new_tokens=4)
    assert set(summary) == set(methods)
    cases = bbh.bbh_cases(tmp_path, t5_world["base"], t5_world["modules"], None, [1, 2], modules_per_run=2)
    expected = [100 * sum(row["input"] in own for row in case.test) / 7 for _, _, case in cases]
    assert summary["zero_shot"]["per_task"]["own_answers"] == pytest.approx(expected)
    for figures in summary.values():
        seeds = figures["per_task"]["own_answers"]
        assert len(seeds) == 2 and all(100 * round(a * 7 / 100) / 7 == pytest.approx(a) for a in seeds)  # of 7
        assert figures["avg"] == pytest.approx(np.mean(seeds)) and figures["best"] == max(seeds)


def test_few_shot_and_test_splits_are_disjoint_and_seeded(bbh_dir, t5_world):
    first = list(bbh.bbh_cases(bbh_dir, t5_world["base"], t5_world["modules"], None, [1, 2], modules_per_run=2))
    again = list(bbh.bbh_cases(bbh_dir, t5_world["base"], t5_world["modules"], None, [1], modules_per_run=2))
    (_, _, one), (_, _, two), (_, _, repeat) = *first, *again
    assert len(one.fewshot) == 5 and len(one.test) == 7
    assert one.fewshot == repeat.fewshot and one.modules == repeat.modules
    assert one.fewshot != two.fewshot
    inputs = lambda rows: [(r["input"], r["output"]) for r in rows]  # noqa: E731
    assert sorted(inputs(one.fewshot) + inputs(one.test)) == sorted(inputs(bbh.load_bbh_task(bbh_dir / "boolean_expressions.json")))
