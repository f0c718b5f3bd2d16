"""The offline demo end to end on a tiny zoo."""

from pathlib import Path

import pytest

from lorahub_ray import demo
from lorahub_ray.cli import main
from lorahub_ray.config import PoolConfig
from lorahub_ray.data import load_examples
from lorahub_ray.demo import run_demo
from lorahub_ray.zoo.build import build_zoo, load_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_zoo")
    build_zoo(out, size="tiny", kinds=("t5",), tasks=["max_digit", "second_letter", "lookup", "biggest_digit"],
              overrides={"base_steps": 8, "module_steps": 3, "n_train": 32, "n_test": 8}, progress=False)
    return out


def test_demo_searches_a_held_out_task_and_reports_both_accuracies(tiny_zoo, tmp_path, capsys, monkeypatch):
    evaluated = []  # (adapter, examples, accuracy) of each exact match the demo measures
    load, match = demo.load_model, demo.exact_match

    def load_model(base, adapter=None, **kwargs):
        model, tokenizer = load(base, adapter, **kwargs)
        model.loaded_adapter = None if adapter is None else Path(adapter)
        return model, tokenizer

    def exact_match(model, tokenizer, examples, **kwargs):
        report = match(model, tokenizer, examples, **kwargs)
        evaluated.append((model.loaded_adapter, list(examples), report.accuracy))
        return report

    monkeypatch.setattr(demo, "load_model", load_model)
    monkeypatch.setattr(demo, "exact_match", exact_match)
    figures = run_demo(zoo=tiny_zoo, output=tmp_path / "out", budget=4, pool=PoolConfig(num_actors=0))
    printed = capsys.readouterr().out
    assert figures["task"] == "biggest_digit"
    test = load_examples(tiny_zoo / load_manifest(tiny_zoo)["heldout"][0]["test"])
    # zero-shot: the bare base; composed: the adapter the demo wrote; both on the task's whole test split
    assert [(adapter, examples) for adapter, examples, _ in evaluated] == [(None, test),
                                                                            (tmp_path / "out" / "adapter", test)]
    assert (figures["zero_shot"], figures["composed"]) == tuple(accuracy for _, _, accuracy in evaluated)
    assert f"zero-shot {figures['zero_shot']:5.1f}%   LoraHub {figures['composed']:5.1f}%" in printed
    assert len(figures["weights"]) == 3 and (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert "zero-shot" in printed and "LoraHub" in printed and str(tmp_path / "out" / "adapter") in printed
    shown = [line for line in printed.splitlines() if line.startswith("  ") and line.split()[-1] in
             {name.rsplit("/", 1)[-1] for name in figures["weights"]}]
    zeros = sum(round(w, 3) == 0 for w in figures["weights"].values())
    assert f"({zeros} of 3 at 0)" in printed and len(shown) == min(5, 3 - zeros)


def test_demo_command_rejects_an_unknown_task(tiny_zoo, capsys):
    assert main(["demo", "--zoo", str(tiny_zoo), "--task", "nope", "--actors", "0"]) == 2
    assert "`task` must be a held-out task of the zoo" in capsys.readouterr().err
