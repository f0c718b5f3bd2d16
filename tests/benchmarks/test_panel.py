"""The optimizer panel: standings, the default's rule, and the worlds read from each benchmark's results."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import panel  # noqa: E402


def test_standings_rank_the_best_first_and_ties_share_a_rank():
    assert panel.standings({"a": 0.5, "b": 0.9, "c": 0.5, "d": 0.1}) == {"b": 1, "a": 2, "c": 2, "d": 4}


def test_the_reference_is_read_at_one_actor_and_the_others_at_k():
    scores = {"ngopt": {1: 0.3}, "cma": {1: 0.2, 2: 0.4}, "only-8": {8: 0.9}}
    assert panel.at_actors(scores, 2) == {"ngopt": 0.3, "cma": 0.4}


def test_the_default_has_the_best_worst_case_standing_ties_broken_by_the_mean():
    worlds = {  # "steady" is never worse than 3rd; "spiky" wins twice and comes last once
        "w1": {"ngopt": {1: 0.0}, "steady": {2: 0.8}, "spiky": {2: 0.9}, "even": {2: 0.7}},
        "w2": {"ngopt": {1: 0.0}, "steady": {2: 0.8}, "spiky": {2: 0.9}, "even": {2: 0.85}},
        "w3": {"ngopt": {1: 0.5}, "steady": {2: 0.6}, "spiky": {2: 0.1}, "even": {2: 0.55}},
        "checks-only": {"ngopt": {1: 0.5}, "steady": {2: 0.6}},
    }
    chosen, table = panel.choose_default(worlds, 2)
    assert set(table["steady"]["standings"]) == {"w1", "w2", "w3"}, "a world measuring two optimizers does not rank"
    assert {name: entry["worst"] for name, entry in table.items()} == {"ngopt": 4, "steady": 3, "spiky": 4, "even": 3}
    assert table["steady"]["mean"] < table["even"]["mean"] and chosen == "steady"
    with pytest.raises(ValueError, match="no world measures three optimizers"):
        panel.choose_default({"checks-only": worlds["checks-only"]}, 2)
    chosen, table = panel.choose_default(worlds, 2, registered={"ngopt", "steady", "even"})
    assert "spiky" not in table, "a dropped optimizer is not ranked"
    assert {name: entry["worst"] for name, entry in table.items()} == {"ngopt": 3, "steady": 2, "even": 2}


def test_margins_are_over_the_sequential_reference_and_none_where_unmeasured():
    worlds = {"w": {"ngopt": {1: 0.25}, "cma": {2: 0.5}}, "v": {"cma": {2: 0.1}}}
    assert panel.margins(worlds, "cma", 2) == {"w": 0.25, "v": None}
    assert panel.margins(worlds, "cma", 8) == {"w": None, "v": None}


def test_worlds_are_read_from_each_benchmarks_results(tmp_path):
    run = lambda name, k, gap: {"optimizer": name, "actors": k, "gap_closed": gap}  # noqa: E731
    (tmp_path / "planted.json").write_text(json.dumps({"rows": [
        {"base": "t5", "runs": [run("ngopt", 1, 0.2), run("cma", 2, 0.4)]},
        {"base": "t5", "runs": [run("ngopt", 1, 0.4), run("cma", 2, 0.6)]},
        {"base": "llama", "runs": [run("cma", 2, 0.9)]}]}))
    (tmp_path / "optimizers.json").write_text(json.dumps({"summary": {
        "ngopt": {"1": {"accuracy": 31.0}}, "cma": {"1": {"accuracy": 28.0}, "2": {"accuracy": 33.0}}}}))
    (tmp_path / "world.json").write_text(json.dumps({"exact_match": {
        "lorahub_ngopt": {"avg": 40.0}, "lorahub_singles_cma_2actors_equal_time": {"avg": 45.0}, "zero_shot": {}}}))
    worlds = panel.load_worlds(tmp_path)
    assert worlds["planted/t5"] == {"ngopt": {1: pytest.approx(0.3)}, "cma": {2: pytest.approx(0.5)}}
    assert worlds["planted/llama"] == {"cma": {2: 0.9}}
    assert worlds["zoo/t5"] == {"ngopt": {1: 31.0}, "cma": {1: 28.0, 2: 33.0}}
    assert worlds["real/smollm2"] == {"ngopt": {1: 40.0}, "singles-cma": {2: 45.0}}
    assert "zoo/llama" not in worlds
    (tmp_path / "world_panel.json").write_text(json.dumps({"exact_match": {  # the panel's run is read first
        "lorahub_ngopt": {"avg": 41.0}, "lorahub_probes_cma_2actors_equal_time": {"avg": 44.0},
        "lorahub_cma_2actors_equal_time": {"avg": 43.0}, "best_single": {"avg": 39.0}}}))
    assert panel.load_worlds(tmp_path)["real/smollm2"] == {"ngopt": {1: 41.0}, "probes-cma": {2: 44.0},
                                                           "cma": {2: 43.0}}


def test_zoo_runs_of_different_optimizers_merge_and_must_share_the_reference(tmp_path):
    def result(seeds, **accuracy):
        return json.dumps({"summary": {name: {"1": {"accuracy": value}} for name, value in accuracy.items()},
                           "runs": [{"task": "t", "seed": seed} for seed in seeds]})

    (tmp_path / "optimizers.json").write_text(result([1, 2], ngopt=31.0, cma=28.0))
    (tmp_path / "optimizers_t5_probes.json").write_text(result([2, 1], ngopt=31.2, **{"probes-cma": 30.0}))
    assert panel.load_worlds(tmp_path)["zoo/t5"] == {"ngopt": {1: 31.0}, "cma": {1: 28.0}, "probes-cma": {1: 30.0}}
    (tmp_path / "optimizers_t5_probes.json").write_text(result([1, 2], ngopt=29.0))
    with pytest.raises(ValueError, match="zoo/t5: the results files disagree on ngopt"):
        panel.load_worlds(tmp_path)
    (tmp_path / "optimizers_t5_probes.json").write_text(result([1, 3], ngopt=31.0))
    with pytest.raises(ValueError, match="zoo/t5: the results files ran different cases"):
        panel.load_worlds(tmp_path)
