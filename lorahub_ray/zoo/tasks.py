"""Small BIG-bench-style text-to-text tasks: upstream tasks (seen in training) and related held-out tasks.

Every example is ``{"input": "<instruction> <data>\\nAnswer:", "output": "<answer>"}`` with short inputs
(a byte-level model reads them). Held-out tasks reuse upstream primitives with a new instruction wording,
a new parameter (e.g. the 3rd digit where upstream has the 2nd and 4th) or a new composition of primitives.
Splits are deterministic: each comes from a `random.Random` seeded by a SHA-256 of task name, seed and split.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

Example = dict[str, str]
VOWELS = "aeiou"
_MAX_TRIES_PER_EXAMPLE = 50


@dataclass(frozen=True)
class Task:
    """One task: ``sample(rng)`` draws the data text, ``solve(data)`` computes the answer from that text.

    Args:
        name: unique identifier (also a directory name).
        instruction: the fixed wording placed before the data.
        sample: a pure function of the `random.Random` it is given, returning the data text.
        solve: the task's function from data text to answer text.
        upstream: True for tasks the base model and the modules train on, False for held-out tasks.
    """

    name: str
    instruction: str
    sample: Callable[[random.Random], str]
    solve: Callable[[str], str]
    upstream: bool

    def example(self, rng: random.Random) -> Example:
        """One ``{"input", "output"}`` example drawn with ``rng``."""
        data = self.sample(rng)
        return {"input": f"{self.instruction} {data}\nAnswer:", "output": self.solve(data)}


# ---- data samplers ---------------------------------------------------------------------------------------


def _digits(lo: int = 3, hi: int = 6, pool: int = 10) -> Callable[[random.Random], str]:
    return lambda rng: " ".join(str(rng.randrange(pool)) for _ in range(rng.randint(lo, hi)))


def _letters(rng: random.Random, n: int) -> str:
    """Random lowercase letters, vowels over-represented so that vowel tasks are not trivial."""
    consonants = [c for c in string.ascii_lowercase if c not in VOWELS]
    return "".join(rng.choice(VOWELS) if rng.random() < 0.35 else rng.choice(consonants) for _ in range(n))


def _word(lo: int = 3, hi: int = 6) -> Callable[[random.Random], str]:
    return lambda rng: _letters(rng, rng.randint(lo, hi))


def _top_digits(rng: random.Random) -> str:
    """3-5 digits whose largest is uniform over 3..9 (with uniform digits the largest is mostly 9)."""
    top = rng.randrange(3, 10)
    xs = [top] + [rng.randrange(top + 1) for _ in range(rng.randint(2, 4))]
    rng.shuffle(xs)
    return _fmt(xs)


def _bottom_digits(rng: random.Random) -> str:
    """3-5 digits whose smallest is uniform over 0..6."""
    bottom = rng.randrange(7)
    xs = [bottom] + [rng.randrange(bottom, 10) for _ in range(rng.randint(2, 4))]
    rng.shuffle(xs)
    return _fmt(xs)


def _contains_data(rng: random.Random) -> str:
    xs = [rng.randrange(10) for _ in range(rng.randint(3, 6))]
    absent = [x for x in range(10) if x not in xs]
    return f"{rng.choice(xs) if rng.random() < 0.5 else rng.choice(absent)}: {_fmt(xs)}"


def _count_value_data(rng: random.Random) -> str:
    x = rng.randrange(10)
    xs = [x if rng.random() < 0.3 else rng.randrange(10) for _ in range(rng.randint(3, 6))]
    return f"{x}: {_fmt(xs)}"


def _number(rng: random.Random) -> str:
    return str(rng.randrange(10, 100000))


def _two_numbers(rng: random.Random) -> str:
    a, b = rng.sample(range(10, 100), 2)
    return f"{a} or {b}"


def _two_letters(rng: random.Random) -> str:
    a, b = rng.sample(string.ascii_lowercase, 2)
    return f"{a} or {b}"


def _lookup_data(rng: random.Random) -> str:
    keys = rng.sample("abcdefgh", rng.randint(3, 4))
    pairs = " ".join(f"{k}={rng.randrange(10)}" for k in keys)
    return f"{rng.choice(keys)}: {pairs}"


def _bool_data(rng: random.Random) -> str:
    while True:  # BBH-style boolean expression of 2-4 operands, at most 45 characters
        parts = []
        for i in range(rng.randint(2, 4)):
            if i:
                parts.append(rng.choice(["and", "or"]))
            parts.append(("not " if rng.random() < 0.3 else "") + rng.choice(["True", "False"]))
        expr = " ".join(parts)
        if len(expr) <= 45:
            return expr


def _bits(rng: random.Random) -> str:
    return " ".join(str(rng.randrange(2)) for _ in range(rng.choice([3, 5, 7, 9])))  # odd: no ties


# ---- answer functions --------------------------------------------------------------------------------------


def _fmt(xs) -> str:
    return " ".join(map(str, xs))


def _ints(data: str) -> list[int]:
    return [int(x) for x in data.split()]


def _dedupe(xs: list) -> list:
    return list(dict.fromkeys(xs))


def _shift(word: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in word)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _on_digits(fn: Callable[[list[int]], object]) -> Callable[[str], str]:
    def solve(data: str) -> str:
        out = fn(_ints(data))
        return out if isinstance(out, str) else str(out)

    return solve


def _count_value(data: str) -> str:
    x, xs = data.split(":")
    return str(_ints(xs).count(int(x)))



def _contains(data: str) -> str:
    x, xs = data.split(":")
    return _yes(int(x) in _ints(xs))


def _pair(data: str) -> tuple[str, str]:
    a, b = data.split(" or ")
    return a, b


def _lookup(data: str) -> str:
    key, pairs = data.split(": ")
    return dict(p.split("=") for p in pairs.split())[key]


def _bool_eval(data: str) -> str:
    """Python precedence (not > and > or) over the literals True/False, evaluated without `eval`."""
    tokens = data.split()

    def conj(i: int) -> tuple[bool, int]:  # a run of (not)* literal joined by "and"
        value = True
        while True:
            negate = False
            while tokens[i] == "not":
                negate, i = not negate, i + 1
            value = value and ((tokens[i] == "True") != negate)
            i += 1
            if i < len(tokens) and tokens[i] == "and":
                i += 1
                continue
            return value, i

    result, i = conj(0)
    while i < len(tokens):  # tokens[i] == "or"
        value, i = conj(i + 1)
        result = result or value
    return str(result)


def _majority(data: str) -> str:
    bits = _ints(data)
    return "ones" if 2 * sum(bits) > len(bits) else "zeros"


# ---- the task lists ----------------------------------------------------------------------------------------


def _upstream() -> list[Task]:
    d, w, f = _digits, _word, _on_digits
    return [
        Task("max_digit", "Largest digit:", _top_digits, f(max), True),
        Task("min_digit", "Smallest digit:", _bottom_digits, f(min), True),
        Task("sort_digits", "Sort the digits:", d(), f(lambda xs: _fmt(sorted(xs))), True),
        Task("count_digits", "Count the digits:", d(2, 9), f(len), True),
        Task("first_digit", "First digit:", d(), f(lambda xs: xs[0]), True),
        Task("last_digit", "Last digit:", d(), f(lambda xs: xs[-1]), True),
        Task("digit_2", "Digit number 2:", d(), f(lambda xs: xs[1]), True),
        Task("digit_4", "Digit number 4:", d(4, 6), f(lambda xs: xs[3]), True),
        Task("second_last_digit", "Second to last digit:", d(), f(lambda xs: xs[-2]), True),
        Task("even_number", "Is the number even?", _number, lambda s: _yes(int(s) % 2 == 0), True),
        Task("dedupe_digits", "Remove repeats:", d(4, 7, 6), f(lambda xs: _fmt(_dedupe(xs))), True),
        Task("count_value", "How many of", _count_value_data, _count_value, True),
        Task("contains_value", "Is it in the list?", _contains_data, _contains, True),
        Task("count_even", "How many even digits?", d(), f(lambda xs: sum(x % 2 == 0 for x in xs)), True),
        Task("add1_last", "Add 1 to the last digit:", d(2, 5), f(lambda xs: (xs[-1] + 1) % 10), True),
        Task("add3_last", "Add 3 to the last digit:", d(2, 5), f(lambda xs: (xs[-1] + 3) % 10), True),
        Task("sort_unique", "Sort and remove repeats:", d(5, 9), f(lambda xs: _fmt(sorted(set(xs)))), True),
        Task("digit_range", "Largest minus smallest:", d(), f(lambda xs: max(xs) - min(xs)), True),
        Task("first_and_last", "First and last digit:", d(), f(lambda xs: _fmt([xs[0], xs[-1]])), True),
        Task("min_letter", "Earliest letter in the alphabet:", w(), min, True),
        Task("first_letter", "First letter:", w(), lambda s: s[0], True),
        Task("last_letter", "Last letter:", w(), lambda s: s[-1], True),
        Task("second_letter", "Second letter:", w(), lambda s: s[1], True),
        Task("next_letter", "Letter after the last one:", w(2, 4), lambda s: _shift(s[-1], 1), True),
        Task("letter_3_later", "3 letters after the last one:", w(2, 4), lambda s: _shift(s[-1], 3), True),
        Task("count_vowels", "Count the vowels:", w(), lambda s: str(sum(c in VOWELS for c in s)), True),
        Task("count_consonants", "Count the consonants:", w(), lambda s: str(sum(c not in VOWELS for c in s)), True),
        Task("first_vowel", "First vowel:", w(), lambda s: next((c for c in s if c in VOWELS), "none"), True),
        Task("word_length", "Length of the word:", w(2, 9), lambda s: str(len(s)), True),
        Task("max_letter", "Latest letter in the alphabet:", w(), max, True),
        Task("alpha_first", "Which letter comes first?", _two_letters, lambda s: min(_pair(s)), True),
        Task("larger_number", "Which is larger?", _two_numbers, lambda s: max(_pair(s), key=int), True),
        Task("lookup", "Look up", _lookup_data, _lookup, True),
        Task("bool_eval", "Evaluate:", _bool_data, _bool_eval, True),
        Task("majority_bit", "More ones or zeros?", _bits, _majority, True),
        Task("count_ones", "How many ones?", _bits, f(sum), True),
    ]


def _heldout() -> list[Task]:
    d, w, f = _digits, _word, _on_digits
    return [
        # new instruction wording for an upstream skill
        Task("biggest_digit", "Give the biggest digit:", _top_digits, f(max), False),
        Task("least_digit", "Give the least digit:", _bottom_digits, f(min), False),
        Task("opening_digit", "Which digit comes first?", d(), f(lambda xs: xs[0]), False),
        Task("final_digit", "Which digit is at the end?", d(), f(lambda xs: xs[-1]), False),
        Task("how_many_digits", "How many digits are there?", d(2, 9), f(len), False),
        Task("vowel_tally", "Number of vowels in it:", w(), lambda s: str(sum(c in VOWELS for c in s)), False),
        Task("more_bits", "Are there more ones or more zeros?", _bits, _majority, False),
        Task("truth_value", "Is it True or False?", _bool_data, _bool_eval, False),
        # new parameter of a parameterised upstream skill
        Task("digit_3", "Digit number 3:", d(), f(lambda xs: xs[2]), False),
        Task("add2_last", "Add 2 to the last digit:", d(2, 5), f(lambda xs: (xs[-1] + 2) % 10), False),
        Task("letter_2_later", "2 letters after the last one:", w(2, 4), lambda s: _shift(s[-1], 2), False),
        Task("smaller_number", "Which is smaller?", _two_numbers, lambda s: min(_pair(s), key=int), False),
        # new composition of upstream primitives
        Task("count_unique", "How many different digits?", d(4, 7, 6), f(lambda xs: len(set(xs))), False),
        Task("count_odd", "How many odd digits?", d(), f(lambda xs: sum(x % 2 for x in xs)), False),
        Task("first_digit_even", "Is the first digit even?", d(), f(lambda xs: _yes(xs[0] % 2 == 0)), False),
    ]


_UPSTREAM = _upstream()
_HELDOUT = _heldout()
_BY_NAME = {t.name: t for t in _UPSTREAM + _HELDOUT}
assert len(_BY_NAME) == len(_UPSTREAM) + len(_HELDOUT), "task names must be unique"


def upstream_tasks() -> list[Task]:
    """Tasks the base model and the LoRA modules are trained on (one module per task)."""
    return list(_UPSTREAM)


def heldout_tasks() -> list[Task]:
    """Tasks unseen in all training, related to upstream ones (new wording, parameter or composition)."""
    return list(_HELDOUT)


def get_task(name: str) -> Task:
    """The task called ``name`` (upstream or held-out); `KeyError` if unknown."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}") from None


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` that is identical across processes (unlike the salted ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def draw_distinct(task: Task, n: int, rng: random.Random, exclude: set[str]) -> list[Example]:
    """Up to ``n`` examples with distinct inputs not in ``exclude`` (fewer if the input space runs out)."""
    out: list[Example] = []
    seen = set(exclude)
    tries = 0
    while len(out) < n and tries < _MAX_TRIES_PER_EXAMPLE * max(n, 1):
        tries += 1
        ex = task.example(rng)
        if ex["input"] not in seen:
            seen.add(ex["input"])
            out.append(ex)
    return out


def make_split(task: Task, n: int, seed: int, split: str = "sample") -> list[Example]:
    """``n`` deterministic examples of ``task`` with distinct inputs (fewer only if its input space is smaller)."""
    return draw_distinct(task, n, random.Random(stable_seed(task.name, seed, split)), set())


def splits(task: Task, seed: int = 0, n_train: int = 1000, n_fewshot: int = 5, n_test: int = 100) -> dict[str, list[Example]]:
    """Disjoint ``train`` / ``fewshot`` / ``test`` examples; each split's draw is independent of the others' sizes.

    The test set is drawn first, then few-shot examples avoid test inputs, then training avoids both.
    """
    test = make_split(task, n_test, seed, "test")
    taken = {ex["input"] for ex in test}
    fewshot = draw_distinct(task, n_fewshot, random.Random(stable_seed(task.name, seed, "fewshot")), taken)
    taken |= {ex["input"] for ex in fewshot}
    train = draw_distinct(task, n_train, random.Random(stable_seed(task.name, seed, "train")), taken)
    return {"train": train, "fewshot": fewshot, "test": test}


def dev_examples(task: Task, seed: int, split: dict[str, list[Example]], n: int) -> list[Example]:
    """Up to ``n`` examples whose inputs are in no part of ``split`` (the task's `splits`): the build scores a
    module and its base on them to decide whether the module needs more training steps."""
    taken = {ex["input"] for part in split.values() for ex in part}
    return draw_distinct(task, n, random.Random(stable_seed(task.name, seed, "dev")), taken)


def instruction_words() -> list[str]:
    """The distinct words of all upstream instructions (punctuation stripped), in a fixed order."""
    words = (w.strip(":?") for t in _UPSTREAM for w in t.instruction.split())
    return sorted({w for w in words if w.isalpha()})


def reword(example: Example, task: Task, rng: random.Random, words: list[str] | None = None) -> Example:
    """``example`` with its instruction replaced by 2-5 random upstream instruction words and a colon.

    Module training mixes some of these in (like the several templates per task of the Flan collection) so a
    module learns its skill rather than one wording; the answer is unchanged.
    """
    words = words or instruction_words()
    prefix = task.instruction + " "
    assert example["input"].startswith(prefix)
    noise = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) + ":"
    return {"input": noise + " " + example["input"][len(prefix) :], "output": example["output"]}
