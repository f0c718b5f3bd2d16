"""The real worlds: task formatting, reading the sdist and a BBH checkout, building on a tiny base, the demo."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest

from lorahub_ray.errors import ConfigError, InputError
from lorahub_ray.toy import build_random_base
from lorahub_ray.zoo import bigbench
from lorahub_ray.zoo.world import WorldConfig, build_world

YES_NO = {"task_prefix": "Answer yes or no.", "examples": [
    {"input": f"Is {n} even?", "target_scores": {"Yes": int(n % 2 == 0), "No": int(n % 2 == 1)}} for n in range(40)]}
LETTERS = {"examples": [
    {"input": f"Which is bigger than {n}?", "target_scores": {str(n - 1): 0, str(n + 1): 1, "banana split dessert": 0}}
    for n in range(40)]}
GENERATIVE = {"examples": [{"input": f"Repeat {n}", "target": [f"{n} {n}", f"{n}{n}"]} for n in range(40)]
              + [{"input": "Repeat 1", "target": "11"}, {"input": "no answer", "target": []}]}
MANY_OPTIONS = {"examples": [{"input": f"Close {n}", "target_scores": {f"opt{i}": int(i == n % 30) for i in range(30)}}
                             for n in range(10)]}


BBH_LETTERED = [{"input": f"Pick {n}\nOptions:\n(A) {n}\n(B) {n + 1}\n(C) none", "target": f"({'AB'[n % 2]})"}
                for n in range(30)]
BBH_WORDS = [{"input": f"Is {n} even?\nOptions:\n- Yes \n- No", "target": "Yes" if n % 2 == 0 else "No"}
             for n in range(30)]
BBH_TWO_LABELS = [{"input": f"{n} > 3", "target": str(n > 3)} for n in range(30)]
BBH_COUNTS = [{"input": f"Count to {n}", "target": str(n)} for n in range(30)]


def write_bbh(root: Path, subtasks: dict[str, list[dict]]) -> Path:
    """A directory laid out as a BIG-Bench-Hard checkout: ``bbh/<subtask>.json``."""
    (root / "bbh").mkdir(parents=True)
    for name, examples in subtasks.items():
        (root / "bbh" / f"{name}.json").write_text(json.dumps({"canary": "...", "examples": examples}))
    return root


def write_sdist(path: Path, tasks: dict[str, dict]) -> Path:
    """A tarball laid out as the bigbench sdist, holding ``tasks`` (name -> task.json content)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, task in tasks.items():
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_fixed_short_options_are_answered_by_word_and_listed():
    examples = bigbench.format_task(YES_NO)
    first = examples[0]
    assert first["input"] == "Answer yes or no.\n\nQ: Is 0 even?\nOptions:\n- Yes\n- No\nA:"
    assert first["output"] == " Yes" and first["options"] == [" Yes", " No"]
    assert examples[1]["output"] == " No"


def test_options_that_differ_between_examples_are_lettered_in_an_order_drawn_per_example():
    examples = bigbench.format_task(LETTERS)
    letters = set()
    for n, example in enumerate(examples):
        question, listing = example["input"].split("\nOptions:\n")
        assert question == f"Q: Which is bigger than {n}?" and listing.endswith("\nA:")
        lines = listing[: -len("\nA:")].split("\n")
        assert sorted(line[4:] for line in lines) == sorted([str(n - 1), str(n + 1), "banana split dessert"])
        assert [line[:3] for line in lines] == ["(A)", "(B)", "(C)"] and example["options"] == [" (A)", " (B)", " (C)"]
        assert lines[example["options"].index(example["output"])][4:] == str(n + 1), "the answer names the right option"
        letters.add(example["output"])
    assert letters == {" (A)", " (B)", " (C)"}, "the task file lists the right option second every time; the world does not"
    assert bigbench.format_task(LETTERS) == examples, "the order is drawn from each example's input: deterministic"


