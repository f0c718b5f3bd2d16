"""The command line: search and evaluate end to end, and bad input as one clear error with exit code 2."""

import json
import re
import shutil

import pytest

from dataclasses import MISSING, fields

from lorahub_ray.cli import _pool_config, _run_config, build_parser, flag_of, main
from lorahub_ray.config import PoolConfig, RunConfig


def _search_args(world, examples_file, output, *extra):
    return ["search", "--base", world["base"], "--modules", *world["modules"], "--examples", str(examples_file),
            "--output", str(output), "--budget", "4", "--population", "2", "--actors", "0", "--quiet", *extra]


def test_search_then_evaluate(t5_world, examples_file, tmp_path, capsys):
    assert main(_search_args(t5_world, examples_file, tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "best score" in printed and str(tmp_path / "out" / "adapter") in printed
    assert json.loads((tmp_path / "out" / "result.json").read_text())["evaluations"] == 4
    report = tmp_path / "eval.json"
    args = ["evaluate", "--base", t5_world["base"], "--adapter", str(tmp_path / "out" / "adapter"),
            "--examples", str(examples_file), "--json", str(report), "--max-new-tokens", "4"]
    assert main(args) == 0
    assert "exact match:" in capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert saved["total"] == 5 and len(saved["predictions"]) == 5


@pytest.mark.parametrize("case, message", [
    ("missing_examples", "examples file .* does not exist"),
    ("malformed_examples", "line 1: not valid JSON"),
    ("empty_examples", "no examples"),
    ("missing_module", "is not a local directory and could not be fetched"),
    ("not_an_adapter", "is not a LoRA adapter"),
    ("corrupt_weights", "cannot read .* corrupt"),
    ("mismatched_rank", "has `r` = 8 but module"),
    ("budget", "`budget` must be an integer >= 1, got 0"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(case, message, t5_world, examples_file, tmp_path,
                                                              capsys):
    from lorahub_ray.toy import build_random_modules

    world = dict(t5_world)
    extra = []
    if case == "missing_examples":
        examples_file = tmp_path / "nope.jsonl"
    elif case == "malformed_examples":
        examples_file.write_text("{not json\n")
    elif case == "empty_examples":
        examples_file.write_text("")
    elif case == "missing_module":
        world["modules"] = [*world["modules"], str(tmp_path / "absent")]
    elif case == "not_an_adapter":
        (tmp_path / "empty_dir").mkdir()
        world["modules"] = [*world["modules"], str(tmp_path / "empty_dir")]
    elif case == "corrupt_weights":
        shutil.copytree(world["modules"][0], tmp_path / "corrupt")
        (tmp_path / "corrupt" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
        world["modules"] = [*world["modules"][1:], str(tmp_path / "corrupt")]
    elif case == "mismatched_rank":
        world["modules"] = [*world["modules"], str(build_random_modules(world["base"], tmp_path / "r8", 1, rank=8)[0])]
    elif case == "budget":
        extra = ["--budget", "0"]
    output = tmp_path / "out"
    assert main(_search_args(world, examples_file, output, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not output.exists()


def test_unknown_optimizer_is_rejected_by_the_parser(t5_world, examples_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_search_args(t5_world, examples_file, tmp_path / "out", "--optimizer", "adam"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'adam'" in capsys.readouterr().err


def test_output_that_holds_files_is_refused_unless_it_holds_an_earlier_result_and_overwrite(t5_world, examples_file,
                                                                                            tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(_search_args(t5_world, examples_file, output)) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(_search_args(t5_world, examples_file, output, "--overwrite")) == 2
    assert "holds files that lorahub-ray did not write" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    earlier = tmp_path / "earlier"
    assert main(_search_args(t5_world, examples_file, earlier)) == 0
    assert main(_search_args(t5_world, examples_file, earlier, "--seed", "1")) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(_search_args(t5_world, examples_file, earlier, "--seed", "1", "--overwrite")) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["adapter", "result.json"]
    assert json.loads((earlier / "result.json").read_text())["config"]["seed"] == 1


def test_evaluate_rejects_a_directory_that_is_not_an_adapter(t5_world, examples_file, tmp_path, capsys):
    args = ["evaluate", "--base", t5_world["base"], "--adapter", str(tmp_path), "--examples", str(examples_file)]
    assert main(args) == 2
    assert "is not a PEFT adapter directory" in capsys.readouterr().err


def test_a_killed_search_resumes_to_the_uninterrupted_result(t5_world, examples_file, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "out"
    args = _search_args(t5_world, examples_file, output)
    args[args.index("--budget") + 1] = "600"
    driver = subprocess.Popen([sys.executable, "-m", "lorahub_ray.cli", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    checkpoint = output / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        if checkpoint.exists() and len(json.loads(checkpoint.read_text())["history"]) >= 20:
            break
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    recorded = len(json.loads(checkpoint.read_text())["history"])
    assert 20 <= recorded < 600 and not (output / "result.json").exists()

    assert main(["search", "--resume", str(output), "--actors", "0", "--quiet"]) == 0
    again = _search_args(t5_world, examples_file, tmp_path / "uninterrupted")
    again[again.index("--budget") + 1] = "600"
    assert main(again) == 0
    resumed = json.loads((output / "result.json").read_text())
    uninterrupted = json.loads((tmp_path / "uninterrupted" / "result.json").read_text())
    def trajectory(result):
        return [(h["weights"], h["score"], h["loss"]) for h in result["history"]]

    assert len(resumed["history"]) == 600 and trajectory(resumed) == trajectory(uninterrupted)
    assert resumed["weights"] == uninterrupted["weights"]


def test_a_directory_of_tasks_runs_one_search_each_on_one_pool(t5_world, examples_file, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(examples_file, tasks / "first.jsonl")
    (tasks / "second.jsonl").write_text("\n".join(json.dumps({"input": f"q{i}", "output": f"a{i}"})
                                                  for i in range(4)) + "\n")
    assert main(_search_args(t5_world, tasks, tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    for task in ("first", "second"):
        saved = json.loads((tmp_path / "out" / task / "result.json").read_text())
        assert saved["evaluations"] == 4 and saved["config"]["examples"] == str(tasks / f"{task}.jsonl")
        assert f"{task}: best score" in printed and str(tmp_path / "out" / task / "adapter") in printed
    # the first task's search is the one a single file gives
    assert main(_search_args(t5_world, tasks / "first.jsonl", tmp_path / "alone")) == 0
    alone = json.loads((tmp_path / "alone" / "result.json").read_text())
    assert alone["weights"] == json.loads((tmp_path / "out" / "first" / "result.json").read_text())["weights"]


def test_a_directory_of_tasks_with_a_bad_file_writes_nothing(t5_world, examples_file, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    assert main(_search_args(t5_world, tasks, tmp_path / "out")) == 2
    assert "without *.jsonl files" in capsys.readouterr().err
    shutil.copy(examples_file, tasks / "good.jsonl")
    (tasks / "bad.jsonl").write_text('{"input": "x"}\n')
    assert main(_search_args(t5_world, tasks, tmp_path / "out")) == 2
    assert "bad.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "the output made for the tasks is removed again"


@pytest.mark.parametrize("config", [RunConfig, PoolConfig])
def test_every_config_field_has_a_search_flag_with_its_default_and_docstring(config):
    """A field added to RunConfig or PoolConfig without a flag fails here: the CLI cannot drift from the configs."""
    search = build_parser()._subparsers._group_actions[0].choices["search"]
    actions = {option: action for action in search._actions for option in action.option_strings}
    for field in fields(config):
        action = actions.get(flag_of(field.name))
        assert action is not None, f"{config.__name__}.{field.name} has no flag {flag_of(field.name)}"
        assert action.help, f"{flag_of(field.name)} has no help"
        if field.default is not MISSING and field.name != "generation_timeout_s":  # 0 stands for None there
            assert action.default == field.default, f"{flag_of(field.name)} defaults to {action.default!r}"


def test_a_command_line_sets_every_field_it_names():
    args = build_parser().parse_args([
        "search", "--budget", "7", "--optimizer", "cma", "--population", "3", "--mode", "delta", "--objective",
        "reference", "--reference-batch-size", "2", "--l1", "0.1", "--bound", "0.7", "--seed", "5", "--prefilter",
        "loss:2", "--actors", "0", "--cpus-per-actor", "2", "--gpus-per-actor", "0", "--address", "auto", "--apply",
        "slot", "--dtype", "float32", "--device", "cpu", "--example-batch-size", "4", "--candidates-per-pass", "2",
        "--max-restarts", "5", "--module-dtype", "bfloat16", "--generation-timeout", "0"])
    run = _run_config(args, base="b", modules=["m1", "m2", "m3"], examples="e.jsonl")
    assert run == RunConfig(base="b", modules=["m1", "m2", "m3"], examples="e.jsonl", budget=7, optimizer="cma",
                            population=3, mode="delta", objective="reference", reference_batch_size=2, l1=0.1,
                            bound=0.7, seed=5, prefilter="loss:2")
    assert _pool_config(args) == PoolConfig(num_actors=0, cpus_per_actor=2.0, gpus_per_actor=0.0, address="auto",
                                            apply="slot", dtype="float32", device="cpu", example_batch_size=4,
                                            candidates_per_pass=2, max_restarts=5, module_dtype="bfloat16",
                                            generation_timeout_s=None)

