"""A benchmark whose extra packages are missing stops at once with one line that says what to install."""

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


class WorkStarted(Exception):
    """Raised by the first piece of a benchmark's work: the check should have stopped it before."""


def _work_started(*args, **kwargs):
    raise WorkStarted


@pytest.mark.parametrize("name, argv", [("throughput", ["--quick"]), ("quality", ["--quick"]),
                                        ("optimizers", ["--quick"]), ("pool", [])])
def test_a_benchmark_without_matplotlib_stops_before_any_work(name, argv, monkeypatch, capsys):
    import ray

    benchmark = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    monkeypatch.setattr(ray, "init", _work_started)
    monkeypatch.setattr(benchmark, "ensure_zoo", _work_started, raising=False)
    with pytest.raises(SystemExit) as stop:
        benchmark.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"error: {name}.py needs matplotlib, which cannot be imported here; "
                   'install it first: pip install -e ".[bench]"\n')


def test_the_pool_benchmark_scale_only_draws_nothing_and_needs_no_matplotlib(monkeypatch):
    import ray

    benchmark = importlib.import_module("pool")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(sys, "argv", ["pool.py", "--scale-only"])
    monkeypatch.setattr(ray, "init", _work_started)
    with pytest.raises(WorkStarted):
        benchmark.main()
