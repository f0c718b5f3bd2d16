"""Every ``lorahub-ray`` command line shown in the README and docs/ parses with the CLI as it is: its subcommand and
flags exist and take the values shown (usage lines are read with their optional parts in, first alternatives)."""

import re
import shlex
from pathlib import Path

import pytest

from lorahub_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NUMBERS = {"K": "2", "P": "4", "G": "1", "C": "8", "N": "3", "SECONDS": "60"}  # placeholders of numeric flags


def _command_lines() -> list[tuple[str, str]]:
    """(file:line, command) of every code line that runs ``lorahub-ray``, with the ``[...]`` lines that continue it."""
    found = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            match = re.search(r"(?:^|[\s/])lorahub-ray (.*)", line)
            if line.startswith("    ") and match:  # a code line, not prose naming the command in backticks
                found.append((f"{doc.relative_to(ROOT)}:{number}", match.group(1).split("  #")[0].split("&&")[0]))
            elif found and line.startswith("      ") and line.strip().startswith("[") and found[-1][0].startswith(
                    f"{doc.relative_to(ROOT)}:"):
                found[-1] = (found[-1][0], found[-1][1] + " " + line.strip())
    return found


def _as_arguments(command: str) -> list[str]:
    """The command's arguments: ``[optional]`` parts kept, ``a|b`` read as ``a``, ``…`` and ``[same flags]`` dropped,
    numeric placeholders made numbers."""
    command = command.replace("[same flags]", "").replace("…", "")
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    words = [word.split("|")[0] for word in shlex.split(command)]
    return [NUMBERS.get(word, word) for word in words]


COMMANDS = _command_lines()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("where, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses(where, command, capsys):
    try:
        build_parser().parse_args(_as_arguments(command))
    except SystemExit:
        pytest.fail(f"{where}: `lorahub-ray {command.strip()}` does not parse: {capsys.readouterr().err.strip()}")
