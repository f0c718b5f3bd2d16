"""Bad inputs: clear errors naming the file or field, before any work."""

import json
import re
import shutil

import pytest

from lorahub_ray.base import check_base
from lorahub_ray.cli import main
from lorahub_ray.config import PoolConfig, RunConfig
from lorahub_ray.data import load_examples
from lorahub_ray.errors import ConfigError, InputError, ModuleMismatchError
from lorahub_ray.modules import index_module, load_stack
from lorahub_ray.toy import build_random_base, build_random_modules


def test_examples_file_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no examples"):
        load_examples(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "output": "b"}\n{"input": "a", \n')
    with pytest.raises(InputError, match=r"broken.jsonl, line 2: not valid JSON"):
        load_examples(broken)
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(json.dumps({"input": "a", "answer": "b"}) + "\n")
    with pytest.raises(InputError, match=r"line 1: field 'output' must be a string"):
        load_examples(missing)


def test_module_path_errors(t5_world, tmp_path):
    with pytest.raises(InputError, match="not a local directory and could not be fetched"):
        load_stack([str(tmp_path / "nowhere")])
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is not a LoRA adapter: adapter_config.json not found"):
        load_stack([str(tmp_path / "plain")])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(t5_world["modules"][0], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match=r"'.*corrupt': cannot read .* corrupt"):
        load_stack([t5_world["modules"][0], str(corrupt)])


def test_mismatched_modules_are_named(t5_world, tmp_path):
    other_rank = build_random_modules(t5_world["base"], tmp_path / "r8", count=1, rank=8)[0]
    with pytest.raises(ModuleMismatchError, match=r"module '.*r8/module_00' has `r` = 8 but module .* has 4"):
        load_stack([t5_world["modules"][0], str(other_rank)])
    other_targets = build_random_modules(t5_world["base"], tmp_path / "qk", count=1, targets=["q", "k"])[0]
    with pytest.raises(ModuleMismatchError, match=r"targets \['k', 'q'\] but module .* targets \['q', 'v'\]"):
        load_stack([t5_world["modules"][0], str(other_targets)])
    other_base = build_random_base(tmp_path / "wide", "t5", d_model=48)
    foreign = build_random_modules(other_base, tmp_path / "foreign", count=1)[0]
    with pytest.raises(ModuleMismatchError, match=r"foreign/module_00', layer .*: lora_A has shape \(4, 48\), "
                                                  r"expected \(4, 32\)"):
        load_stack([t5_world["modules"][0], str(foreign)])
    with pytest.raises(ModuleMismatchError, match=r"module .*foreign/module_00' maps 48 -> 48 features but base model .* maps 32 -> 32"):
        check_base(index_module(str(foreign)), t5_world["base"])


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match=r"`budget` must be an integer >= 1, got 0"):
        RunConfig(base="b", modules=["m"], examples="e", budget=0)
    with pytest.raises(ConfigError, match=r"`optimizer` must be one of \['cma', 'ngopt', 'probes-cma', 'singles-cma'\], got 'sgd'"):
        RunConfig(base="b", modules=["m"], examples="e", optimizer="sgd")
    with pytest.raises(ConfigError, match="`modules` names one module twice: 'm' and 'm'"):
        RunConfig(base="b", modules=["m", "m"], examples="e")
    with pytest.raises(ConfigError, match=r"`num_actors` must be an integer >= 0 or None \(one per GPU\), got -1"):
        PoolConfig(num_actors=-1)
    for bad in (0, "many", 2.5, True):
        with pytest.raises(ConfigError, match=r"`candidates_per_pass` must be 'auto' or an integer >= 1"):
            PoolConfig(candidates_per_pass=bad)
    assert PoolConfig().candidates_per_pass == "auto" and PoolConfig().dtype == "auto"


def test_candidates_per_pass_flag_takes_auto_or_an_integer(capsys):
    from lorahub_ray.cli import build_parser

    parser = build_parser()
    common = ["search", "--base", "b", "--modules", "m", "--examples", "e", "--output", "o"]
    assert parser.parse_args([*common, "--candidates-per-pass", "8"]).candidates_per_pass == 8
    assert parser.parse_args(common).candidates_per_pass == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args([*common, "--candidates-per-pass", "lots"])
    assert "expected 'auto' or an integer, got 'lots'" in capsys.readouterr().err


