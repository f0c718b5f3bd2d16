"""The planted-composition benchmark: the planted weights, the gap metric, a quick run on the prebuilt zoo."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import planted  # noqa: E402


def test_planted_kinds_and_their_teacher_modes():
    rng = np.random.default_rng(0)
    one, mode = planted.planted_weights("one", 6, rng)
    assert mode == "ab" and sorted(one) == [0, 0, 0, 0, 0, 1.0]
    three, _ = planted.planted_weights("three_one_negative", 20, rng)
    assert sorted(three[three != 0]) == [-0.8, 0.6, 1.0]
    delta, mode = planted.planted_weights("delta", 20, rng)
    assert mode == "delta" and np.count_nonzero(delta) == 3
    small, _ = planted.planted_weights("many_small", 20, rng)
    assert np.count_nonzero(small) == 20 and np.abs(small).max() <= 0.4
    with pytest.raises(ValueError, match="unknown kind"):
        planted.planted_weights("nope", 3, rng)


def test_the_gap_metric_is_one_at_the_teacher_and_zero_at_the_base():
    assert planted.gap_closed(2.0, 1.0, 1.0) == 1.0
    assert planted.gap_closed(2.0, 1.0, 2.0) == 0.0
    assert planted.gap_closed(2.0, 1.0, 2.5) == -0.5


def test_the_plan_gives_k_actors_k_times_the_reference_budget():
    assert planted.search_plan(["ngopt", "cma"], [1, 2, 8]) == [
        ("ngopt", 1, planted.REFERENCE_BUDGET), ("cma", 1, planted.REFERENCE_BUDGET),
        ("cma", 2, 2 * planted.REFERENCE_BUDGET), ("cma", 8, 8 * planted.REFERENCE_BUDGET)]


@pytest.mark.slow
def test_the_teachers_own_weights_close_the_whole_gap(monkeypatch):
    """A search that is handed w* (an optimizer stand-in that proposes only w*) closes exactly the whole gap."""
    zoo, manifest = planted.ensure_zoo(None)
    pool = [str(zoo / m["path"]) for m in manifest["modules"]["t5"]]
    inputs = sorted({ex["input"] for task in manifest["heldout"] for ex in planted.load_examples(zoo / task["test"])})
    found = {}
    draw = planted.planted_weights

    def recorded(kind, num_modules, rng):
        found["weights"], mode = draw(kind, num_modules, rng)
        return found["weights"], mode

    def handed_target(search, evaluate):
        [outcome] = evaluate(found["weights"][None, :])
        score = planted.l1_score(outcome.loss, found["weights"], search.l1)
        return type("Best", (), {"weights": found["weights"].tolist(), "score": score})

    monkeypatch.setattr(planted, "planted_weights", recorded)
    row = planted.run_case(str(zoo / manifest["bases"]["t5"]), pool, inputs, "one", 0, [("cma", 1, 4)], 3)
    [run] = row["runs"]
    assert set(run) == {"optimizer", "actors", "budget", "gap_closed", "test_loss", "distance", "weights",
                        "fewshot_score", "seconds"}
    assert row["teacher_loss"] < row["base_loss"], "the teacher fits its own outputs better than the base"
    monkeypatch.setattr(planted, "minimize", handed_target)
    again = planted.run_case(str(zoo / manifest["bases"]["t5"]), pool, inputs, "one", 0, [("cma", 1, 4)], 3)
    [handed] = again["runs"]
    assert again["target"] == found["weights"].tolist()
    assert handed["gap_closed"] == pytest.approx(1.0, abs=1e-6)
    assert handed["distance"] == 0.0
    assert handed["fewshot_score"] == pytest.approx(again["target_fewshot_score"], rel=1e-6)


@pytest.mark.slow
def test_the_quick_run_writes_every_optimizer(tmp_path, monkeypatch):
    """(matplotlib, the `bench` extra, is not a test dependency: the plot is checked for what it is given.)"""
    plotted = []
    monkeypatch.setattr(planted, "RESULTS", tmp_path)
    monkeypatch.setattr(planted, "require", lambda script, modules: None)
    monkeypatch.setattr(planted, "plot", lambda summary, rows, path: plotted.append((summary, path)))
    monkeypatch.setattr(sys, "argv", ["planted.py", "--quick", "--optimizers", "ngopt", "singles-cma"])
    planted.main()
    result = json.loads((tmp_path / "planted_quick.json").read_text())
    assert {name: sorted(by_actors) for name, by_actors in result["summary"].items()} == {
        "ngopt": ["1"], "singles-cma": ["1", "2"]}
    assert len(result["rows"]) == 2
    assert [(r["optimizer"], r["budget"]) for r in result["rows"][0]["runs"]] == [
        ("ngopt", 40), ("singles-cma", 40), ("singles-cma", 80)]
    assert all(entry["fewshot_below_target"].endswith("/2")
               for by_actors in result["summary"].values() for entry in by_actors.values())
    assert plotted == [(result["summary"], tmp_path / "planted_quick.png")]
