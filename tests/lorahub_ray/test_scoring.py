"""Scoring a model: option accuracy, generation that stops at every end token, the automatic token budget."""

from __future__ import annotations

import pytest
import torch

from actors.examples import collate, example_ids
from actors.loss import example_token_losses
from lorahub_ray.errors import InputError
from lorahub_ray.evaluate import (
    ANSWER_MARGIN,
    answer_budget,
    end_token_ids,
    exact_match,
    load_model,
    option_accuracy,
    option_losses,
    shared_prefix_length,
    worth_sharing,
)

CHOICES = [
    {"input": "Q: 2 + 2?\nA:", "output": " (B)", "options": [" (A)", " (B)", " (C)"]},
    {"input": "Q: is ice cold?\nA:", "output": " yes", "options": [" yes", " no"]},
    {"input": "Q: colour of the sky?\nA:", "output": " (A)", "options": [" (A)", " (B)"]},
    {"input": "Q: 3 > 1?\nA:", "output": " no", "options": [" yes", " no"]},
]


def _loss(model, tokenizer, example: dict, option: str) -> float:
    encoder_decoder = bool(model.config.is_encoder_decoder)
    row = example_ids(tokenizer, {"input": example["input"], "output": option}, encoder_decoder)
    return example_token_losses(model, collate([row], tokenizer.pad_token_id, encoder_decoder))[0].item()


def test_option_accuracy_picks_the_option_with_the_lowest_summed_loss(world):
    model, tokenizer = load_model(world["base"], device="cpu")
    expected = []
    for example in CHOICES:  # one option at a time, unbatched
        losses = [_loss(model, tokenizer, example, option) for option in example["options"]]
        expected.append(example["options"][losses.index(min(losses))] == example["output"])
    assert option_accuracy(model, tokenizer, CHOICES, batch_size=3) == pytest.approx(100 * sum(expected) / 4)
    # pointing every example's output at the option it prefers gives 100%, at another option 0%
    preferred = [{**ex, "output": ex["options"][[_loss(model, tokenizer, ex, o) for o in ex["options"]].index(
        min(_loss(model, tokenizer, ex, o) for o in ex["options"]))]} for ex in CHOICES]
    assert option_accuracy(model, tokenizer, preferred) == 100.0
    other = [{**ex, "output": next(o for o in ex["options"] if o != ex["output"])} for ex in preferred]
    assert option_accuracy(model, tokenizer, other) == 0.0


def test_option_accuracy_of_an_adapter_scores_the_adapted_model(world):
    from peft import PeftModel

    base, tokenizer = load_model(world["base"], device="cpu")
    merged, _ = load_model(world["base"], world["modules"][0], device="cpu")
    wrapped = PeftModel.from_pretrained(load_model(world["base"], device="cpu")[0], world["modules"][0]).eval()
    preferred = [{**ex, "output": min(ex["options"], key=lambda o: _loss(merged, tokenizer, ex, o))} for ex in CHOICES]
    assert option_accuracy(wrapped, tokenizer, preferred) == option_accuracy(merged, tokenizer, preferred) == 100.0


def test_option_accuracy_refuses_examples_without_their_output_among_the_options(t5_world):
    model, tokenizer = load_model(t5_world["base"], device="cpu")
    with pytest.raises(InputError, match="example 1: field 'options' must be a list"):
        option_accuracy(model, tokenizer, [CHOICES[0], {"input": "x", "output": " y"}])
    with pytest.raises(InputError, match="holding its output ' maybe'"):
        option_accuracy(model, tokenizer, [{**CHOICES[1], "output": " maybe"}])
    with pytest.raises(InputError, match="at least one"):
        option_accuracy(model, tokenizer, [])


def test_generation_ends_at_the_model_end_token_too(world):
    model, tokenizer = load_model(world["base"], device="cpu")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    assert end_token_ids(model, tokenizer) == [tokenizer.eos_token_id, 7]
    model.generation_config.eos_token_id = 9
    assert end_token_ids(model, tokenizer) == [tokenizer.eos_token_id, 9]
    model.generation_config.eos_token_id = None
    assert end_token_ids(model, tokenizer) == [tokenizer.eos_token_id]