def test_free_text_targets_take_the_shortest_and_repeated_or_empty_examples_are_dropped():
    examples = bigbench.format_task(GENERATIVE)
    assert examples[0] == {"input": "Q: Repeat 0\nA:", "output": " 00"}
    assert len(examples) == 40, "a repeated input and an example without an answer are dropped"
    assert all("options" not in ex for ex in examples)


def test_more_options_than_letters_make_a_generative_task():
    examples = bigbench.format_task(MANY_OPTIONS)
    assert examples[3] == {"input": "Q: Close 3\nA:", "output": " opt3"}


def test_long_task_prefixes_are_dropped():
    task = {**YES_NO, "task_prefix": "x" * (bigbench.MAX_PREFIX_CHARS + 1)}
    assert bigbench.format_task(task)[0]["input"].startswith("Q: Is 0 even?")


def test_read_tasks_from_the_sdist_and_clear_errors(tmp_path):
    sdist = write_sdist(tmp_path / "bigbench-1.0.0.tar.gz", {"yes_no": YES_NO, "family/letters": LETTERS})
    tasks = bigbench.read_tasks(sdist, ["yes_no", "family/letters"])
    assert tasks["family/letters"] == LETTERS and tasks["yes_no"] == YES_NO
    with pytest.raises(InputError, match=r"no task.json for \['absent'\]"):
        bigbench.read_tasks(sdist, ["yes_no", "absent"])
    (tmp_path / "junk.tar.gz").write_text("not a tarball")
    with pytest.raises(InputError, match="junk.tar.gz: not a readable bigbench==1.0.0 sdist"):
        bigbench.read_tasks(tmp_path / "junk.tar.gz", ["yes_no"])


def test_the_held_out_and_upstream_tasks_are_disjoint():
    sources = set(bigbench.BBH_SOURCES.values())
    assert len(bigbench.BBH_SOURCES) == 24 and len(bigbench.UPSTREAM) >= 24
    assert not sources & set(bigbench.UPSTREAM)
    families = [name.split("/")[0] for name in bigbench.UPSTREAM]
    assert len(set(families)) == len(families), "one upstream task per BIG-bench family"
    assert not {name.split("/")[0] for name in sources} & set(families)


def test_bbh_options_come_from_the_input_or_the_two_labels_and_counts_are_generative():
    lettered = bigbench.format_bbh(BBH_LETTERED)
    assert lettered[1] == {"input": "Q: Pick 1\nOptions:\n(A) 1\n(B) 2\n(C) none\nA:", "output": " (B)",
                           "options": [" (A)", " (B)", " (C)"]}
    words = bigbench.format_bbh(BBH_WORDS)
    assert words[0]["options"] == [" Yes", " No"] and words[1]["output"] == " No", "option lines are stripped"
    labels = bigbench.format_bbh(BBH_TWO_LABELS)
    assert labels[5] == {"input": "Q: 5 > 3\nA:", "output": " True", "options": [" False", " True"]}
    counts = bigbench.format_bbh(BBH_COUNTS)
    assert counts[7] == {"input": "Q: Count to 7\nA:", "output": " 7"} and len(counts) == 30


def test_bbh_drops_repeated_inputs_and_answers_that_are_not_among_their_options():
    broken = {"input": "Similar to X:\nOptions:\n(A) Monsters\n(B) Inc", "target": "Monsters, Inc"}
    examples = bigbench.format_bbh([*BBH_LETTERED, BBH_LETTERED[0], broken, {"input": "no target"}])
    assert examples == bigbench.format_bbh(BBH_LETTERED) and len(examples) == 30


def test_read_bbh_takes_a_checkout_or_its_folder_and_names_bad_files(tmp_path):
    checkout = write_bbh(tmp_path / "BIG-Bench-Hard", {"navigate": BBH_WORDS, "object_counting": BBH_COUNTS})
    tasks = bigbench.read_bbh(checkout)
    assert list(tasks) == ["navigate", "object_counting"] and bigbench.read_bbh(checkout / "bbh") == tasks
    with pytest.raises(InputError, match="no BBH subtasks"):
        bigbench.read_bbh(tmp_path)
    (checkout / "bbh" / "snarks.json").write_text('{"examples": 3}')
    with pytest.raises(InputError, match=r"snarks.json: field 'examples' holds no example"):
        bigbench.read_bbh(checkout)
    (checkout / "bbh" / "snarks.json").write_text("[not json")
    with pytest.raises(InputError, match=r"snarks.json: not a BBH subtask file"):
        bigbench.read_bbh(checkout)


