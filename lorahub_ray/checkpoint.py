"""Checkpoints of a search: its settings, what its inputs were, and every evaluation so far, in one JSON file.

A search is resumed by replaying the recorded evaluations into a fresh optimizer with the same seed
(`Search.replay`), which restores its state exactly; nothing is pickled. The checkpoint also records the
inputs (`fingerprint`: absolute paths, the sha256 of every module file and of the examples, a hub module's
revision), and a resume over inputs that changed since is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from lorahub_ray.atomic import write_atomic
from lorahub_ray.config import RunConfig
from lorahub_ray.data import load_examples
from lorahub_ray.errors import InputError
from lorahub_ray.modules import CONFIG_FILE, ModuleEntry, index_module
from lorahub_ray.output import CHECKPOINT_FILE, MARKER, PARTIAL_CHECKPOINT, RESULT_FILE
from lorahub_ray.search import Evaluation

FORMAT = 2  # 2: records the inputs' fingerprint; 1 (before it) cannot be resumed safely
_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256, this process's


def save_checkpoint(directory: Path, config: RunConfig, history: Sequence[Evaluation], inputs: dict) -> Path:
    """Write ``directory/checkpoint.json`` atomically (a reader never sees a partial file); ``inputs`` is the
    `fingerprint` of the search's inputs, computed once per search by the caller."""
    Path(directory).mkdir(exist_ok=True)
    path = Path(directory) / CHECKPOINT_FILE
    payload = {**MARKER, "format": FORMAT, "config": config.to_dict(),
               "inputs": inputs,
               "history": [e.to_dict() for e in history]}
    return write_atomic(path, json.dumps(payload) + "\n", partial=path.with_name(PARTIAL_CHECKPOINT))


def load_checkpoint(directory: Path) -> tuple[RunConfig, list[Evaluation]]:
    """Read a checkpoint written by `save_checkpoint`, after checking that its inputs are unchanged.

    Raises:
        InputError: no checkpoint, not a checkpoint of this format, or an input that changed (named).
    """
    config, history, inputs = read_checkpoint(directory)
    check_inputs(inputs, fingerprint(config), Path(directory) / CHECKPOINT_FILE)
    return config, history


def read_checkpoint(directory: Path) -> tuple[RunConfig, list[Evaluation], dict | None]:
    """A checkpoint's settings, history and recorded inputs, as written (`load_checkpoint` also checks the inputs).

    Raises:
        InputError: no checkpoint, or not a checkpoint of this format.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        finished = f" (it holds a finished search's {RESULT_FILE})" if (Path(directory) / RESULT_FILE).is_file() else ""
        raise InputError(f"{str(directory)!r} holds no {CHECKPOINT_FILE}{finished}: nothing to resume")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        version = payload.get("format")
    except (ValueError, AttributeError) as err:
        raise InputError(f"{path} is not a lorahub-ray checkpoint ({err})") from None
    if version != FORMAT:
        raise InputError(f"{path} has checkpoint format {version!r}, expected {FORMAT}: it was written by another "
                         "lorahub-ray version, which did not record its inputs, so it cannot be resumed safely; "
                         "start the search again")
    try:
        config, history = RunConfig(**payload["config"]), [Evaluation(**e) for e in payload["history"]]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path} is not a lorahub-ray checkpoint ({err})") from None
    return config, history, payload.get("inputs")


def fingerprint(config: RunConfig, entries: Sequence[ModuleEntry] | None = None) -> dict:
    """What a search's result depends on besides its settings: where its base, examples and modules are, and
    the sha256 of the examples (their parsed ``input``/``output`` pairs) and of every module file.

    Local paths are made absolute; a hub module is recorded by the directory it resolved to (its snapshot in
    the HF cache) and that snapshot's revision. ``entries`` are the indexed ``config.modules`` (indexed here
    when not given).
    """
    examples = load_examples(config.examples)
    pairs = [{"input": ex["input"], "output": ex["output"]} for ex in examples]
    entries = entries if entries is not None else [index_module(name) for name in config.modules]
    return {
        "base": str(Path(config.base).resolve()) if Path(config.base).exists() else config.base,
        "examples": {"path": str(Path(config.examples).resolve()) if isinstance(config.examples, str) else None,
                     "sha256": hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest()},
        "modules": [_module_fingerprint(entry) for entry in entries],
    }


def _module_fingerprint(entry: ModuleEntry) -> dict:
    directory = entry.directory.resolve()
    hub = not Path(entry.name).exists()
    files = (directory / CONFIG_FILE, directory / entry.weight_file.name)
    return {"name": entry.name, "directory": str(directory),
            "revision": directory.name if hub and directory.parent.name == "snapshots" else None,
            "files": {str(path): _sha256(path) for path in files}}


def _sha256(path: Path) -> str:
    """The sha256 of a file's bytes (computed once per version of the file in this process)."""
    stat = path.stat()  # follows a hub snapshot's links to the blobs
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def check_inputs(recorded: dict | None, current: dict, path: Path) -> None:
    """Refuse a resume whose inputs differ from those ``recorded`` in the checkpoint at ``path``, naming the first."""
    if recorded == current:
        return
    recorded = recorded or {}
    changed = f"since {path} was written; the search cannot continue on other data: start it again"
    if recorded.get("base") != current["base"]:
        raise InputError(f"`base` resolves to {current['base']!r} now, but to {recorded.get('base')!r} {changed}")
    was, now = recorded.get("examples") or {}, current["examples"]
    if was.get("path") != now["path"]:
        raise InputError(f"the examples resolve to {now['path']!r} now, but to {was.get('path')!r} {changed}")
    if was.get("sha256") != now["sha256"]:
        raise InputError(f"the examples file {now['path']} changed {changed}")
    modules_before = {module["name"]: module for module in recorded.get("modules", [])}
    for module in current["modules"]:
        before = modules_before.get(module["name"], {})
        for key in ("directory", "revision"):
            if before.get(key) != module[key]:
                raise InputError(f"module {module['name']!r} resolves to {key} {module[key]!r} now, but to "
                                 f"{before.get(key)!r} {changed}")
        for file, digest in module["files"].items():
            if before.get("files", {}).get(file) != digest:
                raise InputError(f"module {module['name']!r}: the file {file} changed {changed}")
    raise InputError(f"the inputs recorded in {path} differ from the current ones; start the search again")