def test_the_automatic_budget_follows_the_longest_answer(world, monkeypatch):
    model, tokenizer = load_model(world["base"], device="cpu")
    examples = [{"input": "a", "output": "xy"}, {"input": "b", "output": "wxyz"}]
    longest = len(tokenizer("wxyz", add_special_tokens=False)["input_ids"])
    assert answer_budget(tokenizer, examples) == longest + ANSWER_MARGIN
    budgets, generate = [], model.generate

    def spy(*args, **kwargs):
        budgets.append((kwargs["max_new_tokens"], kwargs["eos_token_id"]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    exact_match(model, tokenizer, examples)
    exact_match(model, tokenizer, examples, max_new_tokens=3)
    assert budgets == [(longest + ANSWER_MARGIN, end_token_ids(model, tokenizer)), (3, end_token_ids(model, tokenizer))]
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("head", ["float32 head on the body", "the model's own logits"])
def test_option_losses_read_a_decoder_prompt_once_and_match_each_option_scored_alone(world, head, monkeypatch):
    from peft import PeftModel

    if head == "the model's own logits":  # the path of models outside PLAIN_HEAD (a softcap, a logit scale)
        monkeypatch.setattr("lorahub_ray.evaluate.plain_head", lambda model: False)
    model, tokenizer = load_model(world["base"], device="cpu")
    wrapped = PeftModel.from_pretrained(load_model(world["base"], device="cpu")[0], world["modules"][0]).eval()
    for scorer in (model, wrapped):
        unwrapped = scorer.get_base_model() if scorer is wrapped else scorer
        alone = [[_loss(unwrapped, tokenizer, ex, option) for option in ex["options"]] for ex in CHOICES]
        shared = option_losses(scorer, tokenizer, CHOICES, batch_size=2)
        assert [len(row) for row in shared] == [len(ex["options"]) for ex in CHOICES]
        assert shared == [pytest.approx(row, rel=1e-4, abs=1e-4) for row in alone]
    # options of different lengths: the shorter ones' padding adds no loss
    uneven = [{"input": "Q: name?\nA:", "output": " a", "options": [" a", " a much longer answer", " b c"]}]
    alone = [_loss(model, tokenizer, uneven[0], option) for option in uneven[0]["options"]]
    assert option_losses(model, tokenizer, uneven)[0] == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_shared_prefix_length_and_when_it_is_worth_reading_once():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2]]) == 1  # each row keeps a token of its own
    assert shared_prefix_length([[1, 2, 3]]) == shared_prefix_length([[1], [2]]) == 0
    assert worth_sharing([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert worth_sharing([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 8]]) == 6
    assert worth_sharing([[1, 2, 3, 4, 5, 6, 7, 8], [1, 9, 3, 4, 5, 6, 7, 8]]) == 0  # saves one token of 16


def test_prompts_sharing_their_demonstrations_read_them_once_with_the_same_results(world, monkeypatch):
    from peft import PeftModel

    import lorahub_ray.evaluate as evaluate

    demonstrations = "".join(f"{ex['input']}{ex['output']}\n\n" for ex in CHOICES) * 3
    prompted = [{**ex, "input": demonstrations + ex["input"]} for ex in CHOICES]
    model, tokenizer = load_model(world["base"], device="cpu")
    wrapped = PeftModel.from_pretrained(load_model(world["base"], device="cpu")[0], world["modules"][0]).eval()
    with torch.no_grad():  # larger weights: the tiny random model's completions then differ from prompt to prompt
        for parameter in [*model.parameters(), *wrapped.parameters()]:
            parameter.mul_(20.0 if parameter.dim() == 2 else 1.0)
    prefixes, prefix_cache = [], evaluate._prefix_cache
    monkeypatch.setattr(evaluate, "_prefix_cache",
                        lambda scorer, prefix, device: prefixes.append(prefix) or prefix_cache(scorer, prefix, device))
    decoder = not model.config.is_encoder_decoder  # an encoder reads its input both ways: no prefix stands alone
    for scorer in (model, wrapped):
        shared_losses = option_losses(scorer, tokenizer, prompted)
        cached, generate = [], scorer.generate  # each batch starts from a copy of the prefix's cache
        monkeypatch.setattr(scorer, "generate", lambda **kwargs: cached.append(
            next((v.get_seq_length() for k, v in kwargs.items() if k in ("cache", "past_key_values")), 0))
            or generate(**kwargs))
        shared_em = exact_match(scorer, tokenizer, prompted, batch_size=3, max_new_tokens=6)
        monkeypatch.setattr(scorer, "generate", generate)
        assert len(prefixes) == 2 * decoder and cached == [len(prefixes[-1]) if decoder else 0] * 2
        if decoder:
            assert len(prefixes[0]) == len(prefixes[1]) >= len(demonstrations.encode())
        with monkeypatch.context() as whole:
            whole.setattr(evaluate, "worth_sharing", lambda rows: 0)
            assert shared_losses == [pytest.approx(row, rel=0, abs=2e-5)  # a token read twice moves them 3e-4
                                     for row in option_losses(scorer, tokenizer, prompted)]
            whole_em = exact_match(scorer, tokenizer, prompted, batch_size=3, max_new_tokens=6)
            assert shared_em.predictions == whole_em.predictions
        assert len({row["prediction"] for row in shared_em.predictions}) > decoder, "completions tell prompts apart"
        prefixes.clear()
