"""Resume is honest: it refuses settings it would ignore and inputs that changed since the checkpoint."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lorahub_ray import modules
from lorahub_ray.cli import main
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.errors import InputError
from lorahub_ray.run import resume, run
from tests.conftest import EXAMPLES

IN_PROCESS = PoolConfig(num_actors=0)


def _interrupted(config: RunConfig, output: Path) -> None:
    """A search of ``config`` into ``output``, stopped after its second generation (as a kill would)."""
    def interrupt(search):
        if search.generation == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, IN_PROCESS, output, progress=False, on_generation=interrupt)
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint.json"]


def _config(modules_, examples, **overrides):
    settings = dict(modules=modules_, examples=str(examples), budget=9, population=3, seed=4, optimizer="cma")
    return RunConfig(**{**settings, **overrides})


@pytest.fixture()
def own_modules(t5_world, tmp_path):
    """Copies of the world's modules that a test may edit."""
    return [str(shutil.copytree(m, tmp_path / "modules" / Path(m).name)) for m in t5_world["modules"]]


def test_a_resume_over_edited_examples_is_refused_naming_the_file(t5_world, examples_file, tmp_path, capsys):
    config = _config(t5_world["modules"], examples_file, base=t5_world["base"])
    _interrupted(config, tmp_path / "out")
    lines = examples_file.read_text().splitlines()
    edited = [json.dumps({**json.loads(lines[0]), "output": "abc"}), *lines[1:]]
    examples_file.write_text("\n".join(edited) + "\n")
    assert main(["search", "--resume", str(tmp_path / "out"), "--actors", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the examples file {examples_file} changed since" in err and "Traceback" not in err
    # the same examples written differently (spacing, key order, blank lines) are the same examples
    reformatted = [json.dumps(dict(reversed(list(ex.items()))), separators=(",", ":")) for ex in EXAMPLES]
    examples_file.write_text("\n\n".join(reformatted) + "\n")
    resumed = resume(tmp_path / "out", IN_PROCESS, progress=False)
    assert resumed.weights == run(config, IN_PROCESS, progress=False).weights


@pytest.mark.parametrize("edit", ["weights", "config"])
def test_a_resume_over_a_changed_module_file_is_refused_naming_it(edit, t5_world, own_modules, examples_file,
                                                                   tmp_path):
    _interrupted(_config(own_modules, examples_file, base=t5_world["base"]), tmp_path / "out")
    if edit == "weights":  # one tensor of the second module
        module = Path(own_modules[1])
        changed = module / "adapter_model.safetensors"
        tensors = load_file(changed)
        next(iter(tensors.values())).mul_(2)
        save_file(tensors, changed, metadata={"format": "pt"})
    else:  # every module's scaling, so that they stay compatible: the first is named
        module = Path(own_modules[0])
        changed = module / "adapter_config.json"
        for config_file in (Path(other) / "adapter_config.json" for other in own_modules):
            config = json.loads(config_file.read_text())
            config_file.write_text(json.dumps({**config, "lora_alpha": 2 * config["lora_alpha"]}))
    with pytest.raises(InputError, match=f"module '{module}': the file {changed} changed since"):
        resume(tmp_path / "out", IN_PROCESS, progress=False)


def test_a_hub_module_is_recorded_with_its_revision(t5_world, examples_file, tmp_path, monkeypatch):
    """A hub id resolves to a snapshot of the HF cache; a resume that would load another revision is refused."""
    snapshots = tmp_path / "hub" / "models--org--module" / "snapshots"
    for revision in ("1111aaaa", "2222bbbb"):
        shutil.copytree(t5_world["modules"][0], snapshots / revision)
    revision = {"now": "1111aaaa"}
    local = modules.resolve_adapter_dir
    monkeypatch.setattr(modules, "resolve_adapter_dir",
                        lambda name: snapshots / revision["now"] if name == "org/module" else local(name))
    config = _config(["org/module", *t5_world["modules"][1:]], examples_file, base=t5_world["base"])
    _interrupted(config, tmp_path / "out")
    recorded = json.loads((tmp_path / "out" / "checkpoint.json").read_text())["inputs"]["modules"][0]
    assert recorded["name"] == "org/module" and recorded["revision"] == "1111aaaa"
    assert recorded["directory"] == str(snapshots / "1111aaaa")
    revision["now"] = "2222bbbb"  # the same files, under a newer revision
    with pytest.raises(InputError, match="module 'org/module' resolves to directory .*2222bbbb' now, but to "
                                         ".*1111aaaa' since"):
        resume(tmp_path / "out", IN_PROCESS, progress=False)
    revision["now"] = "1111aaaa"
    assert resume(tmp_path / "out", IN_PROCESS, progress=False).weights == run(config, IN_PROCESS,
                                                                               progress=False).weights


def test_resume_refuses_the_settings_it_would_ignore(t5_world, examples_file, tmp_path, capsys):
    config = _config(t5_world["modules"], examples_file, base=t5_world["base"])
    _interrupted(config, tmp_path / "out")
    resume_args = ["search", "--resume", str(tmp_path / "out"), "--actors", "0", "--quiet"]
    assert main([*resume_args, "--budget", "99"]) == 2
    err = capsys.readouterr().err
    assert "cannot change --budget 99 (the checkpoint has 9)" in err
    assert main([*resume_args, "--seed", "1", "--l1", "0.5", "--optimizer", "ngopt", "--mode", "delta",
                 "--prefilter", "random:2", "--population", "5", "--objective", "reference"]) == 2
    err = capsys.readouterr().err
    for flag in ("--optimizer ngopt", "--population 5", "--mode delta", "--objective reference", "--l1 0.5",
                 "--seed 1", "--prefilter random:2"):
        assert flag in err, flag
    assert main([*resume_args, "--overwrite"]) == 2
    assert "do not pass --overwrite" in capsys.readouterr().err
    # flags that repeat the checkpoint's settings, the defaults among them (--l1 0.05), change nothing
    assert main([*resume_args, "--budget", "9", "--seed", "4", "--optimizer", "cma", "--l1", "0.05"]) == 0
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["weights"] == run(config, IN_PROCESS, progress=False).weights


def test_a_checkpoint_of_the_old_format_is_refused_clearly(t5_world, examples_file, tmp_path):
    output = tmp_path / "out"
    _interrupted(_config(t5_world["modules"], examples_file, base=t5_world["base"]), output)
    payload = json.loads((output / "checkpoint.json").read_text())
    payload.pop("inputs", None)
    (output / "checkpoint.json").write_text(json.dumps({**payload, "format": 1}))
    with pytest.raises(InputError, match="checkpoint format 1, expected 2: .*cannot be resumed safely"):
        resume(output, IN_PROCESS, progress=False)
