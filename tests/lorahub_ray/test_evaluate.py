"""`evaluate` on bad input: one `error:` line and exit code 2, found before any model is loaded."""

import json
import shutil

import pytest

from lorahub_ray.cli import main
from lorahub_ray.toy import build_random_base, build_random_modules


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Fail the test if `evaluate` loads a model: every error here must come first."""
    def load_base(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("lorahub_ray.evaluate.load_base", load_base)


def _evaluate(t5_world, examples_file, *extra) -> list[str]:
    return ["evaluate", "--base", t5_world["base"], "--examples", str(examples_file), "--max-new-tokens", "2", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "`batch_size` must be an integer >= 1, got 0"),
    (["--batch-size", "-3"], "`batch_size` must be an integer >= 1, got -3"),
    (["--max-new-tokens", "0"], "`max_new_tokens` must be an integer >= 1, got 0"),
])
def test_settings_below_one_are_refused(t5_world, examples_file, capsys, no_model_loads, extra, message):
    assert main(_evaluate(t5_world, examples_file, *extra)) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_json_path_that_cannot_be_written_is_refused_before_the_evaluation(t5_world, examples_file, tmp_path,
                                                                             capsys, no_model_loads):
    missing = tmp_path / "missing" / "report.json"
    assert main(_evaluate(t5_world, examples_file, "--json", str(missing))) == 2
    assert f"--json '{missing}': directory '{missing.parent}' does not exist" in capsys.readouterr().err
    assert main(_evaluate(t5_world, examples_file, "--json", str(tmp_path))) == 2
    assert f"--json '{tmp_path}' is a directory" in capsys.readouterr().err


def test_cuda_is_refused_where_torch_sees_none(t5_world, examples_file, capsys, monkeypatch, no_model_loads):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(_evaluate(t5_world, examples_file, "--device", "cuda")) == 2
    assert "`device` is 'cuda' but torch sees no CUDA device here" in capsys.readouterr().err


def test_an_adapter_for_another_base_is_refused_before_loading(t5_world, examples_file, tmp_path, capsys,
                                                                no_model_loads):
    wide = build_random_base(tmp_path / "wide", "t5", d_model=48)
    [foreign] = build_random_modules(wide, tmp_path / "foreign", count=1)
    assert main(_evaluate(t5_world, examples_file, "--adapter", str(foreign))) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: layer ") and "maps 48 -> 48 features but base model" in error


def test_an_adapter_whose_config_has_no_rank_is_refused(t5_world, examples_file, tmp_path, capsys, no_model_loads):
    shutil.copytree(t5_world["modules"][0], tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    del config["r"]
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    assert main(_evaluate(t5_world, examples_file, "--adapter", str(tmp_path / "adapter"))) == 2
    assert "adapter_config.json has `r` = None; expected the LoRA rank" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["directory", "no_model_config"])
def test_a_base_that_is_no_model_is_one_error(t5_world, examples_file, tmp_path, capsys, kind):
    base = tmp_path / "base"
    base.mkdir()
    if kind == "no_model_config":
        (base / "config.json").write_text("{}")
    assert main(["evaluate", "--base", str(base), "--examples", str(examples_file)]) == 2
    assert capsys.readouterr().err.startswith(f"error: base model '{base}' could not be loaded")


def test_invalid_utf8_examples_name_the_file_and_line(t5_world, tmp_path, capsys, no_model_loads):
    examples = tmp_path / "latin1.jsonl"
    examples.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    assert main(_evaluate(t5_world, examples)) == 2
    assert capsys.readouterr().err.startswith(f"error: {examples}, line 2: not UTF-8 text (invalid byte 0xe9")
