import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import protocol  # noqa: E402
from tests.conftest import EXAMPLES  # noqa: E402


def test_equal_time_searches_get_the_speedup_times_the_reference_budget(t5_world):
    case = protocol.Case(t5_world["base"], t5_world["modules"][:2], EXAMPLES[:3],
                         EXAMPLES[3:5], seed=1, max_new_tokens=4)
    methods = ["lorahub_ngopt", "lorahub_cma_2actors_equal_time", "lorahub_singles_cma_2actors_equal_time"]
    outcome = protocol.run_methods(case, methods, budget=6, speedup=1.9)
    assert protocol.equal_time_budget(6, 1.9) == 11 and protocol.equal_time_budget(6, 0.7) == 6
    assert protocol.equal_time_budget(6, 2.6) == 12 and protocol.equal_time_budget(6, 2.6, actors=4) == 15
    assert outcome["equal_time_evaluations"] == 11
    assert {m: len(c) for m, c in outcome["convergence"].items()} == {methods[0]: 6, methods[1]: 11, methods[2]: 11}
    for curve in outcome["convergence"].values():
        assert np.all(np.diff(curve) <= 0), "a best-so-far curve never rises"
    assert all(0.0 <= a <= 100.0 for a in outcome["accuracy"].values())
