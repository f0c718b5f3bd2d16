"""Output directories: checked before any work, replaced only once a new result is complete, and only what
lorahub-ray wrote there is ever removed.

A directory is the project's own when its ``result.json`` or ``checkpoint.json`` carries `MARKER` (the
``written_by`` key); ``overwrite`` replaces only such a directory, and then only the names lorahub-ray writes:
`RESULT_NAMES`, ``checkpoint.json`` and its own dot-directories.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lorahub_ray.errors import ConfigError
from actors import LoraStack
from lorahub_ray.export import (ADAPTER_DIR, CONVERGENCE_CHART, MERGED_DIR, RESULT_FILE, WEIGHTS_CHART, write_adapter,
                                write_json, write_merged)

MARKER = {"written_by": "lorahub-ray"}  # in every result.json and checkpoint.json the project writes
CHECKPOINT_FILE = "checkpoint.json"
STAGING_DIR = ".lorahub-ray.staging"  # the new result, built inside the output before it is moved into place
OLD_DIR = ".lorahub-ray.old"  # the replaced result, until the new one is in place
PARTIAL_CHECKPOINT = f".{CHECKPOINT_FILE}.partial"
# moved into place in this order, result.json last; the charts of `lorahub-ray show` go with the result they showed
RESULT_NAMES = (ADAPTER_DIR, MERGED_DIR, CONVERGENCE_CHART, WEIGHTS_CHART, RESULT_FILE)


def is_own(directory: Path) -> bool:
    """Whether ``directory`` holds a ``result.json`` or ``checkpoint.json`` that lorahub-ray wrote."""
    for name in (RESULT_FILE, CHECKPOINT_FILE):
        try:
            payload = json.loads((Path(directory) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and payload.get("written_by") == MARKER["written_by"]:
            return True
    return False


def check_output(output: str | Path | None, overwrite: bool = False, resuming: bool = False) -> Path | None:
    """``output`` resolved, checked before any work: a directory of its own that can be written, new or empty
    unless it is the project's own and ``overwrite`` or ``resuming`` is set.

    Raises:
        ConfigError: the output is shared (the current directory, one of its parents, the home directory or the
            filesystem root), a file, a directory of someone else's files, or cannot be written.
    """
    if output is None:
        return None
    final = Path(output).expanduser().resolve()
    _refuse_shared(output, final)
    if final.exists() and not final.is_dir():
        raise ConfigError(f"output {str(final)!r} is a file; expected a directory (new or empty)")
    if final.is_dir() and any(final.iterdir()):
        if not (overwrite or resuming):
            raise ConfigError(f"output {str(final)!r} already holds files; choose a new directory, pass overwrite "
                              "(lorahub-ray outputs only), or resume it if it holds an interrupted search")
        if not is_own(final):
            raise ConfigError(f"output {str(final)!r} holds files that lorahub-ray did not write (no result.json "
                              "or checkpoint.json of its own), so it is not replaced; choose a new directory")
    if not final.parent.is_dir():
        state = "is not a directory" if final.parent.exists() else "does not exist"
        raise ConfigError(f"output's parent {str(final.parent)!r} {state}")
    _probe(final)
    return final


def _refuse_shared(output: str | Path, final: Path) -> None:
    """Refuse a directory that others' files live in: the current one, its parents, home, the root."""
    cwd = Path.cwd().resolve()
    shared = {cwd: "the current directory", **{parent: "a parent of the current directory" for parent in cwd.parents},
              Path.home().resolve(): "the home directory", Path(final.anchor): "the filesystem root"}
    if final in shared:
        raise ConfigError(f"output {str(output)!r} is {shared[final]} ({str(final)!r}); give the result a "
                          "directory of its own, e.g. a new subdirectory")


def _probe(final: Path) -> None:
    """Create (and remove) a file in ``final`` (created, then removed, if new) to find an unwritable output now."""
    created = not final.exists()
    try:
        if created:
            final.mkdir()
        handle, probe = tempfile.mkstemp(prefix=".lorahub-ray.probe", dir=final)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"output {str(final)!r} cannot be written ({type(err).__name__}: {err.strerror}); "
                          "choose a directory you can write to") from None
    finally:
        if created and final.is_dir():
            final.rmdir()


@contextmanager
def staged_result(final: Path) -> Iterator[Path]:
    """A new, empty staging directory inside ``final`` (created with its parents) to write a result into: moved
    into place by `replace_result` when the block ends without error, removed when it raises."""
    staging = final / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_result(staging, final)


def replace_result(staging: Path, final: Path) -> None:
    """Move the complete result in ``staging`` into ``final``, then remove the project's old files there.

    Each of `RESULT_NAMES` the staging holds replaces the old one (``result.json`` last); an old one it does not
    hold (``merged/`` of an earlier search) goes too, as do ``checkpoint.json`` and the staging directory. No
    other file in ``final`` is touched.
    """
    old = final / OLD_DIR
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    for name in RESULT_NAMES:
        if (final / name).is_dir() or (final / name).is_symlink():
            os.replace(final / name, old / name)
        if (staging / name).exists():
            os.replace(staging / name, final / name)
        elif (final / name).exists():
            os.replace(final / name, old / name)
    (final / CHECKPOINT_FILE).unlink(missing_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def write_result(final: Path, stack: LoraStack, weights: np.ndarray, mode: str, base: str, record: dict,
                 merge: bool = False) -> None:
    """Write a found composition into ``final``: ``adapter/`` (and, with ``merge``, ``merged/``), then ``result.json``
    (``record``), staged inside ``final`` and moved into place once complete (`staged_result`)."""
    with staged_result(final) as staging:
        adapter = write_adapter(staging / ADAPTER_DIR, stack, weights, mode, base)
        if merge:
            write_merged(staging / MERGED_DIR, base, adapter)
        write_json(staging / RESULT_FILE, record)
