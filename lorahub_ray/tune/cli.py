"""The ``lorahub-ray tune`` subcommand: its arguments and how it runs."""

from __future__ import annotations

import argparse
import tempfile

from lorahub_ray.errors import ConfigError
from lorahub_ray.tune.config_file import load_sweep_config
from lorahub_ray.tune.example import example_sweep
from lorahub_ray.tune.sweeps import sweep


def add_tune_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lorahub-ray tune`` to the CLI's subcommands."""
    parser = subparsers.add_parser("tune", help="sweep tasks x settings as Ray Tune trials; print each task's best")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="sweep JSON: tasks, param_space and the shared trial settings")
    source.add_argument("--example", nargs="?", const="", metavar="DIR",
                        help="the example sweep on tiny offline models, in DIR (default: a new temp dir)")
    parser.add_argument("--storage-path", default=None,
                        help="Tune's storage directory (default: the config's storage_path, else ~/ray_results)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep, each trial from its last checkpoint")


def run_tune_command(args: argparse.Namespace) -> None:
    """Run ``lorahub-ray tune`` (the table is printed by `sweep`)."""
    if args.example is not None:
        if args.storage_path:
            raise ConfigError("--storage-path goes with --config; --example writes under its DIR")
        example_sweep(args.example or tempfile.mkdtemp(prefix="lorahub-ray-tune-"), resume=args.resume)
        return
    config = load_sweep_config(args.config)
    if args.storage_path:
        config["storage_path"] = args.storage_path
    sweep(**config, resume=args.resume)
