"""The ``lorahub-ray zoo`` subcommands: ``build`` (the offline zoo, or a real world) and ``check``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorahub_ray.errors import ConfigError


def add_zoo_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lorahub-ray zoo build`` and ``zoo check`` to the CLI's subcommands."""
    zoo = subparsers.add_parser("zoo", help="the offline module zoo: tasks, base models and LoRA modules")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    build = zoo_commands.add_parser("build", help="build (or complete) the zoo; cached and deterministic")
    build.add_argument("--world", choices=["zoo", "bigbench", "bbh"], default="zoo",
                       help="zoo: byte-level bases and tasks of this project; bigbench: SmolLM2-135M-Instruct with "
                            "one LoRA per upstream BIG-bench task and the BBH subtasks held out (downloads a wheel "
                            "and the bigbench sdist with pip; about an hour on 2 CPUs); bbh: SmolLM2-135M-Instruct "
                            "with one LoRA per BBH subtask, each subtask held out from its own task's modules "
                            "(needs --bbh)")
    build.add_argument("--out", default=None, help="directory (default: ~/.cache/lorahub-ray/zoo or $LORAHUB_RAY_ZOO; "
                                                   "worlds: ~/.cache/lorahub-ray/WORLD or $LORAHUB_RAY_WORLD)")
    build.add_argument("--sdist", default=None, help="bigbench: a local bigbench-1.0.0.tar.gz instead of downloading")
    build.add_argument("--bbh", default=None, help="bbh: a checkout of github.com/suzgunmirac/BIG-Bench-Hard "
                                                   "(or its bbh/ folder)")
    build.add_argument("--base", default=None, help="bigbench, bbh: a local Hugging Face model directory to build on "
                                                    "instead of SmolLM2-135M-Instruct")
    build.add_argument("--size", choices=["tiny", "default", "large"], default="default",
                       help="large: the default zoo plus 5 variants of every module (216 modules, for big pools)")
    build.add_argument("--kinds", nargs="+", choices=["t5", "llama"], default=["t5"],
                       help="base models: t5 (encoder-decoder) and/or llama (decoder-only)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    check = zoo_commands.add_parser("check", help="does every module beat its base model on its own task? "
                                                  "(scored on examples unseen in training)")
    check.add_argument("--zoo", default=None, help="zoo directory (default: as the demo's)")
    check.add_argument("--kinds", nargs="+", choices=["t5", "llama"], default=["t5"])
    check.add_argument("--examples", type=int, default=1000,
                       help="unseen examples per task (fewer if a task has too few distinct inputs)")
    check.add_argument("--output", default=None, help="also write the figures to this JSON file")


def run_zoo_command(args: argparse.Namespace) -> None:
    """Run ``lorahub-ray zoo build`` or ``zoo check``."""
    import time

    from lorahub_ray.zoo.build import DEFAULT_ZOO_DIR, build_zoo

    if args.zoo_command == "check":
        _zoo_check(args)
        return
    if args.world in ("bigbench", "bbh"):
        _world_build(args)
        return
    out = Path(args.out) if args.out else DEFAULT_ZOO_DIR
    start = time.perf_counter()
    manifest = build_zoo(out, size=args.size, kinds=tuple(args.kinds), seed=args.seed, num_threads=args.threads)
    modules = sum(len(entries) for part in ("modules", "variants") for entries in manifest[part].values())
    print(f"zoo at {out}: {len(manifest['bases'])} base model(s), {modules} modules, {len(manifest['heldout'])} "
          f"held-out tasks; {len(manifest['built'])} artifacts built in {time.perf_counter() - start:.0f}s")


def _world_build(args: argparse.Namespace) -> None:
    import dataclasses
    import time

    from lorahub_ray.zoo.world import WorldConfig, build_world, default_world_dir

    if (args.world == "bbh") != (args.bbh is not None):
        raise ConfigError("--bbh CHECKOUT goes with --world bbh, and --world bbh needs it")
    out = Path(args.out) if args.out else default_world_dir(args.world)
    start = time.perf_counter()
    manifest = build_world(out, dataclasses.replace(WorldConfig(), seed=args.seed), sdist=args.sdist,
                           base=args.base, num_threads=args.threads, bbh=args.bbh)
    print(f"{args.world} world at {out}: {len(manifest['modules'])} modules ({manifest['specialists']} specialists), "
          f"{len(manifest['heldout'])} held-out BBH subtasks; {time.perf_counter() - start:.0f}s on "
          f"{manifest['machine']}")


def _zoo_check(args: argparse.Namespace) -> None:
    from lorahub_ray.atomic import write_atomic
    from lorahub_ray.demo import ensure_zoo
    from lorahub_ray.zoo.check import check_specialists

    if args.examples < 1:
        raise ConfigError(f"--examples must be >= 1, got {args.examples}")
    directory = Path(args.zoo) if args.zoo else ensure_zoo(None)[0]  # a zoo given is checked, never built
    results = {}
    for kind in args.kinds:
        result = results[kind] = check_specialists(directory, kind, examples=args.examples)
        print(f"{kind}: exact match on up to {args.examples} unseen examples of each module's own task")
        for row in result["tasks"]:
            print(f"  {row['task']:18s} base {100 * row['base']:5.1f}  module {100 * row['module']:5.1f}"
                  f"  ({row['examples']} examples)")
        print(f"{kind}: {len(result['beat'])} of {len(result['tasks'])} modules beat the base; "
              f"tie: {', '.join(result['tie']) or 'none'}; below: {', '.join(result['below']) or 'none'}")
    if args.output:
        write_atomic(Path(args.output), json.dumps({"zoo": str(directory), **results}, indent=1) + "\n")
