"""The real-world benchmarks on a tiny bbh world: case pools leave out a subtask's own task, the dtype check and the
option-scoring comparison run."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import dtype_loss  # noqa: E402
import option_scoring  # noqa: E402
import shared_prefix  # noqa: E402
import world  # noqa: E402

from lorahub_ray.toy import build_random_base  # noqa: E402
from lorahub_ray.zoo.world import WorldConfig, build_world  # noqa: E402
from tests.lorahub_ray.zoo.test_world import BBH_COUNTS, BBH_LETTERED, BBH_WORDS, write_bbh  # noqa: E402


@pytest.fixture(scope="module")
def bbh_world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bbh_world")
    checkout = write_bbh(root / "checkout", {"navigate": BBH_WORDS, "sort_three_objects": BBH_LETTERED,
                                             "sort_five_objects": BBH_LETTERED[::-1], "count": BBH_COUNTS})
    base = build_random_base(root / "base", "llama")
    config = WorldConfig(rank=2, steps=1, batch_size=4, n_train=8, n_dev=4, heldout_size=12)
    build_world(root / "world", config, base=base, progress=False, bbh=checkout)
    return root / "world"


@pytest.mark.slow
def test_world_cases_draw_modules_from_other_tasks_only(bbh_world):
    manifest = world.load_world(bbh_world)
    drawn = {task: {Path(m).name for m in case.modules}
             for _, task, _, case in world.cases(bbh_world, manifest, ["sort_five_objects", "count"], [1], 4)}
    assert drawn == {"sort_five_objects": {"count", "navigate"},
                     "count": {"navigate", "sort_five_objects", "sort_three_objects"}}


@pytest.mark.slow
def test_the_dtype_check_compares_both_dtypes_on_the_same_candidates(bbh_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dtype_loss, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["dtype_loss.py", "--world", str(bbh_world), "--candidates", "5"])
    dtype_loss.main()
    result = json.loads((tmp_path / "dtype_loss.json").read_text())
    assert result["candidates"] == 5 and len(result["losses"]["float32"]) == len(result["losses"]["bfloat16"]) == 5
    assert result["losses"]["float32"] != result["losses"]["bfloat16"], "two dtypes, two sets of losses"
    assert result["max_abs_difference"] == max(abs(a - b) for a, b in zip(*result["losses"].values()))
    assert "navigate" not in {Path(m).name for m in result["modules"]}
    monkeypatch.setattr(sys, "argv", ["dtype_loss.py", "--world", str(bbh_world), "--task", "nope"])
    with pytest.raises(SystemExit, match="not a held-out subtask"):
        dtype_loss.main()


@pytest.mark.slow
def test_the_option_scoring_comparison_scores_both_ways_alike(bbh_world, tmp_path, monkeypatch):
    monkeypatch.setattr(option_scoring, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["option_scoring.py", "--world", str(bbh_world), "--tasks", "navigate",
                                      "sort_five_objects", "--test", "3"])
    option_scoring.main()
    rows = json.loads((tmp_path / "option_scoring.json").read_text())["rows"]
    assert [(r["task"], r["prompt"]) for r in rows] == [("navigate", "as given"), ("navigate", "in-context"),
                                                        ("sort_five_objects", "as given"),
                                                        ("sort_five_objects", "in-context")]
    assert all(r["rows"] == 3 * r["options_mean"] and r["picks_that_differ"] == 0 for r in rows)
    assert all(r["max_abs_loss_difference"] < 1e-3 and r["speedup"] > 0 for r in rows)
    assert rows[1]["prompt_tokens_mean"] > rows[0]["prompt_tokens_mean"], "demonstrations lengthen the prompt"
    monkeypatch.setattr(sys, "argv", ["option_scoring.py", "--world", str(bbh_world), "--tasks", "count"])
    with pytest.raises(SystemExit, match="not multiple choice"):
        option_scoring.main()


@pytest.mark.slow
def test_the_shared_prefix_comparison_scores_in_context_prompts_both_ways_alike(bbh_world, tmp_path, monkeypatch):
    monkeypatch.setattr(shared_prefix, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["shared_prefix.py", "--world", str(bbh_world), "--tasks", "navigate", "count",
                                      "--test", "3"])
    shared_prefix.main()
    rows = json.loads((tmp_path / "shared_prefix.json").read_text())["rows"]
    assert [r["task"] for r in rows] == ["navigate", "count"] and "option_losses" not in rows[1]  # count: no options
    assert all(r["exact_match"]["predictions_that_differ"] == 0 and r["exact_match"]["speedup"] > 0 for r in rows)
    assert rows[0]["option_losses"]["picks_that_differ"] == 0
    assert rows[0]["option_losses"]["max_abs_loss_difference"] < 1e-3
    monkeypatch.setattr(sys, "argv", ["shared_prefix.py", "--world", str(bbh_world), "--tasks", "navigate", "nope"])
    with pytest.raises(SystemExit, match=r"\['nope'\] are not held-out subtasks"):
        shared_prefix.main()


def test_dtype_check_candidates_start_with_zero_and_singles():
    rows = dtype_loss.candidates(4, 6, seed=0)
    assert rows.shape == (6, 4) and not rows[0].any() and (rows[1:4] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]).all()
    assert (abs(rows[4:]) <= 1.5).all()


def test_a_rerun_keeps_the_cases_of_earlier_results_with_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(world, "RESULTS", tmp_path)
    row = {"task": "navigate", "seed": 1, "accuracy": {"zero_shot": 0.0}}
    (tmp_path / "w.json").write_text(json.dumps({"test_size": 20, "budget": world.BUDGET, "wall_seconds": 9.0,
                                                 "runs": [row]}))
    (tmp_path / "w.shard-1-of-2.json").write_text(json.dumps({"wall_seconds": 1.0, "rows": [{**row, "seed": 2}]}))
    kept, wall = world.previous_runs("w", 20, ["zero_shot"])
    assert set(kept) == {("navigate", 1), ("navigate", 2)} and wall == 9.0
    kept, wall = world.previous_runs("w", 40, ["zero_shot"])  # another test size: only the shard saved under the name
    assert set(kept) == {("navigate", 2)} and wall == 0.0
    kept, _ = world.previous_runs("w", 20, ["zero_shot", "best_single"])  # other methods: nothing is kept
    assert kept == {}


def test_combining_shards_keeps_the_cases_of_the_results_file_that_no_shard_ran():
    row = {"accuracy": {"zero_shot": 0.0}}
    kept = {(task, seed): {**row, "task": task, "seed": seed, "source": "file"}
            for task in ("a", "b") for seed in (1, 2)}
    shards = [{**row, "task": "c", "seed": 1, "source": "shard"}, {**row, "task": "a", "seed": 1, "source": "shard"}]
    runs = world.combined_runs(shards, kept, ["a", "b", "c"], [1, 2])
    assert [(r["task"], r["seed"], r["source"], r["case"]) for r in runs] == [
        ("a", 1, "shard", 0), ("a", 2, "file", 1), ("b", 1, "file", 2), ("b", 2, "file", 3), ("c", 1, "shard", 4)]
    assert [bool(r.get("earlier_run")) for r in runs] == [False, True, True, True, False]
    assert world.combined_runs(shards, kept, ["c"], [1, 2]) == [{**shards[0], "case": 0}]  # only what was asked


def test_the_panel_runs_every_optimizer_but_the_reference_on_each_number_of_actors():
    from lorahub_ray.optimizers import OPTIMIZERS

    methods = world.panel_methods([1, 8])
    assert methods[:3] == ["zero_shot", "best_single", "lorahub_ngopt"] and len(methods) == len(set(methods))
    others = [name for name in OPTIMIZERS if name != "ngopt"]
    assert {world.search_method_name(name, k) for name in others for k in (1, 8)} == set(methods[3:])
    assert "lorahub_probes_cma_8actors_equal_time" in methods and "lorahub_ngopt_8actors_equal_time" not in methods


@pytest.mark.slow
def test_a_shard_whose_cases_were_all_kept_still_saves_its_rows(bbh_world, tmp_path, monkeypatch):
    monkeypatch.setattr(world, "RESULTS", tmp_path)
    rows = [{"task": "count", "seed": seed, "accuracy": {"zero_shot": 10.0 * seed}} for seed in world.SEEDS[:2]]
    (tmp_path / "w.json").write_text(json.dumps({"test_size": 4, "budget": world.BUDGET, "wall_seconds": 9.0,
                                                 "runs": rows}))
    monkeypatch.setattr(sys, "argv", ["world.py", "--world", str(bbh_world), "--tasks", "count", "--seeds", "2",
                                      "--test-size", "4", "--methods", "zero_shot", "--name", "w", "--shard", "1/2"])
    world.main()
    saved = json.loads((tmp_path / "w.shard-1-of-2.json").read_text())["rows"]
    assert [(row["seed"], row["accuracy"], row["earlier_run"]) for row in saved] == [
        (world.SEEDS[1], {"zero_shot": 10.0 * world.SEEDS[1]}, True)]
