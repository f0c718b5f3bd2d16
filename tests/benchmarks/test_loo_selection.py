"""Leave-one-out early stopping: the rule on planted histories, and the same searches as planted.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import loo_selection  # noqa: E402
import planted  # noqa: E402


def history(*losses: list[float], tokens: int = 1) -> list[np.ndarray]:
    """Per-example (sums, counts) of candidates whose per-example mean losses are ``losses``."""
    return [np.stack([np.array(x, dtype=float) * tokens, np.full(len(x), float(tokens))]) for x in losses]


def test_a_later_candidate_that_fits_four_examples_at_the_fifths_expense_is_not_returned():
    even, overfit = [1.0] * 5, [0.2, 0.2, 0.2, 0.2, 3.5]  # the second has the lower mean: 0.86 < 1
    assert loo_selection.loo_stop(history(even, overfit), np.zeros(2)) == (0, 1)


def test_a_later_candidate_better_on_every_example_is_returned_and_the_prefix_is_the_earliest_best():
    assert loo_selection.loo_stop(history([1.0] * 5, [0.5] * 5, [0.7] * 5), np.zeros(3)) == (1, 2)


def test_the_l1_term_counts_in_the_left_out_choice():
    losses = history([1.0] * 5, [0.9] * 5)
    assert loo_selection.loo_stop(losses, np.zeros(2)) == (1, 2)
    assert loo_selection.loo_stop(losses, np.array([0.0, 0.2])) == (0, 1)  # 0.9 + 0.2 loses to 1.0 everywhere


def test_a_left_out_choice_weighs_the_other_examples_by_their_tokens():
    # candidate 1: two one-token examples at 0.1 and a ten-token one at 1.2 per token. With example 0 or 2 left
    # out its token mean is 1.1 (not the example mean 0.65), so candidate 0 predicts them and the prefix stays at 1
    even = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    uneven = np.array([[0.1, 12.0, 0.1], [1.0, 10.0, 1.0]])
    assert loo_selection.loo_stop([even, uneven], np.zeros(2)) == (0, 1)


@pytest.mark.slow
def test_the_recorded_searches_are_planted_pys_searches():
    """The recording evaluator scores exactly as `Worker.evaluate`: 'best' reproduces planted.py's result."""
    zoo, manifest = planted.ensure_zoo(None)
    pool = [str(zoo / m["path"]) for m in manifest["modules"]["t5"]]
    inputs = sorted({ex["input"] for task in manifest["heldout"] for ex in planted.load_examples(zoo / task["test"])})
    base, plan = str(zoo / manifest["bases"]["t5"]), [("cma", 1, 12)]
    [expected] = planted.run_case(base, pool, inputs, "three_one_negative", 0, plan, 4)["runs"]
    [run] = loo_selection.run_case(base, pool, inputs, "three_one_negative", 0, plan, 4)["runs"]
    assert run["best"]["gap_closed"] == expected["gap_closed"]
    assert run["best"]["distance"] == expected["distance"]
    assert 1 <= run["loo_kept"] <= 12
    assert set(run["loo_stop"]) == {"gap_closed", "distance"}


@pytest.mark.slow
def test_the_quick_run_writes_both_rules_for_every_search(tmp_path, monkeypatch):
    monkeypatch.setattr(loo_selection, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["loo_selection.py", "--quick"])
    loo_selection.main()
    result = json.loads((tmp_path / "loo_selection_quick.json").read_text())
    assert {name: sorted(by_actors) for name, by_actors in result["summary"].items()} == {
        "ngopt": ["1"], "cma": ["1", "2"], "probes-cma": ["1", "2"]}
    assert len(result["rows"]) == 2 and result["zoos"] == [str(planted.ensure_zoo(None)[0])]
    for row in result["rows"]:
        for run in row["runs"]:
            assert 1 <= run["loo_kept"] <= run["budget"] and set(run["best"]) == set(run["loo_stop"])