def test_examples_that_are_no_utf8_jsonl_file_are_named(tmp_path, monkeypatch):
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "caf\xe9", "output": "b"}\n')
    with pytest.raises(InputError, match=r"latin1.jsonl, line 2: not UTF-8 text \(invalid byte 0xe9 at position 15 "):
        load_examples(latin1)
    with pytest.raises(InputError, match=r"examples file '.*' is a directory; expected a JSONL file"):
        load_examples(tmp_path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"input": "a", "output": "b"}\r\n')  # as Windows editors save it
    assert load_examples(bom) == [{"input": "a", "output": "b"}]

    def unreadable(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pathlib.Path.read_bytes", unreadable)
    with pytest.raises(InputError, match=r"examples file '.*bom.jsonl' cannot be read \(PermissionError: Permission"):
        load_examples(bom)


def test_examples_given_in_python_must_be_objects():
    with pytest.raises(InputError, match=r"example 1: expected a JSON object .* got str"):
        load_examples([{"input": "a", "output": "b"}, "a -> b"])


@pytest.mark.parametrize("field, value, message", [
    ("l1", float("nan"), "`l1` must be >= 0 and finite, got nan"),
    ("l1", float("inf"), "`l1` must be >= 0 and finite, got inf"),
    ("bound", float("inf"), "`bound` must be > 0 and finite, got inf"),
    ("bound", float("nan"), "`bound` must be > 0 and finite, got nan"),
    ("bound", 0, "`bound` must be > 0 and finite, got 0"),
    ("seed", -1, r"`seed` must be an integer in 0..4294967295 \(numpy's seed range\), got -1"),
    ("seed", 2**32, "`seed` must be an integer in 0..4294967295"),
    ("population", 1, r"`population` must be an integer >= 2 or None \(CMA-ES recombines"),
    ("reference_batch_size", 0, "`reference_batch_size` must be an integer >= 1 or None, got 0"),
])
def test_numbers_out_of_range_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(base="b", modules=["m"], examples="e", **{field: value})


def _search(world, examples, tmp_path, *extra, modules=None):
    return ["search", "--base", world["base"], "--modules", *(modules or world["modules"]), "--examples",
            str(examples), "--output", str(tmp_path / "out"), "--actors", "0", "--quiet", "--budget", "4", *extra]


@pytest.mark.parametrize("case, message", [
    ("latin1_examples", r"latin1.jsonl, line 1: not UTF-8 text"),
    ("examples_directory_without_tasks", r"--examples '.*' is a directory without \*\.jsonl files"),
    ("no_rank_anywhere", r"module '.*norank_0': .*adapter_config.json has `r` = None"),
    ("population_1", r"`population` must be an integer >= 2 or None"),
    ("l1_nan", r"`l1` must be >= 0 and finite, got nan"),
    ("seed_negative", r"`seed` must be an integer in 0..4294967295"),
    ("same_module_twice", r"names one module twice: '.*module_00' and '.*module_00/' are the same directory"),
])
def test_search_input_errors_are_one_line_and_exit_2(case, message, t5_world, examples_file, tmp_path, capsys):
    extra, modules, examples = [], None, examples_file
    if case == "latin1_examples":
        examples = tmp_path / "latin1.jsonl"
        examples.write_bytes(b'{"input": "caf\xe9", "output": "b"}\n')
    elif case == "examples_directory_without_tasks":
        examples = tmp_path / "tasks"
        examples.mkdir()
        (examples / "notes.txt").write_text("not a task")
    elif case == "no_rank_anywhere":
        modules = []
        for index, module in enumerate(t5_world["modules"][:2]):
            shutil.copytree(module, tmp_path / f"norank_{index}")
            config = json.loads((tmp_path / f"norank_{index}" / "adapter_config.json").read_text())
            del config["r"]
            (tmp_path / f"norank_{index}" / "adapter_config.json").write_text(json.dumps(config))
            modules.append(str(tmp_path / f"norank_{index}"))
    elif case == "population_1":
        extra = ["--optimizer", "cma", "--population", "1"]
    elif case == "l1_nan":
        extra = ["--l1", "nan"]
    elif case == "seed_negative":
        extra = ["--seed", "-1"]
    elif case == "same_module_twice":
        modules = [t5_world["modules"][0], t5_world["modules"][0] + "/"]
    assert main(_search(t5_world, examples, tmp_path, *extra, modules=modules)) == 2
    error = capsys.readouterr().err
    assert re.match(f"error: .*{message}", error) and error.count("\n") == 1, error
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_sweep_config_that_is_not_utf8_is_named(tmp_path, capsys):
    (tmp_path / "sweep.json").write_bytes(b'{"tasks": {"caf\xe9": "t.jsonl"}, "param_space": {}}')
    assert main(["tune", "--config", str(tmp_path / "sweep.json")]) == 2
    assert re.match(r"error: the sweep config '.*sweep.json' is not valid JSON in UTF-8: 'utf-8' codec can't decode",
                    capsys.readouterr().err)


def test_modules_given_as_one_string_are_refused():
    with pytest.raises(ConfigError, match=r"`modules` must be a list of module paths or hub ids, got one: 'org/lora'"):
        RunConfig(base="b", modules="org/lora", examples="e")


def test_a_base_without_a_model_config_names_the_cause(t5_world, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"base model '.*' could not be loaded: .*\(ValueError: Unrecognized model"):
        check_base(index_module(t5_world["modules"][0]), str(tmp_path))
