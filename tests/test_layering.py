"""Imports go one way (lorahub_ray -> actors), and Ray is imported in two driver files only (pool, tune)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_FILES = {"lorahub_ray/pool.py", "lorahub_ray/tune/trial.py", "lorahub_ray/tune/sweeps.py",
             "lorahub_ray/tune/weight_trials.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_actors_import_neither_the_driver_nor_ray():
    files = sorted((ROOT / "actors").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): _imports(f) & {"lorahub_ray", "ray"} for f in files}
    assert {f: names for f, names in offenders.items() if names} == {}


def test_only_the_pool_and_tune_import_ray():
    files = sorted((ROOT / "lorahub_ray").rglob("*.py"))
    importers = {str(f.relative_to(ROOT)) for f in files if "ray" in _imports(f)}
    assert importers == RAY_FILES


def test_importing_the_cli_loads_neither_nevergrad_nor_ray():
    """`lorahub-ray --help` pays for neither (nevergrad alone took 5 s): a search imports them when it needs them."""
    code = "import sys, lorahub_ray.cli; print(sorted(m for m in ('nevergrad', 'ray') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
