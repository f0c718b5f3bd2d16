"""Ray Tune: searches as trials (metrics, checkpoints, restore), placement groups, sweeps and their exports, the CLI."""

import argparse
import json
import re
from types import SimpleNamespace
from itertools import combinations
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from peft import PeftModel

from actors import WorkerSpec
from actors.examples import tokenize_examples
from actors.model import load_base
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError, InputError, LoraHubRayError
from lorahub_ray.modules import load_stack
from lorahub_ray.pool import WorkerPool
from lorahub_ray.run import run
from lorahub_ray.cli import main
from lorahub_ray.tune import (
    add_tune_command,
    load_sweep_config,
    run_tune_command,
    search_trial,
    sweep,
    trial_resources,
    trial_settings,
    with_pool_resources,
)
from lorahub_ray.tune.sweeps import _best_rows
from tests.conftest import EXAMPLES

UPPER = [{"input": f"Upper: {ex['output']}\nAnswer:", "output": ex["output"].upper()} for ex in EXAMPLES]


def _tune_args(*argv):
    parser = argparse.ArgumentParser()
    add_tune_command(parser.add_subparsers(dest="command"))
    return parser.parse_args(["tune", *argv])


def _write_tasks(root: Path) -> dict:
    tasks = {}
    for name, examples in (("reverse", EXAMPLES), ("upper", UPPER)):
        tasks[name] = f"{name}.jsonl"
        (root / tasks[name]).write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    return tasks


def _reports(trial_dir: str) -> list[dict]:
    """Every result a trial reported, from Tune's own result.json (one JSON object per line)."""
    return [json.loads(line) for line in (Path(trial_dir) / "result.json").read_text().splitlines()]


def _loss(base, adapter, examples):
    model, tokenizer = load_base(base, torch.device("cpu"))
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    batch = tokenize_examples(tokenizer, examples, bool(model.config.is_encoder_decoder))
    with torch.no_grad():
        return float(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss)


@pytest.fixture(scope="module")
def swept(local_ray, t5_world, tmp_path_factory):
    """The CLI's sweep: 2 tasks x l1 in {0, 0.1}, one 1-CPU actor per trial, on a 2-CPU Ray; JSON paths relative."""
    root = tmp_path_factory.mktemp("sweep")
    config = {"name": "test", "storage_path": "runs", "tasks": _write_tasks(root), "param_space": {"l1": [0.0, 0.1]},
              "base": t5_world["base"], "module_pool": t5_world["modules"], "num_modules": 2, "module_seed": 1,
              "budget": 6, "population": 3, "seed": 5, "actors": 1, "cpus_per_actor": 1}
    (root / "sweep.json").write_text(json.dumps(config))
    assert main(["tune", "--config", str(root / "sweep.json")]) == 0
    return root


@pytest.mark.ray
def test_sweep_reports_every_generation_and_exports_the_best_trial_of_each_task(swept, t5_world):
    experiment = swept / "runs" / "test"
    trials = sorted(experiment.glob("search_trial_*"))
    assert len(trials) == 4
    best, spans = {}, []
    for trial in trials:
        reports = _reports(trial)
        spans.append((reports[-1]["timestamp"] - reports[-1]["time_total_s"], reports[-1]["timestamp"]))
        assert [r["generation"] for r in reports] == [1, 2] and [r["evaluations"] for r in reports] == [3, 6]
        assert reports[0]["best_score"] >= reports[1]["best_score"]
        assert all(r["generation_seconds"] > 0 for r in reports)
        saved = json.loads((trial / "search" / "result.json").read_text())
        assert reports[-1]["best_score"] == saved["best_score"] and len(saved["weights"]) == 2
        assert reports[-1]["adapter"].endswith("search/adapter") and (trial / "search" / "adapter").is_dir()
        assert len(list(trial.glob("checkpoint_*/checkpoint.json"))) == 2
        task = reports[-1]["config"]["task"]
        best[task] = min(best.get(task, float("inf")), saved["best_score"])
    # 1-CPU trials (their actor inside their placement group) ran two at a time on the 2 CPUs
    assert any(a_start < b_end and b_start < a_end for (a_start, a_end), (b_start, b_end) in combinations(spans, 2))
    for task, examples in (("reverse", EXAMPLES), ("upper", UPPER)):
        exported = experiment / "best" / task
        saved = json.loads((exported / "result.json").read_text())
        assert saved["best_score"] == best[task]
        assert _loss(t5_world["base"], exported / "adapter", examples) == pytest.approx(saved["best_loss"], rel=1e-5)


