"""Every ``python benchmarks/<name>.py`` command shown in the README, docs/, benchmarks/README.md and the
benchmarks' own docstrings parses with that benchmark's argument parser as it is (the benchmark is not run)."""

import argparse
import ast
import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), BENCHMARKS / "README.md"]
PLACEHOLDERS = {"S": "1.8", "N": "3", "I/2": "0/2", "DIR": "some/dir", "DIR/*": "some/dir/a", "MODEL": "model", "NAME": "name", "...": "x"}
COMMAND = re.compile(r"python benchmarks/(\w+)\.py([^&;#`\n]*)")


def _code_text(text: str) -> str:
    """A markdown file's or docstring's command text: inline code spans, and code lines (4-space indent) with
    their continuations joined."""
    lines = re.sub(r"\\\n\s*|\n\s+(?=\[)", " ", text).splitlines()  # continuations: "\" or a "[...]" line
    prose = "\n".join(line for line in lines if not line.startswith("    "))
    spans = [span.replace("\n", " ").replace("\\|", "|") for span in re.findall(r"`([^`]+)`", prose)]
    return "\n".join(spans + [line for line in lines if line.startswith("    ")])


def _commands() -> list[tuple[str, str, str]]:
    """(where, benchmark, arguments) of every documented benchmark command."""
    sources = [(str(doc.relative_to(ROOT)), doc.read_text(encoding="utf-8")) for doc in DOCS]
    sources += [(f"benchmarks/{path.name} docstring", ast.get_docstring(ast.parse(path.read_text())) or "")
                for path in sorted(BENCHMARKS.glob("*.py"))]
    found = []
    for where, text in sources:
        for match in COMMAND.finditer(_code_text(text)):
            found.append((where, match.group(1), match.group(2)))
    return found


def _as_arguments(arguments: str) -> list[str]:
    """``[optional]`` parts kept, ``[a | b]`` read as ``a``, placeholders made values."""
    arguments = re.sub(r"\[([^\]|]*?)\s*\|[^\]]*\]", r"\1", arguments)
    arguments = re.sub(r"\[([^\]]*)\]", r"\1", arguments)
    return [PLACEHOLDERS.get(word, word) for word in shlex.split(arguments)]


COMMANDS = _commands()


class _Parsed(Exception):
    """Raised instead of running the benchmark once its arguments parsed."""


def test_the_docs_show_every_benchmark():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")} - {"needs", "protocol", "shapes"}
    assert scripts <= {benchmark for _, benchmark, _ in COMMANDS}, "a benchmark no document shows how to run"


@pytest.mark.parametrize("where, benchmark, arguments", COMMANDS,
                         ids=[f"{where}:{benchmark}{args}" for where, benchmark, args in COMMANDS])
def test_a_documented_benchmark_command_parses(where, benchmark, arguments, monkeypatch, capsys):
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(benchmark)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{benchmark}.py", *_as_arguments(arguments)])
    try:
        module.main()
    except _Parsed:
        return
    except SystemExit:
        pytest.fail(f"{where}: `python benchmarks/{benchmark}.py{arguments}` does not parse: "
                    f"{capsys.readouterr().err.strip()}")
    pytest.fail(f"{where}: benchmarks/{benchmark}.py ran without parsing its arguments")
