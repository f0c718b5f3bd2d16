"""Few-shot examples: reading and checking ``{"input", "output"}`` JSONL files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from lorahub_ray.errors import InputError

EXPECTED = 'expected one {"input": "...", "output": "..."} object per line'


def load_examples(source: str | Path | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Read examples from a JSONL file (one ``{"input": ..., "output": ...}`` object a line) or check a list.

    Raises:
        InputError: the file is missing, unreadable, not UTF-8 or empty, a line is not JSON, or an example lacks
            a string field.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        examples = [_parse_line(text, f"{path}, line {number}")
                    for number, text in enumerate(_read_lines(path), start=1) if text.strip()]
        where = str(path)
    else:
        examples = []
        for index, example in enumerate(source):
            _check_example(example, f"example {index}")
            examples.append(dict(example))
        where = "examples"
    if not examples:
        raise InputError(f"{where}: no examples; expected at least one {{\"input\", \"output\"}} pair")
    return examples


def _read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8 (a leading byte-order mark is dropped)."""
    if path.is_dir():
        raise InputError(f"examples file {str(path)!r} is a directory; expected a JSONL file")
    if not path.is_file():
        raise InputError(f"examples file {str(path)!r} does not exist (expected a JSONL file)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"examples file {str(path)!r} cannot be read ({type(err).__name__}: {err.strerror})") from None
    lines = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise InputError(f"{path}, line {number}: not UTF-8 text (invalid byte {raw[err.start]:#04x} at position "
                             f"{err.start + 1} of the line); {EXPECTED}, saved as UTF-8") from None
    return lines


def _parse_line(text: str, where: str) -> dict[str, str]:
    try:
        example = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg}); {EXPECTED}") from None
    _check_example(example, where)
    return example


def _check_example(example: object, where: str) -> None:
    if not isinstance(example, Mapping):
        raise InputError(f"{where}: expected a JSON object with \"input\" and \"output\", got {type(example).__name__}")
    for key in ("input", "output"):
        if not isinstance(example.get(key), str):
            raise InputError(f"{where}: field {key!r} must be a string, got {example.get(key)!r}")
    if not example["output"]:
        raise InputError(f"{where}: field 'output' is empty; the loss is taken on the output")