@pytest.mark.ray
def test_resuming_a_finished_sweep_returns_its_table_without_new_trials(swept, capsys):
    config = load_sweep_config(swept / "sweep.json")
    rows = sweep(**config, resume=True, verbose=0)
    assert [row["task"] for row in rows] == ["reverse", "upper"]
    assert {row["params"]["l1"] for row in rows} <= {0.0, 0.1} and all(len(row["weights"]) == 2 for row in rows)
    for row in rows:
        saved = json.loads((Path(row["adapter"]).parent / "result.json").read_text())
        assert row["best_score"] == saved["best_score"] and row["weights"] == saved["weights"]
    table = capsys.readouterr().out.splitlines()[-3:]  # the table comes last, after Tune's own output
    assert table[0].split()[:4] == ["task", "l1", "best_score", "best_loss"]
    assert [line.split()[0] for line in table[1:]] == ["reverse", "upper"]
    assert len(list((swept / "runs" / "test").glob("search_trial_*"))) == 4
    with pytest.raises(ConfigError, match="`name`.*already exists"):
        sweep(**config)


@pytest.mark.ray
def test_a_trial_that_fails_continues_from_its_checkpoint_to_the_uninterrupted_result(local_ray, t5_world, tmp_path):
    from ray import tune

    def fails_after_two_generations(config):
        """search_trial, made to fail right after its second report unless it was restored from a checkpoint."""
        if tune.get_checkpoint() is not None:
            return search_trial(config)
        report, calls = tune.report, []

        def report_then_fail(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            calls.append(metrics)
            if len(calls) == 2:
                raise RuntimeError("injected failure")

        with mock.patch.object(tune, "report", report_then_fail):
            search_trial(config)

    config = {"base": t5_world["base"], "modules": t5_world["modules"], "examples": EXAMPLES, "budget": 12,
              "population": 3, "seed": 11, "actors": 0}
    generations = []

    class RecordGenerations(tune.Callback):
        """Every generation the trial reports, as the driver receives it (Tune's result.json is rewritten from
        storage when a trial restarts, so it may lack the reports of the failed attempt)."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            generations.append(result["generation"])

    tuner = tune.Tuner(with_pool_resources(fails_after_two_generations), param_space=config,
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="restore", verbose=0,
                                                 callbacks=[RecordGenerations()],
                                                 failure_config=tune.FailureConfig(max_failures=1)))
    [result] = tuner.fit()
    assert result.error is None, result.error
    assert generations == [1, 2, 3, 4], generations  # continued from generation 2, not started over
    saved = json.loads((Path(result.path) / "search" / "result.json").read_text())
    uninterrupted = run(trial_settings(config)[0], PoolConfig(num_actors=0), progress=False)
    assert saved["weights"] == uninterrupted.weights
    assert [h["weights"] for h in saved["history"]] == [e.weights for e in uninterrupted.history]


@pytest.mark.ray
def test_a_pool_started_inside_a_placement_group_keeps_its_actors_in_it(local_ray, t5_world):
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"CPU": 2}])  # all of the 2-CPU cluster: no actor fits outside it
    local_ray.get(group.ready(), timeout=60)

    @local_ray.remote(num_cpus=0)
    def evaluate_in_the_group():
        spec, stack = WorkerSpec(base=t5_world["base"]), load_stack(t5_world["modules"])
        with WorkerPool(spec, stack, EXAMPLES, PoolConfig(num_actors=1, cpus_per_actor=2)) as pool:
            return len(pool.evaluate(np.zeros((2, 3))))

    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    try:  # no retry, so that a failure shows its own error; the wait is generous for a loaded machine
        task = evaluate_in_the_group.options(scheduling_strategy=strategy, max_retries=0).remote()
        assert local_ray.get(task, timeout=300) == 2
    finally:
        remove_placement_group(group)


def test_each_trial_reserves_its_process_and_one_bundle_per_actor(t5_world):
    config = {"base": t5_world["base"], "modules": t5_world["modules"], "examples": EXAMPLES}
    two_actors = {**config, "actors": 2, "cpus_per_actor": 2, "gpus_per_actor": 0.5, "trial_cpus": 0.5}
    assert trial_resources(two_actors).bundles == [{"CPU": 0.5}, {"CPU": 2, "GPU": 0.5}, {"CPU": 2, "GPU": 0.5}]
    assert trial_resources({**config, "actors": 1}).bundles == [{"CPU": 1}]  # no CPU of its own: shares bundle 0
    assert trial_resources({**config, "actors": 0}).bundles == [{"CPU": 1}]  # evaluates in its own process


def test_module_pool_sampling_is_seeded(t5_world):
    config = {"base": t5_world["base"], "module_pool": t5_world["modules"], "examples": EXAMPLES, "num_modules": 2}
    first, _ = trial_settings({**config, "module_seed": 3})
    assert first.modules == trial_settings({**config, "module_seed": 3})[0].modules
    assert len(first.modules) == 2 and set(first.modules) <= set(t5_world["modules"])


@pytest.mark.parametrize("change, field", [
    ({"param_space": {"lr": [1, 2]}}, "`param_space`: unknown \\['lr'\\]"),
    ({"param_space": {"num_modules": [2, 9]}}, "`num_modules` must be an integer in 1..3"),
    ({"param_space": {"l1": [0.1, -1]}}, "`l1` must be >= 0"),
    ({"param_space": {"budget": []}}, "`budget` has no values"),
    ({"modules": ["a"]}, "`modules` or `module_pool`"),
    ({"tasks": {"t": "missing.jsonl"}}, "`tasks`: the examples of 't'"),
    ({"tasks": {}}, "`tasks` must map"),
    ({"l1": 0.1}, "both fixed settings and swept"),
    ({"optimiser": "cma"}, "sweep settings: unknown \\['optimiser'\\]"),
    *[({"tasks": {name: "t.jsonl"}}, f"`tasks`: the task name {re.escape(repr(name))} is not a plain directory name")
      for name in ("..", ".", "", "/etc", "a/b", "..\\x")],
    ({"max_failures": "x"}, "`max_failures` must be an integer >= 0"),
    ({"max_concurrent_trials": 0}, "`max_concurrent_trials` must be an integer >= 1"),
])
def test_bad_sweep_settings_name_the_field_before_anything_runs(t5_world, tmp_path, change, field):
    (tmp_path / "t.jsonl").write_text(json.dumps(EXAMPLES[0]) + "\n")
    settings = {"tasks": {"t": str(tmp_path / "t.jsonl")}, "param_space": {"l1": [0.0]}, "base": t5_world["base"],
                "module_pool": t5_world["modules"], "storage_path": tmp_path, **change}
    with pytest.raises(ConfigError, match=field):
        sweep(**settings)
    assert not (tmp_path / "lorahub-sweep").exists()


@pytest.mark.parametrize("change, message", [
    ({"base": "no/such/base"}, "base model 'no/such/base' could not be loaded"),
    ({"module_pool": ["no/such/module"]}, "module 'no/such/module' is not a local directory"),
    ({"tasks": {"t": "bad.jsonl"}}, "bad.jsonl, line 1: not valid JSON"),
])
def test_missing_or_bad_trial_inputs_stop_the_sweep_before_any_trial(t5_world, tmp_path, monkeypatch, change,
                                                                       message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text(json.dumps(EXAMPLES[0]) + "\n")
    (tmp_path / "bad.jsonl").write_text("{\n")
    settings = {"tasks": {"t": "t.jsonl"}, "param_space": {"l1": [0.0]}, "base": t5_world["base"],
                "module_pool": t5_world["modules"], "storage_path": tmp_path, **change}
    with pytest.raises(LoraHubRayError, match=re.escape(message)):
        sweep(**settings)
    assert not (tmp_path / "lorahub-sweep").exists()


def test_bad_sweep_files_and_arguments_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "extra.json").write_text(json.dumps({"tasks": {}, "param_space": {}, "resume": True}))
    with pytest.raises(InputError, match="not valid JSON"):
        load_sweep_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_sweep_config(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="unknown \\['resume'\\]"):
        load_sweep_config(tmp_path / "extra.json")
    with pytest.raises(InputError, match="cannot read"):
        load_sweep_config(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="--storage-path goes with --config"):
        run_tune_command(_tune_args("--example", str(tmp_path), "--storage-path", str(tmp_path)))
    with pytest.raises(SystemExit):
        _tune_args("--config", "a.json", "--example")


def test_the_export_replaces_only_an_earlier_export_and_only_once_every_task_can_be_exported(t5_world, tmp_path):
    trials = []
    for task, seed in (("reverse", 1), ("upper", 2)):
        trial = tmp_path / f"trial_{task}"
        trial.mkdir()
        config = RunConfig(base=t5_world["base"], modules=t5_world["modules"], examples=EXAMPLES, budget=3,
                           optimizer="cma", population=3, seed=seed)
        result = run(config, PoolConfig(num_actors=0), trial / "search", progress=False)
        trials.append(SimpleNamespace(error=None, path=str(trial), config={"task": task, "l1": 0.05},
                                      metrics={"best_score": result.best_score, "best_loss": result.best_loss}))
    best = tmp_path / "best"
    (best / "upper").mkdir(parents=True)
    (best / "upper" / "mine.txt").write_text("not lorahub-ray's")
    with pytest.raises(ConfigError, match="task 'upper' goes to .*best/upper', which holds files that lorahub-ray"):
        _best_rows(trials, ["reverse", "upper"], ["l1"], best)
    assert [p.name for p in best.iterdir()] == ["upper"]
    assert [p.name for p in (best / "upper").iterdir()] == ["mine.txt"]
    (best / "upper" / "mine.txt").unlink()
    first = _best_rows(trials, ["reverse", "upper"], ["l1"], best)
    trials[0].path = trials[1].path  # the sweep resumed: another trial is now the best of "reverse"
    again = _best_rows(trials, ["reverse", "upper"], ["l1"], best)
    assert sorted(p.name for p in (best / "reverse").iterdir()) == ["adapter", "result.json"]
    assert json.loads((best / "reverse" / "result.json").read_text())["config"]["seed"] == 2
    assert first[0]["weights"] != again[0]["weights"] == again[1]["weights"]
