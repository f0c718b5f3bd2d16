"""`lorahub-ray show OUTPUT`: a search result's summary, and its convergence and weights charts.

Reads the ``result.json`` that `lorahub_ray.run.run` (or `lorahub_ray.tune.weight_search`) wrote, prints the best
score, the largest weights, the evaluations, the time per evaluation and the actors, and writes
``convergence.png`` (every evaluation's score and the best so far) and ``weights.png`` next to it. The charts need
matplotlib (the ``plot`` extra); without it the summary is still printed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lorahub_ray.atomic import write_atomic
from lorahub_ray.errors import ConfigError, InputError
from lorahub_ray.export import CONVERGENCE_CHART, RESULT_FILE, WEIGHTS_CHART
from lorahub_ray.output import MARKER

TOP_WEIGHTS = 10  # weights listed in the summary, largest |w| first
CHART_WEIGHTS = 40  # bars in the weights chart, largest |w| first
REQUIRED = ("weights", "best_score", "history")  # result.json fields the summary needs


def read_result(output: str | Path) -> tuple[Path, dict]:
    """The ``result.json`` of ``output`` (a search's output directory, or the file itself) and its contents.

    Raises:
        InputError: no such file, not JSON, not written by lorahub-ray, or a field the summary needs is missing.
    """
    path = Path(output).expanduser()
    path = path / RESULT_FILE if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{str(path)!r} does not exist; expected the output directory of a search (holding "
                         f"{RESULT_FILE}) or its {RESULT_FILE}")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{str(path)!r} is not JSON ({err}); expected a search's {RESULT_FILE}") from None
    if not isinstance(result, dict) or result.get("written_by") != MARKER["written_by"]:
        raise InputError(f"{str(path)!r} was not written by lorahub-ray (no \"written_by\": "
                         f"\"{MARKER['written_by']}\"); expected a search's {RESULT_FILE}")
    if missing := [name for name in REQUIRED if name not in result]:
        raise InputError(f"{str(path)!r} lacks the field(s) {', '.join(missing)}; expected a search's {RESULT_FILE}")
    return path, result


def summary(result: Mapping) -> str:
    """The result as a few lines of text: best score and loss, settings, evaluations, time, actors, top weights."""
    history = result["history"]
    failed = sum(1 for e in history if e.get("error"))
    actors = sorted({e["actor"] for e in history if e.get("actor") is not None})
    seconds = [e["seconds"] for e in history if e.get("seconds")]
    loss = result.get("best_loss")
    lines = [f"best score {result['best_score']:.4f}" + (f" (loss {loss:.4f})" if loss is not None else "")]
    config = result.get("config") or {}
    if config:
        lines.append("search: " + ", ".join(f"{name} {config[name]}" for name in
                                            ("optimizer", "budget", "seed", "l1", "mode") if name in config))
    lines.append(f"evaluations: {len(history)}" + (f" ({failed} failed)" if failed else "")
                 + (f" in {1 + max(e['generation'] for e in history)} generations" if history else ""))
    if seconds:
        lines.append(f"time per evaluation: {1e3 * float(np.mean(seconds)):.1f} ms on an actor "
                     f"({sum(seconds):.1f} s of evaluation in all)")
    lines.append(f"actors: {len(actors)}" if actors else "actors: none (evaluated in the driver's process)")
    if result.get("prefilter"):
        report = result["prefilter"]
        lines.append(f"pre-filter {report['name']}:{report['k']} kept {len(report['selected'])} of "
                     f"{report['pool_size']} modules")
    weights = sorted(result["weights"].items(), key=lambda kv: -abs(kv[1]))
    lines.append(f"largest weights ({min(TOP_WEIGHTS, len(weights))} of {len(weights)}):")
    lines += [f"  {weight:+.3f}  {name}" for name, weight in weights[:TOP_WEIGHTS]]
    return "\n".join(lines)


def write_charts(result: Mapping, directory: Path) -> list[Path]:
    """Write `CONVERGENCE_CHART` and `WEIGHTS_CHART` into ``directory``; the paths written.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the charts need matplotlib: pip install 'lorahub-ray[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([e["score"] for e in result["history"]], dtype=float)
    figure, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(np.arange(1, len(scores) + 1), scores, s=8, alpha=0.4, label="evaluation")
    ax.plot(np.arange(1, len(scores) + 1), np.minimum.accumulate(scores), color="black", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("score (loss + L1)")
    ax.legend()
    paths = [_save(figure, directory / CONVERGENCE_CHART)]

    weights = sorted(result["weights"].items(), key=lambda kv: -abs(kv[1]))[:CHART_WEIGHTS]
    figure, ax = plt.subplots(figsize=(6, 1.2 + 0.22 * len(weights)))
    ax.barh([name for name, _ in weights][::-1], [w for _, w in weights][::-1])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("weight")
    ax.set_title(f"largest {len(weights)} of {len(result['weights'])} weights" if len(result["weights"]) > len(weights)
                 else "weights")
    paths.append(_save(figure, directory / WEIGHTS_CHART))
    return paths


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())
