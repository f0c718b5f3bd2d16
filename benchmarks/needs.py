"""What a benchmark needs beyond lorahub-ray's own dependencies, checked before it starts any work, and the
private Ray instance it runs its actors on."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCH_INSTALL = 'pip install -e ".[bench]"'  # the `bench` extra, from the project's root


def require(script: str, modules: tuple[str, ...], install: str = BENCH_INSTALL) -> None:
    """Exit with code 2 and one line naming ``install`` when one of ``modules`` does not import.

    Args:
        script: the benchmark's ``__file__``, named in the message.
        modules: top-level modules the benchmark imports later (e.g. ``("matplotlib",)`` for its plot).
        install: what to run to get them.
    """
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"error: {Path(script).name} needs {', '.join(missing)}, which cannot be imported here; "
              f"install it first: {install}", file=sys.stderr)
        raise SystemExit(2)


@contextmanager
def private_ray(num_cpus: int = 2) -> Iterator[None]:
    """A private local Ray with ``num_cpus`` CPUs for the block (never a cluster that ``ray start`` left), stopped
    when the block ends, by an error too."""
    import ray

    from lorahub_ray.pool import auth_notice_quieted

    with auth_notice_quieted():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