def test_bbh_families_join_the_sizes_of_one_task():
    assert bigbench.bbh_family("logical_deduction_five_objects") == "logical_deduction"
    assert bigbench.bbh_family("tracking_shuffled_objects_three_objects") == "tracking_shuffled_objects"
    assert bigbench.bbh_family("navigate") == "navigate"


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigbench_world")
    sdist = write_sdist(root / "bigbench-1.0.0.tar.gz", {"navigate": YES_NO, "letters/sub": LETTERS,
                                                         "repeat": GENERATIVE})
    base = build_random_base(root / "base", "llama")
    config = WorldConfig(rank=2, steps=2, batch_size=4, n_train=8, n_dev=4, heldout_size=12, doublings=1,
                         upstream=("letters/sub", "repeat"), heldout=("navigate",))
    manifest = build_world(root / "world", config, sdist=sdist, base=base, progress=False)
    return {"root": root, "sdist": sdist, "base": base, "config": config, "manifest": manifest}


@pytest.mark.slow
def test_a_world_builds_on_a_local_base_and_resumes_module_by_module(tiny_world):
    manifest, world = tiny_world["manifest"], tiny_world["root"] / "world"
    assert [m["task"] for m in manifest["modules"]] == ["letters/sub", "repeat"]
    assert [m["dev_metric"] for m in manifest["modules"]] == ["option accuracy", "exact match"]
    for module in manifest["modules"]:
        assert (world / module["path"] / "adapter_model.safetensors").is_file()
        assert module["specialist"] == (module["module_dev"] > module["base_dev"])
        assert module["steps"] in (2, 4), "a module that does not beat the base is trained again with twice the steps"
    assert manifest["specialists"] == sum(m["specialist"] for m in manifest["modules"])
    held = [json.loads(line) for line in (world / "heldout/navigate.jsonl").read_text().splitlines()]
    assert len(held) == 12 and all(ex["output"] in ex["options"] for ex in held)
    assert json.loads((world / "manifest.json").read_text())["modules"] == manifest["modules"]
    # a second build keeps every module (same fingerprints); one removed module is rebuilt alone
    stamps = {m["path"]: (world / m["path"] / "zoo_meta.json").stat().st_mtime_ns for m in manifest["modules"]}
    import shutil

    shutil.rmtree(world / "modules" / "repeat")
    again = build_world(world, tiny_world["config"], sdist=tiny_world["sdist"], base=tiny_world["base"],
                        progress=False)
    assert again["modules"] == manifest["modules"][:1] + [again["modules"][1]]
    assert (world / "modules/letters-sub/zoo_meta.json").stat().st_mtime_ns == stamps["modules/letters-sub"]
    assert (world / "modules/repeat/adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_a_module_that_ties_the_base_is_not_a_specialist(tiny_world, tmp_path, monkeypatch):
    from lorahub_ray.zoo import world as world_module

    monkeypatch.setattr(world_module, "task_score", lambda model, tokenizer, examples: 27.5)  # 11 of 40, both
    config = dataclasses.replace(tiny_world["config"], doublings=0)
    manifest = build_world(tmp_path / "world", config, sdist=tiny_world["sdist"], base=tiny_world["base"],
                           progress=False)
    assert [(m["base_dev"], m["module_dev"], m["specialist"]) for m in manifest["modules"]] == [(27.5, 27.5, False)] * 2
    assert manifest["specialists"] == 0


@pytest.mark.slow
def test_the_world_demo_composes_for_a_held_out_subtask(tiny_world, tmp_path):
    from lorahub_ray.config import PoolConfig
    from lorahub_ray.demo import run_world_demo

    world = tiny_world["root"] / "world"
    figures = run_world_demo(world, task="navigate", output=tmp_path / "out", budget=3, seed=1,
                             pool=PoolConfig(num_actors=0), test_size=5)
    assert set(figures["zero_shot"]) == {"exact_match", "option_accuracy"} == set(figures["lorahub"])
    assert all(0 <= v <= 100 for f in (figures["zero_shot"], figures["lorahub"]) for v in f.values())
    assert (Path(figures["adapter"]) / "adapter_config.json").is_file()
    with pytest.raises(ConfigError, match="held-out subtask of the world"):
        run_world_demo(world, task="nope", output=tmp_path / "out2")
    with pytest.raises(ConfigError, match="lorahub-ray zoo build --world bigbench"):
        run_world_demo(tmp_path / "missing")


@pytest.mark.slow
def test_the_bbh_world_holds_each_subtask_out_of_its_own_tasks_modules(tmp_path):
    from lorahub_ray.config import PoolConfig
    from lorahub_ray.demo import run_world_demo

    checkout = write_bbh(tmp_path / "bbh-checkout", {"navigate": BBH_WORDS, "sort_three_objects": BBH_LETTERED,
                                                     "sort_five_objects": BBH_LETTERED[::-1],
                                                     "count": BBH_COUNTS})
    base = build_random_base(tmp_path / "base", "llama")
    config = WorldConfig(rank=2, steps=2, batch_size=4, n_train=8, n_dev=4, heldout_size=12)
    manifest = build_world(tmp_path / "world", config, base=base, progress=False, bbh=checkout)
    assert manifest["world"] == "bbh" and manifest["config"]["upstream"] == manifest["config"]["heldout"]
    assert [m["task"] for m in manifest["modules"]] == ["count", "navigate", "sort_five_objects", "sort_three_objects"]
    exclude = {e["task"]: e["exclude"] for e in manifest["heldout"]}
    assert exclude == {"count": ["count"], "navigate": ["navigate"],
                       "sort_five_objects": ["sort_five_objects", "sort_three_objects"],
                       "sort_three_objects": ["sort_five_objects", "sort_three_objects"]}
    figures = run_world_demo(tmp_path / "world", task="sort_three_objects", output=tmp_path / "out", budget=2,
                             seed=1, pool=PoolConfig(num_actors=0), test_size=4, kind="bbh")
    assert {Path(m).name for m in figures["weights"]} == {"count", "navigate"}, "its own task's modules stay out"
    assert set(figures["lorahub"]) == {"exact_match", "option_accuracy"}


def test_zoo_build_world_bbh_needs_its_checkout(tmp_path, capsys):
    from lorahub_ray.cli import main

    assert main(["zoo", "build", "--world", "bbh", "--out", str(tmp_path / "out")]) == 2
    assert "--world bbh needs it" in capsys.readouterr().err
    assert main(["zoo", "build", "--world", "bbh", "--bbh", str(tmp_path), "--out", str(tmp_path / "out"),
                 "--base", str(build_random_base(tmp_path / "base", "llama"))]) == 2
    assert "no BBH subtasks" in capsys.readouterr().err
    assert not (tmp_path / "out" / "modules").exists()


def test_zoo_build_world_bigbench_reports_bad_inputs_in_one_line(tmp_path, capsys):
    """The command's error paths (the full build is tested through `build_world`; the real one downloads with pip)."""
    from lorahub_ray.cli import main

    sdist = write_sdist(tmp_path / "sdist.tar.gz", {"navigate": YES_NO})
    (tmp_path / "junk.tar.gz").write_text("not a tarball")
    base = build_random_base(tmp_path / "base", "llama")
    for extra, message in (([str(sdist), "--base", str(tmp_path / "nobase")], "is not a Hugging Face model directory"),
                           ([str(tmp_path / "junk.tar.gz"), "--base", str(base)], "not a readable bigbench==1.0.0"),
                           ([str(sdist), "--base", str(base)], "no task.json for")):
        assert main(["zoo", "build", "--world", "bigbench", "--out", str(tmp_path / "out"), "--sdist", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "modules").exists(), "nothing is trained before the inputs are read"
