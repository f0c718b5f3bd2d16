from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lorahub_ray.zoo import tasks as tasks_module

from lorahub_ray.zoo.tasks import get_task, heldout_tasks, make_split, splits, stable_seed, upstream_tasks


def _data(example: dict) -> str:
    """The data part of an input: what follows the instruction, before the answer cue."""
    text = example["input"]
    assert text.endswith("\nAnswer:")
    return text[: -len("\nAnswer:")]


def _digits_after(instruction: str, example: dict) -> list[int]:
    body = _data(example)
    assert body.startswith(instruction + " ")
    return [int(x) for x in body[len(instruction) + 1 :].split()]


def test_task_counts_and_names():
    up, held = upstream_tasks(), heldout_tasks()
    assert len(up) >= 30 and len(held) >= 10
    assert all(t.upstream for t in up) and not any(t.upstream for t in held)
    names = [t.name for t in up + held]
    assert len(set(names)) == len(names)
    assert not {t.name for t in held} & {t.name for t in up}
    # held-out tasks are unseen: no held-out instruction is an upstream instruction
    assert not {t.instruction for t in held} & {t.instruction for t in up}


def test_get_task():
    assert get_task("sort_digits").instruction == "Sort the digits:"
    assert get_task("digit_3").upstream is False
    with pytest.raises(KeyError):
        get_task("no_such_task")


def test_inputs_short_and_well_formed():
    for task in upstream_tasks() + heldout_tasks():
        for ex in make_split(task, 50, seed=3):
            assert set(ex) == {"input", "output"}
            assert ex["input"].startswith(task.instruction + " ")
            assert len(ex["input"]) <= 80, ex  # the longest: a 45-character boolean expression
            assert 0 < len(ex["output"]) <= 17, ex


def test_splits_deterministic_and_seed_dependent():
    task = get_task("second_letter")
    a, b = splits(task, seed=0), splits(task, seed=0)
    assert a == b
    assert splits(task, seed=1)["test"] != a["test"]
    # the test set does not depend on how much training data is asked for
    assert splits(task, seed=0, n_train=10)["test"] == a["test"]


def test_splits_sizes_and_disjoint():
    for task in upstream_tasks() + heldout_tasks():
        s = splits(task, seed=0, n_train=300, n_fewshot=5, n_test=100)
        assert len(s["test"]) == 100 and len(s["fewshot"]) == 5 and len(s["train"]) == 300
        inputs = {k: [e["input"] for e in v] for k, v in s.items()}
        for k, v in inputs.items():
            assert len(set(v)) == len(v), (task.name, k)
        assert not set(inputs["train"]) & set(inputs["test"])
        assert not set(inputs["train"]) & set(inputs["fewshot"])
        assert not set(inputs["fewshot"]) & set(inputs["test"])


def test_small_input_space_is_capped_not_endless():
    # 3, 5, 7 or 9 bits: 2**3 + 2**5 + 2**7 + 2**9 = 680 distinct inputs at most
    examples = make_split(get_task("majority_bit"), 1000, seed=0)
    assert 600 < len(examples) <= 680


def test_stable_seed_is_process_independent():
    # Load tasks.py by path so the subprocess stays light (the module needs only the standard library).
    path = Path(tasks_module.__file__)
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('zoo_tasks', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['zoo_tasks'] = mod; spec.loader.exec_module(mod)\n"
        "print(json.dumps([mod.stable_seed('a', 1), mod.splits(mod.get_task('lookup'), 0)['fewshot']]))\n"
    )
    outs = []
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert outs[0] == outs[1]
    seed, fewshot = json.loads(outs[0])
    assert seed == stable_seed("a", 1)
    assert fewshot == splits(get_task("lookup"), 0)["fewshot"]


@pytest.mark.parametrize(
    ("name", "data", "answer"),
    [
        ("sort_digits", "3 9 1", "1 3 9"),
        ("max_digit", "3 8 1", "8"),
        ("least_digit", "3 8 1", "1"),
        ("second_last_digit", "3 8 1", "8"),
        ("dedupe_digits", "3 1 3 2 1", "3 1 2"),
        ("contains_value", "4: 1 4 2", "yes"),
        ("contains_value", "5: 1 4 2", "no"),
        ("add3_last", "7 8", "1"),
        ("add2_last", "4 9", "1"),
        ("next_letter", "abz", "a"),
        ("letter_2_later", "ay", "a"),
        ("count_vowels", "queue", "4"),
        ("count_consonants", "queue", "1"),
        ("first_vowel", "queue", "u"),
        ("first_vowel", "xyz", "none"),
        ("min_letter", "queue", "e"),
        ("bool_eval", "not True or False and True", "False"),
        ("majority_bit", "1 0 1 1 0", "ones"),
        ("count_ones", "1 0 1 1 0", "3"),
        ("even_number", "4731", "no"),
        ("count_even", "2 3 4 0", "3"),
        ("count_odd", "2 3 4 0", "1"),
        ("first_digit_even", "2 3 4 0", "yes"),
        ("first_and_last", "3 9 1 4", "3 4"),
        ("sort_unique", "3 1 3 2 1", "1 2 3"),
        ("lookup", "b: a=3 b=7 c=1", "7"),
        ("larger_number", "47 or 52", "52"),
        ("smaller_number", "47 or 52", "47"),
        ("digit_3", "5 6 7 8", "7"),
        ("count_unique", "1 2 1 3", "3"),
    ],
)
def test_hand_checked_answers(name, data, answer):
    assert get_task(name).solve(data) == answer


def test_example_is_instruction_data_and_solved_answer():
    task = get_task("lookup")
    ex = task.example(random.Random(0))
    data = _data(ex)[len(task.instruction) + 1 :]
    assert ex == {"input": f"Look up {data}\nAnswer:", "output": task.solve(data)}


def test_bool_eval_agrees_with_python():
    task = get_task("bool_eval")
    for ex in make_split(task, 300, seed=0):
        expr = _data(ex)[len("Evaluate: ") :]
        assert ex["output"] == str(eval(expr)), expr  # noqa: S307 - literals and and/or/not only


def test_answers_match_independent_reimplementation():
    checks = {
        "max_digit": lambda xs: str(max(xs)),
        "sort_digits": lambda xs: " ".join(map(str, sorted(xs))),
        "digit_4": lambda xs: str(xs[3]),
        "count_even": lambda xs: str(len([x for x in xs if x % 2 == 0])),
        "add1_last": lambda xs: str((xs[-1] + 1) % 10),
        "count_odd": lambda xs: str(len([x for x in xs if x % 2 == 1])),
        "digit_3": lambda xs: str(xs[2]),
    }
    for name, fn in checks.items():
        task = get_task(name)
        for ex in make_split(task, 100, seed=5):
            assert ex["output"] == fn(_digits_after(task.instruction, ex)), ex
    for ex in make_split(get_task("second_letter"), 100, seed=5):
        assert ex["output"] == _data(ex).split()[-1][1]


@pytest.mark.parametrize(("name", "answer_share"),
                         [("max_digit", 0.25), ("least_digit", 0.25), ("contains_value", 0.6)])
def test_answers_are_not_dominated_by_one_value(name, answer_share):
    """Samplers are shaped so that always giving one answer scores little (e.g. the largest of random digits is
    mostly 9; the largest drawn by ``max_digit``'s sampler is uniform over 3..9)."""
    outputs = [ex["output"] for ex in make_split(get_task(name), 400, seed=0)]
    assert max(outputs.count(o) for o in set(outputs)) / len(outputs) < answer_share
