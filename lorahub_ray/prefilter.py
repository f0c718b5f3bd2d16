"""Pre-filters: narrow a large module pool to the K candidates a search weighs. Pure: no Ray, no models.

- ``random:K``: K modules drawn at random (LoraHub's own choice), seeded.
- ``loss:K``: the K modules with the lowest few-shot loss when each is applied alone (one evaluation each,
  which the caller runs on its actor pool).
- ``similarity:K``: modules ranked by how close their own training inputs are to the few-shot inputs,
  compared as TF-IDF vectors of character n-grams (model-free); a module carries its inputs as
  ``train_sample.jsonl`` (``{"input", ...}`` lines) in its adapter directory. Modules without a sample fill
  the remaining places by loss.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lorahub_ray.errors import ConfigError, InputError

SAMPLE_FILE = "train_sample.jsonl"
PREFILTERS = ("random", "loss", "similarity")


@dataclass(frozen=True)
class PrefilterSpec:
    """A pre-filter and how many modules it keeps, parsed from ``"NAME:K"``."""

    name: str
    k: int

    @classmethod
    def parse(cls, text: str) -> PrefilterSpec:
        name, _, k = text.partition(":")
        if name not in PREFILTERS or not k.isdigit() or int(k) < 1:
            raise ConfigError(f"`prefilter` must look like NAME:K with NAME one of {list(PREFILTERS)} and K >= 1, "
                              f"got {text!r}")
        return cls(name, int(k))


@dataclass
class PrefilterReport:
    """What a pre-filter kept and what it cost."""

    name: str
    k: int
    pool_size: int
    selected: list[int]  # indices into the pool, ascending
    evaluations: int = 0
    seconds: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)  # module -> loss or similarity, where computed

    def to_dict(self) -> dict:
        return asdict(self)


def read_sample(directory: Path) -> list[str] | None:
    """The training inputs a module carries beside its adapter, or None."""
    path = Path(directory) / SAMPLE_FILE
    if not path.is_file():
        return None
    try:
        return [json.loads(line)["input"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{path}: expected one JSON object with an \"input\" string per line ({err})") from None


def similarities(fewshot_inputs: Sequence[str], samples: Sequence[Sequence[str]]) -> np.ndarray:
    """Cosine similarity between the mean TF-IDF vector of the few-shot inputs and that of each sample."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
    vectorizer.fit([*fewshot_inputs, *(text for sample in samples for text in sample)])

    def centroid(texts: Sequence[str]) -> np.ndarray:
        vector = np.asarray(vectorizer.transform(texts).mean(axis=0)).ravel()
        return vector / (np.linalg.norm(vector) or 1.0)

    query = centroid(fewshot_inputs)
    return np.array([centroid(sample) @ query for sample in samples])


def select(spec: PrefilterSpec, names: Sequence[str], directories: Sequence[Path], fewshot_inputs: Sequence[str],
           module_losses: Callable[[list[int]], list[float]], seed: int) -> PrefilterReport:
    """Choose ``spec.k`` of the modules.

    Args:
        spec: the pre-filter.
        names: the pool's modules as given.
        directories: their adapter directories (for ``similarity`` samples).
        fewshot_inputs: the few-shot inputs.
        module_losses: scores the listed modules (pool indices) each alone; returns their losses.
        seed: seeds ``random``.
    """
    start = time.perf_counter()
    report = PrefilterReport(spec.name, spec.k, len(names), [])
    if spec.k >= len(names):
        report.selected = list(range(len(names)))
        return report
    if spec.name == "random":
        report.selected = sorted(random.Random(seed).sample(range(len(names)), spec.k))
        return report
    with_sample = {}
    if spec.name == "similarity":
        samples = {i: read_sample(d) for i, d in enumerate(directories)}
        with_sample = {i: s for i, s in samples.items() if s}
    chosen: list[int] = []
    if with_sample:
        indices = list(with_sample)
        sims = similarities(fewshot_inputs, [with_sample[i] for i in indices])
        report.scores.update({names[i]: float(s) for i, s in zip(indices, sims)})
        chosen = [indices[j] for j in np.argsort(-sims, kind="stable")[: spec.k]]
    rest = [i for i in range(len(names)) if i not in with_sample]
    if len(chosen) < spec.k and rest:
        losses = module_losses(rest)
        report.evaluations = len(rest)
        report.scores.update({names[i]: float(loss) for i, loss in zip(rest, losses)})
        ranked = [rest[j] for j in np.argsort(np.nan_to_num(np.array(losses, dtype=float), nan=np.inf), kind="stable")]
        chosen += ranked[: spec.k - len(chosen)]
    report.selected = sorted(chosen)
    report.seconds = time.perf_counter() - start
    return report
