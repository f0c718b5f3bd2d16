"""`lorahub-ray show`: the summary of a real search's result, its charts, and clear errors for what is not one."""

import builtins
import json

import pytest

from lorahub_ray.cli import main
from lorahub_ray.show import read_result, summary, write_charts


def _search(world, examples_file, output):
    return main(["search", "--base", world["base"], "--modules", *world["modules"], "--examples", str(examples_file),
                 "--output", str(output), "--budget", "6", "--population", "3", "--actors", "0", "--quiet"])


def test_show_prints_the_summary_and_writes_both_charts_that_an_overwrite_removes(t5_world, examples_file, tmp_path,
                                                                                    capsys):
    output = tmp_path / "out"
    assert _search(t5_world, examples_file, output) == 0
    capsys.readouterr()
    assert main(["show", str(output)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((output / "result.json").read_text())
    assert f"best score {saved['best_score']:.4f}" in printed
    assert "evaluations: 6 in 2 generations" in printed
    assert "actors: none (evaluated in the driver's process)" in printed
    largest = max(saved["weights"].items(), key=lambda kv: abs(kv[1]))
    assert f"{largest[1]:+.3f}  {largest[0]}" in printed.split("largest weights")[1].splitlines()[1]
    for chart in ("convergence.png", "weights.png"):
        assert (output / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["show", str(output / "result.json")]) == 0, "the file itself is accepted too"
    assert _search(t5_world, examples_file, output) == 2, "a shown output is still an output with files"
    assert main(["search", "--base", t5_world["base"], "--modules", *t5_world["modules"], "--examples",
                 str(examples_file), "--output", str(output), "--budget", "6", "--actors", "0", "--quiet",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in output.iterdir()) == ["adapter", "result.json"], "old charts go with old result"


def test_summary_counts_failures_actors_and_time_per_evaluation():
    history = [{"weights": [0.0], "score": 2.0, "loss": 2.0, "actor": 0, "seconds": 0.02, "generation": 0},
               {"weights": [1.0], "score": 9.0, "loss": None, "actor": 1, "seconds": 0.04, "generation": 0,
                "error": "loss nan"},
               {"weights": [0.5], "score": 1.5, "loss": 1.4, "actor": 1, "seconds": 0.03, "generation": 1}]
    text = summary({"weights": {"m": 0.5}, "best_score": 1.5, "best_loss": 1.4, "history": history,
                    "config": {"optimizer": "cma", "budget": 3, "seed": 7}})
    assert "search: optimizer cma, budget 3, seed 7" in text
    assert "evaluations: 3 (1 failed) in 2 generations" in text
    assert "time per evaluation: 30.0 ms on an actor (0.1 s of evaluation in all)" in text
    assert "actors: 2" in text


@pytest.mark.parametrize("content, message", [
    (None, "does not exist; expected the output directory of a search"),
    ("{not json", "is not JSON"),
    (json.dumps({"weights": {}}), "was not written by lorahub-ray"),
    (json.dumps({"written_by": "lorahub-ray", "weights": {}}), "lacks the field"),
])
def test_what_is_not_a_result_is_one_clear_error_naming_the_file(content, message, tmp_path, capsys):
    if content is not None:
        (tmp_path / "result.json").write_text(content)
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "result.json") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["result.json"])


def test_without_matplotlib_the_summary_is_printed_and_the_missing_extra_named(tmp_path, monkeypatch, capsys):
    result = {"written_by": "lorahub-ray", "weights": {"m": 1.0}, "best_score": 1.0, "best_loss": 1.0,
              "history": [{"weights": [1.0], "score": 1.0, "loss": 1.0, "actor": None, "seconds": 0.0,
                           "generation": 0}]}
    (tmp_path / "result.json").write_text(json.dumps(result))
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["show", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "best score 1.0000" in captured.out
    assert "no charts: the charts need matplotlib: pip install 'lorahub-ray[plot]'" in captured.err
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    monkeypatch.undo()
    assert [p.name for p in write_charts(read_result(tmp_path)[1], tmp_path)] == ["convergence.png", "weights.png"]
