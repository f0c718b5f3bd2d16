"""Few-shot examples: reading and checking ``{"input", "output"}`` JSONL files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lorahub_ray.errors import InputError


def load_examples(source: str | Path | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Read examples from a JSONL file (one ``{"input": ..., "output": ...}`` object a line) or check a list.

    Raises:
        InputError: the file is missing or empty, a line is not JSON, or an example lacks a string field.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"examples file {str(path)!r} does not exist (expected a JSONL file)")
        examples = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                examples.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}, line {number}: not valid JSON ({err.msg}); expected one "
                                 '{"input": "...", "output": "..."} object per line') from None
            _check_example(examples[-1], f"{path}, line {number}")
        where = str(path)
    else:
        examples = [dict(ex) for ex in source]
        for index, example in enumerate(examples):
            _check_example(example, f"example {index}")
        where = "examples"
    if not examples:
        raise InputError(f"{where}: no examples; expected at least one {{\"input\", \"output\"}} pair")
    return examples


def _check_example(example: object, where: str) -> None:
    if not isinstance(example, dict):
        raise InputError(f"{where}: expected a JSON object with \"input\" and \"output\", got {type(example).__name__}")
    for key in ("input", "output"):
        if not isinstance(example.get(key), str):
            raise InputError(f"{where}: field {key!r} must be a string, got {example.get(key)!r}")
    if not example["output"]:
        raise InputError(f"{where}: field 'output' is empty; the loss is taken on the output")
