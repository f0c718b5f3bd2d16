"""The inputs of one or several searches, read and checked before anything starts: each search's few-shot examples,
and the union of their modules (indexed, compatible with each other, and with the base model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from actors import ExampleSets, LoraStack
from lorahub_ray.base import check_base
from lorahub_ray.data import load_examples
from lorahub_ray.modules import ModuleEntry, check_compatible, index_module, stack_modules

ExamplesSource = str | Path | Sequence[dict[str, str]]  # a JSONL file, or the examples themselves


@dataclass(frozen=True)
class SearchInputs:
    """What `load_inputs` read.

    Args:
        examples: each search's examples, in the order the searches were given.
        names: the union of the searches' modules as given, in first-seen order.
        entries: the indexed module of each name.
    """

    examples: list[list[dict[str, str]]]
    names: list[str]
    entries: list[ModuleEntry]

    def columns(self, modules: Sequence[str]) -> list[int]:
        """The union index of each of ``modules``."""
        return [self.names.index(name) for name in modules]

    def stack(self, dtype: str = "float32") -> LoraStack:
        """The union's modules stacked (`lorahub_ray.modules.stack_modules`)."""
        return stack_modules(self.entries, dtype)

    def example_sets(self) -> ExampleSets:
        """Every search's examples, for actors that serve them all."""
        return ExampleSets(tuple(tuple(examples) for examples in self.examples))


def load_inputs(base: str, modules: Sequence[Sequence[str]], examples: Sequence[ExamplesSource]) -> SearchInputs:
    """Read every search's ``examples`` and index the union of their ``modules`` (one module list per search, or one
    for all); check the modules against each other and the first against ``base``.

    Raises:
        InputError: an examples file or a module that is missing or malformed; `ModuleMismatchError`: modules that
            cannot be composed together or with the base (each naming the file and what was expected).
    """
    loaded = [load_examples(source) for source in examples]
    names = list(dict.fromkeys(name for group in modules for name in group))
    entries = [index_module(name) for name in names]
    check_compatible(entries)
    check_base(entries[0], base)
    return SearchInputs(loaded, names, entries)
