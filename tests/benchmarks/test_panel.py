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
    (tmp_path / "world.json").write_text(json.dumps({"runs": [
        {"task": "a", "seed": 1, "accuracy": {"lorahub_ngopt": 40.0, "lorahub_singles_cma_2actors_equal_time": 45.0,
                                              "zero_shot": 0.0}}]}))
    worlds = panel.load_worlds(tmp_path)
    assert worlds["planted/t5"] == {"ngopt": {1: pytest.approx(0.3)}, "cma": {2: pytest.approx(0.5)}}
    assert worlds["planted/llama"] == {"cma": {2: 0.9}}
    assert worlds["zoo/t5"] == {"ngopt": {1: 31.0}, "cma": {1: 28.0, 2: 33.0}}
    assert worlds["real/smollm2"] == {"ngopt": {1: 40.0, 2: 40.0}, "singles-cma": {2: 45.0}}
    assert "zoo/llama" not in worlds
    (tmp_path / "world_panel.json").write_text(json.dumps({"runs": [  # the panel's run is read first
        {"task": "a", "seed": 1, "accuracy": {"lorahub_ngopt": 41.0, "lorahub_probes_cma_2actors_equal_time": 44.0,
                                              "lorahub_cma_2actors_equal_time": 43.0, "best_single": 39.0}}]}))
    (tmp_path / "world_panel.shard-0-of-2.json").write_text("not read: a shard's rows are in its combined file")
    assert panel.load_worlds(tmp_path)["real/smollm2"] == {"ngopt": {1: 41.0, 2: 41.0}, "probes-cma": {2: 44.0},
                                                           "cma": {2: 43.0}}


def test_real_world_runs_merge_by_case_and_compare_each_number_of_actors_on_its_own_cases(tmp_path):
    def row(task, seed, **accuracy):
        return {"task": task, "seed": seed, "accuracy": {f"lorahub_{m}": v for m, v in accuracy.items()}}

    (tmp_path / "world_panel.json").write_text(json.dumps({"runs": [  # two subtasks, one with two seeds
        row("a", 1, ngopt=40.0, probes_cma_2actors_equal_time=50.0, cma_2actors_equal_time=30.0),
        row("a", 2, ngopt=60.0, probes_cma_2actors_equal_time=50.0, cma_2actors_equal_time=70.0),
        row("b", 1, ngopt=20.0, probes_cma_2actors_equal_time=40.0, cma_2actors_equal_time=20.0)]}))
    (tmp_path / "world_panel_k8.json").write_text(json.dumps({"runs": [  # 8 actors on subtask a's seed 1 only
        row("a", 1, probes_cma_8actors_equal_time=70.0, ngopt=40.0)]}))
    real = panel.load_worlds(tmp_path)["real/smollm2"]
    assert real["probes-cma"] == {2: 45.0, 8: 70.0}, "mean over subtasks of the mean over seeds; k = 8 on its case"
    assert real["ngopt"] == {1: 35.0, 2: 35.0, 8: 40.0}, "the reference over the cases each k measured"
    assert panel.margins({"real": real}, "probes-cma", 8) == {"real": 30.0}
    assert panel.margins({"real": real}, "probes-cma", 2) == {"real": 10.0}
    assert panel.curves(real) == (True, {"probes-cma": ([2, 8], [10.0, 30.0]), "cma": ([2], [0.0])}), "same cases"
    assert panel.curves({"ngopt": {1: 0.4}, "cma": {2: 0.5, 1: 0.3}}) == (False, {"cma": ([1, 2], [0.3, 0.5])})
    (tmp_path / "world_panel_k8.json").write_text(json.dumps({"runs": [row("a", 1, ngopt=45.0)]}))
    with pytest.raises(ValueError, match="real/smollm2: the results files disagree on lorahub_ngopt for a seed 1"):
        panel.load_worlds(tmp_path)


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
