"""Output directories: nothing is deleted before a new result is complete, then only lorahub-ray's own files;
shared, foreign and unwritable outputs are refused before any evaluation."""

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lorahub_ray.cli import main
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import ConfigError
from lorahub_ray.output import is_own
from lorahub_ray.run import resume, run
from tests.conftest import EXAMPLES

IN_PROCESS = PoolConfig(num_actors=0)


def _config(world, **overrides):
    settings = dict(base=world["base"], modules=world["modules"], examples=EXAMPLES, budget=6, population=3, seed=3)
    return RunConfig(**{**settings, **overrides})


def _search_args(world, examples_file, output, *extra):
    return ["search", "--base", world["base"], "--modules", *world["modules"], "--examples", str(examples_file),
            "--output", str(output), "--budget", "4", "--population", "2", "--actors", "0", "--quiet", *extra]


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _interrupt_at(generation: int):
    def interrupt(search):
        if search.generation == generation:
            raise KeyboardInterrupt

    return interrupt


def test_overwrite_refuses_a_directory_of_someone_elses_files_and_keeps_them(t5_world, examples_file, tmp_path,
                                                                             capsys):
    output = tmp_path / "out"
    (output / "adapter").mkdir(parents=True)
    (output / "keep.txt").write_text("mine")
    (output / "adapter" / "notes.txt").write_text("also mine")
    before = _snapshot(output)
    assert main(_search_args(t5_world, examples_file, output, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "holds files that lorahub-ray did not write" in err and str(output) in err
    assert _snapshot(output) == before


def test_a_failing_overwrite_leaves_the_previous_result_as_it_was(t5_world, examples_file, tmp_path, capsys):
    """The issue's case: --overwrite over a previous result, with a module holding a NaN: exit 2, nothing lost."""
    output = tmp_path / "out"
    assert main(_search_args(t5_world, examples_file, output)) == 0
    before = _snapshot(output)
    broken = tmp_path / "nan_module"
    shutil.copytree(t5_world["modules"][0], broken)
    tensors = load_file(broken / "adapter_model.safetensors")
    next(iter(tensors.values())).fill_(float("nan"))
    save_file(tensors, broken / "adapter_model.safetensors")
    world = {**t5_world, "modules": [str(broken), *t5_world["modules"][1:]]}
    assert main(_search_args(world, examples_file, output, "--overwrite")) == 2
    assert "error: " in capsys.readouterr().err
    after = _snapshot(output)
    assert {name: after[name] for name in before} == before
    assert set(after) - set(before) <= {"checkpoint.json"}


def test_an_interrupted_overwrite_keeps_the_old_result_and_resumes_to_the_new_one(t5_world, tmp_path):
    output = tmp_path / "out"
    run(_config(t5_world, seed=1), IN_PROCESS, output, progress=False)
    old = _snapshot(output)
    (output / "merged").mkdir()  # as an earlier --merge search left it
    (output / "merged" / "config.json").write_text("{}")
    (output / "notes.txt").write_text("the user's")
    new = _config(t5_world, seed=2)
    with pytest.raises(KeyboardInterrupt):
        run(new, IN_PROCESS, output, overwrite=True, progress=False, on_generation=_interrupt_at(1))
    interrupted = _snapshot(output)
    assert {name: interrupted[name] for name in old} == old and "checkpoint.json" in interrupted
    resumed = resume(output, IN_PROCESS, progress=False)
    assert resumed.weights == run(new, IN_PROCESS, progress=False).weights
    assert sorted(p.name for p in output.iterdir()) == ["adapter", "notes.txt", "result.json"]
    assert (output / "notes.txt").read_text() == "the user's"
    assert json.loads((output / "result.json").read_text())["config"]["seed"] == 2


def test_overwrite_replaces_a_finished_result_only_once_the_new_one_is_complete(t5_world, tmp_path):
    output = tmp_path / "out"
    run(_config(t5_world, seed=1), IN_PROCESS, output, progress=False)
    old = _snapshot(output)
    seen = []
    run(_config(t5_world, seed=2), IN_PROCESS, output, overwrite=True, progress=False,
        on_generation=lambda search: seen.append({n: b for n, b in _snapshot(output).items() if n in old}))
    assert seen and all(files == old for files in seen)  # the old result was intact during the whole search
    assert sorted(p.name for p in output.iterdir()) == ["adapter", "result.json"]
    assert _snapshot(output)["result.json"] != old["result.json"] and is_own(output)


@pytest.mark.parametrize("where", ["cwd", "dot", "parent", "home", "root"])
def test_a_shared_directory_is_refused_as_output_and_nothing_is_deleted(where, t5_world, examples_file, tmp_path,
                                                                        monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    output = {"cwd": str(work), "dot": ".", "parent": "..", "home": "~", "root": "/"}[where]
    assert main(_search_args(t5_world, examples_file, output, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"output {output!r} is " in err and "give the result a directory of its own" in err
    assert (work / "keep.txt").read_text() == "mine"


def test_an_output_that_cannot_be_written_is_refused_before_any_evaluation(t5_world, tmp_path):
    generations = []
    # sysfs refuses new entries even to root; a parent that is a file is refused by any user
    (tmp_path / "a_file").write_text("")
    for output, message in [(Path("/sys/lorahub-ray-test-output"), "cannot be written"),
                            (tmp_path / "a_file" / "out", "is not a directory")]:
        with pytest.raises(ConfigError, match=message):
            run(_config(t5_world), IN_PROCESS, output, progress=False, on_generation=generations.append)
        assert not output.exists()
    assert generations == []


def test_a_read_only_output_is_refused_unless_the_user_can_write_it_anyway(t5_world, tmp_path):
    """A real write is tried, not a guess from the mode bits: root may write into a read-only directory."""
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    generations = []
    try:
        if os.geteuid() == 0:
            result = run(_config(t5_world), IN_PROCESS, read_only, progress=False, on_generation=generations.append)
            assert result.output == read_only and (read_only / "result.json").is_file()
        else:
            with pytest.raises(ConfigError, match="cannot be written"):
                run(_config(t5_world), IN_PROCESS, read_only, progress=False, on_generation=generations.append)
            assert generations == []
    finally:
        read_only.chmod(0o755)
    assert [p.name for p in read_only.iterdir() if p.name.startswith(".lorahub-ray")] == []


def test_the_probe_leaves_nothing_behind(t5_world, tmp_path):
    def stop(search):
        raise KeyboardInterrupt

    with pytest.raises(ConfigError, match="does not exist"):
        run(_config(t5_world), IN_PROCESS, tmp_path / "missing" / "out", progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(_config(t5_world, examples=EXAMPLES), IN_PROCESS, tmp_path / "new", progress=False, on_generation=stop)
    assert [p.name for p in tmp_path.iterdir()] == ["new"]
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["checkpoint.json"]
