"""The ``lorahub-ray`` command: ``search``, ``evaluate``, ``show``, ``convert-gguf``, ``demo``, ``zoo build``,
``zoo check`` (`lorahub_ray.zoo.cli`) and ``tune`` (`lorahub_ray.tune.cli`).

Errors that lorahub-ray raises on purpose are printed as one paragraph (``error: ...``, exit code 2);
anything else keeps its traceback, because it is a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from lorahub_ray.config import OPTIMIZER_NAMES, PoolConfig, RunConfig, field_docs
from lorahub_ray.errors import ConfigError, InputError, LoraHubRayError
from lorahub_ray.optimizers import DEFAULT_OPTIMIZER
from lorahub_ray.tune import add_tune_command, run_tune_command
from lorahub_ray.zoo.cli import add_zoo_command, run_zoo_command

# Config fields whose flag is not --<field-name>; every other field of RunConfig and PoolConfig is --<field-name>
# (tests/lorahub_ray/test_cli.py fails when a field has no flag).
FLAG_OF = {"num_actors": "--actors", "generation_timeout_s": "--generation-timeout"}
SEARCH_INPUTS = ("base", "modules", "examples")  # RunConfig's inputs; its other fields are the search's settings


def flag_of(field: str) -> str:
    """The command-line flag of a `RunConfig` or `PoolConfig` field."""
    return FLAG_OF.get(field, "--" + field.replace("_", "-"))


def _doc(cls: type, field: str) -> str:
    return field_docs(cls)[field].replace("%", "%%")


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("actor pool")
    group.add_argument("--actors", type=int, default=None,
                       help="Ray actors evaluating in parallel; 0 = in this process (default: one per GPU of the "
                            "cluster when it has GPUs and --gpus-per-actor is not given, else 1)")
    group.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor (also its torch threads)")
    group.add_argument("--gpus-per-actor", type=float, default=None,
                       help="GPUs per actor, fractions allowed (default: the cluster's GPUs shared out over the "
                            "actors, at most 1 each; 0 without GPUs)")
    group.add_argument("--address", default=None,
                       help="join a Ray cluster: 'auto' (the one `ray start` left here), 'host:6379' or "
                            "'ray://host:10001'; default: $RAY_ADDRESS if set, else a private local Ray")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="auto: CUDA for actors that reserve a GPU, else CPU; with --actors 0, CUDA when "
                            "visible")
    group.add_argument("--apply", choices=["merge", "slot"], default="merge",
                       help="how a candidate is applied in place: merged into the base weights, or a LoRA slot")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                       help="the actors' model and composition dtype (auto: bfloat16 on CUDA with the loss and LM "
                            "head in float32, float32 on CPU)")
    group.add_argument("--module-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                       help="how the module stack is held in memory and in the object store")
    group.add_argument("--candidates-per-pass", type=_pass_size, default="auto",
                       help="candidates an actor scores together in one batched forward pass (auto: 1 on the CPU, "
                            "what free memory holds on a GPU)")
    group.add_argument("--generation-timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="an actor that takes longer over its share of a generation is treated as hung: "
                            "replaced, its candidates re-run (default 3600; 0: no limit)")
    group.add_argument("--example-batch-size", type=int, default=None, help=_doc(PoolConfig, "example_batch_size"))
    group.add_argument("--max-restarts", type=int, default=3, help=_doc(PoolConfig, "max_restarts") + " (default 3)")


def _pass_size(text: str) -> int | str:
    """``--candidates-per-pass``: ``auto`` or an integer (PoolConfig checks its range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {text!r}") from None


def _dest(field: str) -> str:
    return flag_of(field)[2:].replace("-", "_")


def _pool_config(args: argparse.Namespace) -> PoolConfig:
    """Every `PoolConfig` field from its flag (``--generation-timeout 0``: no limit)."""
    settings = {f.name: getattr(args, _dest(f.name)) for f in fields(PoolConfig)}
    settings["generation_timeout_s"] = settings["generation_timeout_s"] or None
    return PoolConfig(**settings)


def _run_config(args: argparse.Namespace, **inputs: object) -> RunConfig:
    """Every `RunConfig` field from its flag, the inputs (base, modules, examples) as given in ``inputs``."""
    return RunConfig(**inputs, **{f.name: getattr(args, _dest(f.name)) for f in fields(RunConfig)
                                  if f.name not in SEARCH_INPUTS})


RESUMED_SETTINGS = tuple(f.name for f in fields(RunConfig) if f.name not in SEARCH_INPUTS)


class _Given(argparse.Action):
    """Store the value and record that the flag was given (in ``given``), so that ``--resume`` can refuse it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = namespace.given | {self.dest}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorahub-ray", fromfile_prefix_chars="@",
                                     description="Gradient-free LoraHub composition of LoRA modules on a Ray actor pool. "
                                                 "Arguments can be read from a file: @args.txt")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="find composition weights for a few examples and write the adapter")
    search.add_argument("--base", help="base model: local directory or hub id")
    search.add_argument("--modules", nargs="+", help="LoRA adapters: local directories or hub ids")
    search.add_argument("--examples", help='JSONL file, one {"input": ..., "output": ...} per line; or a directory '
                                           'of such files: one search per file, all on one actor pool, each written '
                                           'to OUTPUT/<file name without .jsonl>/')
    search.add_argument("--output", help="directory for adapter/ and result.json (new or empty); holds "
                                         "checkpoint.json while the search runs")
    search.add_argument("--resume", metavar="DIR", help="continue the interrupted search in DIR (its --output) "
                                                        "with the settings and inputs in DIR/checkpoint.json")
    search.set_defaults(given=frozenset())
    search.add_argument("--budget", type=int, default=40, action=_Given, help="evaluations, exactly (default 40)")
    search.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=DEFAULT_OPTIMIZER, action=_Given,
                        help=_doc(RunConfig, "optimizer"))
    search.add_argument("--population", type=int, default=None, action=_Given,
                        help="candidates per generation (cma)")
    search.add_argument("--mode", choices=["ab", "delta"], default="ab", action=_Given,
                        help="composition (default ab = LoraHub)")
    search.add_argument("--objective", choices=["default", "reference"], default="default", action=_Given,
                        help=_doc(RunConfig, "objective"))
    search.add_argument("--reference-batch-size", type=int, default=None, action=_Given,
                        help=_doc(RunConfig, "reference_batch_size"))
    search.add_argument("--l1", type=float, default=0.05, action=_Given, help="weight of the mean |w| penalty")
    search.add_argument("--bound", type=float, default=1.5, action=_Given,
                        help=_doc(RunConfig, "bound") + " (default 1.5)")
    search.add_argument("--seed", type=int, default=42, action=_Given, help=_doc(RunConfig, "seed"))
    search.add_argument("--prefilter", metavar="NAME:K", default=None, action=_Given,
                        help="narrow --modules to K candidates first: random:K, loss:K or similarity:K")
    search.add_argument("--merge", action="store_true", help="also write the merged full model to OUTPUT/merged")
    search.add_argument("--overwrite", action="store_true",
                        help="replace the result of an earlier search in OUTPUT (lorahub-ray's own files only, "
                             "once the new result is complete)")
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    _pool_arguments(search)

    evaluate = commands.add_parser("evaluate", help="exact-match accuracy of greedy generation on a JSONL file")
    evaluate.add_argument("--base", required=True)
    evaluate.add_argument("--adapter", default=None, help="PEFT adapter directory; omit for the bare base model")
    evaluate.add_argument("--examples", required=True)
    evaluate.add_argument("--json", default=None, help="write the summary and every prediction to this file")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--max-new-tokens", type=int, default=None,
                          help="generation budget in tokens (default: the longest reference answer + 8)")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    convert = commands.add_parser("convert-gguf", help="write a GGUF model as a Hugging Face directory, once "
                                  "(a .gguf --base is dequantised on every load)")
    convert.add_argument("gguf_file", help="the .gguf file")
    convert.add_argument("out_dir", help="the directory to write (must not exist yet)")

    demo = commands.add_parser("demo", help="the offline demo: a held-out task of the built-in zoo, end to end "
                               "(--world bigbench: a held-out BBH subtask on SmolLM2)")
    demo.add_argument("--world", choices=["zoo", "bigbench", "bbh"], default="zoo",
                      help="zoo: the built-in byte-level zoo (fast); bigbench, bbh: a real world, built once with "
                           "`lorahub-ray zoo build --world WORLD`")
    demo.add_argument("--zoo", default=None, help="zoo or world directory (default: the packaged zoo, built if "
                                                  "missing; worlds: ~/.cache/lorahub-ray/WORLD)")
    demo.add_argument("--task", default=None, help="held-out task name (default: the zoo's first; worlds: navigate)")
    demo.add_argument("--test-size", type=int, default=50, help="worlds: test examples scored")
    demo.add_argument("--output", default=None, help="where to write the adapter (default: a new temp dir)")
    demo.add_argument("--budget", type=int, default=40)
    demo.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=DEFAULT_OPTIMIZER)
    demo.add_argument("--seed", type=int, default=42)
    _pool_arguments(demo)
    demo.set_defaults(actors=2)

    add_zoo_command(commands)
    show = commands.add_parser("show", help="a search result's summary; writes its convergence and weights charts "
                               "next to result.json (needs matplotlib: the plot extra)")
    show.add_argument("output", help="the output directory of a search (or its result.json)")
    add_tune_command(commands)
    return parser


def _search(args: argparse.Namespace) -> None:
    from lorahub_ray.run import resume, run

    if args.examples and Path(args.examples).is_dir() and not args.resume:
        _search_many(args)
        return
    if args.resume:
        _check_resume(args)
        result = resume(args.resume, _pool_config(args), merge=args.merge, progress=not args.quiet)
    else:
        missing = [f"--{name}" for name in ("base", "modules", "examples", "output") if not getattr(args, name)]
        if missing:
            raise ConfigError(f"search needs {', '.join(missing)} (or --resume DIR)")
        config = _run_config(args, base=args.base, modules=args.modules, examples=args.examples)
        result = run(config, _pool_config(args), args.output, merge=args.merge, overwrite=args.overwrite,
                     progress=not args.quiet)
    if result.prefilter is not None:
        report = result.prefilter
        print(f"pre-filter {report.name}:{report.k} kept {len(report.selected)} of {report.pool_size} modules "
              f"({report.evaluations} evaluations, {report.seconds:.1f}s)")
    print(f"best score {result.best_score:.4f} (loss {result.best_loss:.4f}) after {result.evaluations} evaluations")
    for name, weight in sorted(result.weights.items(), key=lambda kv: -abs(kv[1]))[:10]:
        print(f"  {weight:+.3f}  {name}")
    print(f"adapter: {result.adapter_dir}\nresult:  {result.output / 'result.json'}")


def _search_many(args: argparse.Namespace) -> None:
    """``--examples DIR``: one search per ``DIR/*.jsonl`` on one pool (`lorahub_ray.many.run_many`), each written to
    ``OUTPUT/<task>``; OUTPUT is created if new, and removed again if nothing could be written into it."""
    from lorahub_ray.many import run_many

    tasks = sorted(Path(args.examples).glob("*.jsonl"))
    if not tasks:
        raise InputError(f"--examples {args.examples!r} is a directory without *.jsonl files; expected one few-shot "
                         "JSONL file per task (or give one file)")
    if missing := [f"--{name}" for name in ("base", "modules", "output") if not getattr(args, name)]:
        raise ConfigError(f"search needs {', '.join(missing)}")
    if refused := [flag for flag, given in (("--prefilter", args.prefilter), ("--merge", args.merge)) if given]:
        raise ConfigError(f"a directory of tasks (--examples {args.examples}) runs without {', '.join(refused)}")
    out = Path(args.output)
    created = not out.exists()
    if created:
        try:
            out.mkdir()
        except OSError as err:
            raise ConfigError(f"--output {str(out)!r} cannot be created ({err.strerror})") from None
    configs = [_run_config(args, base=args.base, modules=args.modules, examples=str(task)) for task in tasks]
    try:
        results = run_many(configs, _pool_config(args), [out / task.stem for task in tasks],
                           overwrite=args.overwrite, progress=not args.quiet)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    for task, result in zip(tasks, results):
        top = max(result.weights.items(), key=lambda kv: abs(kv[1]))
        print(f"{task.stem}: best score {result.best_score:.4f} (loss {result.best_loss:.4f}), largest weight "
              f"{top[1]:+.3f} {top[0]}; adapter: {result.adapter_dir}")


def _check_resume(args: argparse.Namespace) -> None:
    """``--resume`` continues with the checkpoint's settings: refuse the flags it would otherwise ignore."""
    from lorahub_ray.checkpoint import read_checkpoint

    inputs = [f"--{name}" for name in ("base", "modules", "examples", "output", "overwrite") if getattr(args, name)]
    if inputs:
        raise ConfigError(f"--resume takes the search's settings and inputs from its checkpoint; do not pass "
                          f"{', '.join(inputs)} with it")
    saved = read_checkpoint(Path(args.resume))[0]
    differing = [f"--{name} {getattr(args, name)} (the checkpoint has {getattr(saved, name)})"
                 for name in RESUMED_SETTINGS if name in args.given and getattr(args, name) != getattr(saved, name)]
    if differing:
        raise ConfigError(f"--resume continues the search with the settings it started with; it cannot change "
                          f"{'; '.join(differing)}. Drop the flag, or start a new search in another --output")


def _evaluate(args: argparse.Namespace) -> None:
    from lorahub_ray.evaluate import evaluate_adapter

    if args.json:
        _check_json_output(Path(args.json))
    report = evaluate_adapter(args.base, args.examples, args.adapter, args.batch_size, args.max_new_tokens,
                              args.device)
    print(f"exact match: {report.accuracy:.1f}% ({report.correct}/{report.total})")
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise InputError(f"--json {args.json!r} could not be written ({type(err).__name__}: {err.strerror})") \
                from None


def _check_json_output(path: Path) -> None:
    """``--json`` must name a file that can be written, checked before the evaluation runs."""
    if path.is_dir():
        raise ConfigError(f"--json {str(path)!r} is a directory; expected a file path")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"--json {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--json {str(path)!r} cannot be written (no write permission)")


def _convert_gguf(args: argparse.Namespace) -> None:
    import time

    from lorahub_ray.gguf import convert_gguf

    start = time.perf_counter()
    out = convert_gguf(args.gguf_file, args.out_dir)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s; use it as --base")


def _demo(args: argparse.Namespace) -> None:
    from lorahub_ray.demo import run_demo, run_world_demo

    if args.world in ("bigbench", "bbh"):
        if args.test_size < 1:
            raise ConfigError(f"--test-size must be >= 1, got {args.test_size}")
        run_world_demo(world=args.zoo, task=args.task or "navigate", output=args.output, budget=args.budget,
                       optimizer=args.optimizer, seed=args.seed, pool=_pool_config(args), test_size=args.test_size,
                       kind=args.world)
        return
    run_demo(zoo=args.zoo, task=args.task, output=args.output, budget=args.budget, optimizer=args.optimizer,
             seed=args.seed, pool=_pool_config(args))


def _show(args: argparse.Namespace) -> None:
    from lorahub_ray.show import read_result, summary, write_charts

    path, result = read_result(args.output)
    print(summary(result))
    try:
        charts = write_charts(result, path.parent)
    except ConfigError as err:
        print(f"no charts: {err}", file=sys.stderr)
        return
    print("charts: " + ", ".join(str(chart) for chart in charts))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"search": _search, "evaluate": _evaluate, "convert-gguf": _convert_gguf, "demo": _demo,
                    "zoo": run_zoo_command, "show": _show, "tune": run_tune_command}
        commands[args.command](args)
    except LoraHubRayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
