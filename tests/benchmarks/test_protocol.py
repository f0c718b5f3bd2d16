import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import protocol  # noqa: E402
from tests.conftest import EXAMPLES  # noqa: E402


def test_searches_on_k_actors_get_their_equal_time_budget(t5_world, monkeypatch):
    case = protocol.Case(t5_world["base"], t5_world["modules"][:2], EXAMPLES[:3],
                         EXAMPLES[3:5], seed=1, max_new_tokens=4)
    scored = []  # (weights, accuracy) of every accuracy the protocol measures
    accuracy = case.accuracy
    monkeypatch.setattr(case, "accuracy", lambda weights: scored.append((weights, accuracy(weights))) or scored[-1][1])
    methods = ["lorahub_ngopt", "lorahub_cma_2actors_equal_time", "lorahub_singles_cma_2actors_equal_time",
               "lorahub_cma_4actors_equal_time"]
    outcome = protocol.run_methods(case, methods, budget=6, speedup=1.9)
    assert protocol.equal_time_budget(6, 1.9) == 11 and protocol.equal_time_budget(6, 0.7) == 6
    assert protocol.equal_time_budget(6, 2.6) == 12 and protocol.equal_time_budget(6, 2.6, actors=4) == 15
    assert outcome["evaluations"] == {methods[0]: 6, methods[1]: 11, methods[2]: 11, methods[3]: 24}
    assert {m: len(c) for m, c in outcome["convergence"].items()} == outcome["evaluations"]
    for curve in outcome["convergence"].values():
        assert np.all(np.diff(curve) <= 0), "a best-so-far curve never rises"
    # each accuracy is the test exact match of its search's best candidate (the searches re-run: they are seeded)
    assert len(scored) == 4
    for method, (weights, accuracy), (optimizer, budget) in zip(methods, scored, [("ngopt", 6), ("cma", 11),
                                                                                  ("singles-cma", 11), ("cma", 24)]):
        best = min(protocol.lorahub_search(case, optimizer, budget).history, key=lambda e: e.score)
        assert outcome["convergence"][method][-1] == best.score and list(weights) == best.weights
        assert outcome["accuracy"][method] == accuracy


def test_shards_split_the_cases_and_combine_in_case_order(tmp_path):
    assert protocol.parse_shard(None) == (0, 1) and protocol.parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="I/N"):
        protocol.parse_shard("3/3")
    protocol.save_shard(tmp_path, "quality", (1, 2), [{"case": 1}, {"case": 3}], 5.0)
    with pytest.raises(SystemExit, match="missing shard results"):
        protocol.load_shards(tmp_path, "quality", 2)
    protocol.save_shard(tmp_path, "quality", (0, 2), [{"case": 0}, {"case": 2}], 7.0)
    rows, walls = protocol.load_shards(tmp_path, "quality", 2)
    assert [row["case"] for row in rows] == [0, 1, 2, 3] and walls == [7.0, 5.0]
    assert protocol.load_shards(tmp_path, "quality", 2)[0] == rows, "combining can be repeated until removed"
    protocol.remove_shards(tmp_path, "quality", 2)
    assert not list(tmp_path.iterdir()), "shard files are removed once the combined results are written"


def test_cases_with_options_are_scored_by_option_accuracy_too(t5_world):
    choices = [{"input": f"{ex['input']}", "output": ex["output"], "options": [ex["output"], "zzz"]} for ex in EXAMPLES]
    case = protocol.Case(t5_world["base"], t5_world["modules"][:2], choices[:3], choices[3:], seed=1,
                         max_new_tokens=None, options=True, finetune_steps=2)
    outcome = protocol.run_methods(case, ["zero_shot", "in_context", "lora_finetune", "lorahub_ngopt"], budget=3)
    assert set(outcome["option_accuracy"]) == set(outcome["accuracy"])
    from lorahub_ray.evaluate import option_accuracy

    case.worker.cache.apply(np.zeros(2))
    assert outcome["option_accuracy"]["zero_shot"] == option_accuracy(case.worker.model, case.worker.tokenizer,
                                                                      case.test)
    plain = protocol.Case(t5_world["base"], t5_world["modules"][:2], EXAMPLES[:3], EXAMPLES[3:], seed=1)
    assert "option_accuracy" not in protocol.run_methods(plain, ["zero_shot"])


def test_world_baselines_are_the_label_prior_and_chance():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import world

    test = [{"input": "a", "output": " (A)", "options": [" (A)", " (B)"]},
            {"input": "b", "output": " (A)", "options": [" (A)", " (B)", " (C)", " (D)"]},
            {"input": "c", "output": " (B)", "options": [" (A)", " (B)"]}]
    figures = world.baselines(test)
    assert figures["majority"] == pytest.approx(200 / 3) and figures["chance"] == pytest.approx(100 * (1.25 / 3))
    assert world.baselines([{"input": "a", "output": "x"}]) == {"majority": 100.0}


def test_in_context_demonstrations_join_input_and_output_once():
    assert protocol._demonstration({"input": "Q: x\nA:", "output": " (A)"}) == "Q: x\nA: (A)\n\n"
    assert protocol._demonstration({"input": "task: x", "output": "y"}) == "task: x y\n\n"


def test_search_methods_name_every_registered_optimizer_and_nothing_else():
    from lorahub_ray.optimizers import OPTIMIZERS

    for name in OPTIMIZERS:
        for actors in (1, 2, 4, 8, 16):
            assert protocol.search_method(protocol.search_method_name(name, actors)) == (name, actors)
    assert protocol.search_method_name("probes-cma") == "lorahub_probes_cma"
    assert protocol.search_method("lorahub_probes_cma_2actors_equal_time") == ("probes-cma", 2)
    assert protocol.search_method("lorahub_singles_cma_8actors_equal_time") == ("singles-cma", 8)
    for method in ("zero_shot", "lorahub_unknown", "ngopt", "lorahub_", "lorahub_cma_1actors_equal_time",
                   "lorahub_cma_0actors_equal_time", "lorahub_unknown_2actors_equal_time", "cma_2actors_equal_time"):
        assert protocol.search_method(method) is None


def test_a_search_on_k_actors_gets_the_budget_k_actors_spend_in_the_references_time():
    assert protocol.actors_budget(40, 1, speedup=1.8) == 40
    assert protocol.actors_budget(40, 2, speedup=1.8) == 72, "two actors: the measured speed-up"
    assert protocol.actors_budget(40, 4, speedup=1.8) == 160 and protocol.actors_budget(40, 8, 1.8) == 320
    with pytest.raises(ValueError, match="at least 1"):
        protocol.actors_budget(40, 0, speedup=1.8)
