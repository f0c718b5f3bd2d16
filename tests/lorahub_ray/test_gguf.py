"""GGUF bases: a tiny GGUF written here loads as a base, converts to a HF directory, and bad input is one error."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.model import load_base
from lorahub_ray.cli import main
from lorahub_ray.toy import build_random_gguf, build_random_modules

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf_world(tmp_path_factory) -> dict:
    """A tiny Llama GGUF, its conversion (by the command) and three random modules built on the conversion."""
    root = tmp_path_factory.mktemp("gguf_world")
    path = build_random_gguf(root / "toy.gguf")
    assert main(["convert-gguf", str(path), str(root / "converted")]) == 0
    modules = build_random_modules(root / "converted", root / "modules", count=3, rank=4, seed=1)
    return {"gguf": str(path), "converted": str(root / "converted"), "modules": [str(m) for m in modules],
            "root": root}


def test_gguf_base_gives_the_same_tokens_and_logits_as_its_conversion(gguf_world):
    from_gguf, gguf_tokenizer = load_base(gguf_world["gguf"], torch.device("cpu"))
    converted, tokenizer = load_base(gguf_world["converted"], torch.device("cpu"))
    text = "the answer is: hello there"
    ids = gguf_tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert ids.shape[1] < len(text.encode())  # the file's merges were applied: not one token per byte
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, converted(ids).logits)
    assert gguf_tokenizer.pad_token_id is not None and gguf_tokenizer.eos_token == "<|endoftext|>"


def test_convert_gguf_writes_a_plain_hugging_face_directory(gguf_world, capsys):
    out = Path(gguf_world["converted"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.parent.iterdir() if "staging" in p.name]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert AutoTokenizer.from_pretrained(out).decode([257]) == "he"  # a merged token of the file's vocabulary


def test_convert_gguf_refuses_an_existing_directory(gguf_world, capsys):
    assert main(["convert-gguf", gguf_world["gguf"], gguf_world["converted"]]) == 2
    assert "already exists" in capsys.readouterr().err


def test_convert_gguf_leaves_nothing_behind_when_writing_fails(gguf_world, tmp_path, monkeypatch):
    import lorahub_ray.gguf as gguf_module

    def failing_load(base, device):
        model, tokenizer = load_base(base, device)

        def save(directory):
            (Path(directory) / "tokenizer.json").write_text("{")  # half written
            raise OSError("disk full")

        monkeypatch.setattr(tokenizer, "save_pretrained", save)
        return model, tokenizer

    monkeypatch.setattr(gguf_module, "load_base", failing_load)
    with pytest.raises(OSError, match="disk full"):
        gguf_module.convert_gguf(gguf_world["gguf"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_search_on_a_gguf_base_matches_the_converted_directory(gguf_world, examples_file, tmp_path):
    results = {}
    for name in ("gguf", "converted"):
        output = tmp_path / name
        args = ["search", "--base", gguf_world[name], "--modules", *gguf_world["modules"], "--examples",
                str(examples_file), "--output", str(output), "--budget", "6", "--population", "3", "--actors", "0",
                "--quiet", "--merge"]
        assert main(args) == 0
        results[name] = json.loads((output / "result.json").read_text())
        assert (output / "merged" / "model.safetensors").is_file()  # saved although the base came from GGUF
    losses = {name: [(h["weights"], h["loss"]) for h in result["history"]] for name, result in results.items()}
    assert losses["gguf"] == losses["converted"]  # every candidate scored alike: the same model under both names
    assert results["gguf"]["weights"] == results["converted"]["weights"]


def _not_gguf(tmp_path: Path) -> str:
    path = tmp_path / "notes.gguf"
    path.write_text("these are notes, not a model\n")
    return str(path)


def _unsupported_architecture(tmp_path: Path) -> str:
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "toyarch")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing", r"base model '.*missing\.gguf': no such GGUF file"),
    ("not_gguf", r"base model '.*notes\.gguf' is not a GGUF file: it starts with b'thes', expected b'GGUF'"),
    ("architecture", r"base model '.*odd\.gguf': transformers cannot load this GGUF file \(.*toyarch"),
    ("no_package", r"base model '.*toy\.gguf' is a GGUF file, which needs the `gguf` package"),
])
@pytest.mark.parametrize("command", ["convert-gguf", "search", "evaluate"])
def test_bad_gguf_input_is_one_clear_error(case, message, command, gguf_world, examples_file, tmp_path, capsys,
                                           monkeypatch):
    base = {"missing": lambda: str(tmp_path / "missing.gguf"), "not_gguf": lambda: _not_gguf(tmp_path),
            "architecture": lambda: _unsupported_architecture(tmp_path), "no_package": lambda: gguf_world["gguf"]}
    path = base[case]()
    if case == "no_package":
        monkeypatch.setitem(sys.modules, "gguf", None)
    args = {"convert-gguf": ["convert-gguf", path, str(tmp_path / "out")],
            "search": ["search", "--base", path, "--modules", *gguf_world["modules"], "--examples",
                       str(examples_file), "--output", str(tmp_path / "out"), "--actors", "0", "--quiet"],
            "evaluate": ["evaluate", "--base", path, "--examples", str(examples_file)]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()
