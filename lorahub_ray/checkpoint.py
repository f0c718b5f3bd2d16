"""Checkpoints of a search: its settings and every evaluation so far, in one JSON file.

A search is resumed by replaying the recorded evaluations into a fresh optimizer with the same seed
(`Search.replay`), which restores its state exactly; nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from lorahub_ray.config import RunConfig
from lorahub_ray.errors import InputError
from lorahub_ray.search import Evaluation

CHECKPOINT_FILE = "checkpoint.json"
FORMAT = 1


def save_checkpoint(directory: Path, config: RunConfig, history: Sequence[Evaluation]) -> Path:
    """Write ``directory/checkpoint.json`` atomically (a reader never sees a partial file)."""
    Path(directory).mkdir(exist_ok=True)
    path = Path(directory) / CHECKPOINT_FILE
    partial = path.with_name(f".{CHECKPOINT_FILE}.partial")
    payload = {"format": FORMAT, "config": config.to_dict(), "history": [e.to_dict() for e in history]}
    partial.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def load_checkpoint(directory: Path) -> tuple[RunConfig, list[Evaluation]]:
    """Read a checkpoint written by `save_checkpoint`."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"{str(directory)!r} holds no {CHECKPOINT_FILE}: nothing to resume")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT}")
        return RunConfig(**payload["config"]), [Evaluation(**e) for e in payload["history"]]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a lorahub-ray checkpoint ({err})") from None
