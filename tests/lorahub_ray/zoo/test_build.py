from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from lorahub_ray.errors import InputError
from lorahub_ray.evaluate import exact_match, generate, load_model, normalize
import lorahub_ray.zoo.build as build_module
from lorahub_ray.cli import main as cli_main
from lorahub_ray.zoo.build import MODULE_FIELDS, build_zoo, load_manifest, load_module, train_specialist
from lorahub_ray.zoo.check import check_examples, check_specialists
from lorahub_ray.zoo.models import build_model, make_tokenizer
from lorahub_ray.zoo.tasks import dev_examples, get_task, splits
from actors.examples import tokenize_examples
from lorahub_ray.zoo.train import train_lora

pytestmark = pytest.mark.slow

UPSTREAM = ["max_digit", "second_letter", "lookup"]
HELDOUT = ["biggest_digit", "digit_3"]
FAST = {"base_steps": 8, "module_steps": 3, "n_train": 32, "n_test": 8}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("zoo")
    manifest = build_zoo(out, size="tiny", kinds=("t5", "llama"), tasks=UPSTREAM + HELDOUT, overrides=FAST,
                         progress=False)
    return out, manifest


def test_manifest_format(zoo):
    out, manifest = zoo
    on_disk = load_manifest(out)
    assert {k: v for k, v in manifest.items() if k != "built"} == on_disk
    assert set(on_disk) == {"size", "seed", "bases", "modules", "variants", "heldout"}
    assert on_disk["variants"] == {"t5": [], "llama": []}
    assert on_disk["size"] == "tiny" and on_disk["seed"] == 0
    assert on_disk["bases"] == {"t5": "t5/base", "llama": "llama/base"}
    for kind in ("t5", "llama"):
        entries = on_disk["modules"][kind]
        assert [e["task"] for e in entries] == UPSTREAM
        base, tokenizer = load_model(str(out / kind / "base"), device="cpu")
        for e in entries:
            assert tuple(e) == MODULE_FIELDS
            assert e["path"] == f"{kind}/modules/{e['task']}" and e["train_size"] == 32
            test = splits(get_task(e["task"]), 0, 32, 5, 8)["test"]  # the accuracies, recomputed on the test split
            assert e["base_accuracy_on_task"] == exact_match(base, tokenizer, test, max_new_tokens=16).accuracy / 100
            module = exact_match(load_module(out, kind, e["task"]), tokenizer, test, max_new_tokens=16)
            assert e["module_accuracy_on_task"] == module.accuracy / 100
            assert e["final_loss"] > 0 and e["dev_size"] == 16
            base_dev, module_dev = e["base_accuracy_on_dev"], e["module_accuracy_on_dev"]
            beats = module_dev > base_dev or base_dev == 1.0
            # 3 steps, doubled (at most twice) only while the module does not beat the base on the dev examples
            assert e["steps"] == 12 or (beats and e["steps"] in (3, 6)), e
    assert [h["task"] for h in on_disk["heldout"]] == HELDOUT
    for h in on_disk["heldout"]:
        fewshot = [json.loads(line) for line in (out / h["fewshot"]).read_text().splitlines()]
        test = [json.loads(line) for line in (out / h["test"]).read_text().splitlines()]
        assert len(fewshot) == 5 and len(test) == 8
        assert fewshot == splits(get_task(h["task"]), 0, 32, 5, 8)["fewshot"]
        assert not {e["input"] for e in fewshot} & {e["input"] for e in test}
    assert not list(out.rglob(".tmp-*")), "temporary artifacts left behind"


def test_base_models_load_like_hub_checkpoints(zoo):
    out, _ = zoo
    t5 = AutoModelForSeq2SeqLM.from_pretrained(out / "t5" / "base")
    llama = AutoModelForCausalLM.from_pretrained(out / "llama" / "base")
    assert t5.config.is_encoder_decoder and t5.config.decoder_start_token_id == 0
    assert not llama.config.is_encoder_decoder
    assert (llama.config.pad_token_id, llama.config.eos_token_id, llama.config.bos_token_id) == (0, 1, None)
    tok = AutoTokenizer.from_pretrained(out / "t5" / "base")
    assert (len(tok), tok.pad_token_id, tok.eos_token_id) == (384, 0, 1)
    assert tok("ab")["input_ids"] == [100, 101, 1]


@pytest.mark.parametrize(("kind", "targets"), [("t5", {"q", "v"}), ("llama", {"q_proj", "v_proj"})])
def test_modules_load_with_peft_and_change_the_model(zoo, kind, targets):
    out, _ = zoo
    cls = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    base = cls.from_pretrained(out / kind / "base").eval()
    tok = AutoTokenizer.from_pretrained(out / kind / "base")
    rows = tokenize_examples(tok, splits(get_task("lookup"), 0, 0, 0, 4)["test"], base.config.is_encoder_decoder)
    batch = {"input_ids": rows.input_ids, "attention_mask": rows.attention_mask, "labels": rows.labels}
    with torch.no_grad():
        before = base(**batch).logits
    module_dir = out / kind / "modules" / "lookup"
    config = json.loads((module_dir / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == targets
    assert config["lora_alpha"] == 2 * config["r"] and config["lora_dropout"] == 0.0
    model = PeftModel.from_pretrained(base, module_dir).eval()
    with torch.no_grad():
        after = model(**batch).logits
    assert not torch.allclose(before, after), "a trained module must change the base model's output"


def test_dev_examples_are_unseen_and_kept_out_of_the_check(zoo):
    task = get_task("lookup")
    split = splits(task, 0, 32, 5, 8)
    dev = dev_examples(task, 0, split, 16)
    assert len(dev) == 16 and dev == dev_examples(task, 0, split, 16)
    assert not {e["input"] for e in dev} & {e["input"] for part in split.values() for e in part}
    fresh = check_examples(task, 0, 32, 5, 8, 40, n_dev=16)
    assert not {e["input"] for e in fresh} & {e["input"] for e in dev}
    out, _ = zoo
    base, tokenizer = load_model(str(out / "t5/base"))
    cached = json.loads((out / "t5/base_eval.json").read_text())["accuracy"]["dev/lookup"]
    assert cached == exact_match(base, tokenizer, dev, max_new_tokens=16).accuracy / 100


def test_train_specialist_doubles_the_steps_while_the_module_does_not_beat_the_base():
    def run(dev_by_steps: dict[int, float], base_dev: float | None, doublings: int = 2):
        trained = []

        def train(steps):
            trained.append(steps)
            return f"model@{steps}", 1.0 / steps

        _, loss, steps, dev = train_specialist(train, lambda m: dev_by_steps[int(m.split("@")[1])], base_dev, 150,
                                               doublings)
        assert loss == 1.0 / steps
        return trained, dev

    assert run({150: 0.5}, 0.4) == ([150], 0.5)
    assert run({150: 0.4, 300: 0.41}, 0.4) == ([150, 300], 0.41), "a tie is not a specialist"
    assert run({150: 0.3, 300: 0.35, 600: 0.38}, 0.4) == ([150, 300, 600], 0.38), "at most `doublings` retrains"
    assert run({150: 0.3, 300: 0.35}, 0.4, doublings=1) == ([150, 300], 0.35)
    assert run({150: 1.0}, 1.0) == ([150], 1.0), "nothing to beat when the base is perfect"
    assert run({}, None) == ([150], None), "no dev examples: trained once, never scored"


def test_second_build_is_cached(zoo):
    out, manifest = zoo
    assert "t5/base" in manifest["built"] and "llama/modules/lookup" in manifest["built"]
    watched = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"]
    mtimes = {p: p.stat().st_mtime_ns for p in watched}
    again = build_zoo(out, size="tiny", kinds=("t5", "llama"), tasks=UPSTREAM + HELDOUT, overrides=FAST,
                      progress=False)
    assert again["built"] == []
    assert {p: p.stat().st_mtime_ns for p in watched} == mtimes
    assert {k: v for k, v in again.items() if k != "built"} == load_manifest(out)


def test_changed_module_budget_rebuilds_modules_only(tmp_path):
    kwargs = dict(size="tiny", kinds=("t5",), tasks=["max_digit"], progress=False)
    first = build_zoo(tmp_path, overrides=FAST, **kwargs)
    assert sorted(first["built"]) == ["t5/base", "t5/modules/max_digit"]
    weights = load_file(tmp_path / "t5/modules/max_digit/adapter_model.safetensors")
    second = build_zoo(tmp_path, overrides={**FAST, "module_steps": 4}, **kwargs)
    assert second["built"] == ["t5/modules/max_digit"]
    changed = load_file(tmp_path / "t5/modules/max_digit/adapter_model.safetensors")
    assert any(not torch.equal(weights[k], changed[k]) for k in weights)


def test_llama_base_steps_rebuild_the_llama_side_only(tmp_path):
    kwargs = dict(size="tiny", kinds=("t5", "llama"), tasks=["max_digit"], progress=False)
    build_zoo(tmp_path, overrides=FAST, **kwargs)
    again = build_zoo(tmp_path, overrides={**FAST, "llama_base_steps": 4}, **kwargs)
    assert sorted(again["built"]) == ["llama/base", "llama/modules/max_digit"]
    meta = json.loads((tmp_path / "llama/base/zoo_meta.json").read_text())
    assert meta["config"]["llama_base_steps"] == 4 and meta["config"]["base_steps"] == 8


def test_changed_task_data_rebuilds_the_base(tmp_path, monkeypatch):
    kwargs = dict(size="tiny", kinds=("t5",), tasks=["max_digit"], overrides=FAST, progress=False)
    build_zoo(tmp_path, **kwargs)
    real_splits = build_module.splits

    def shorter_train(*args, **kw):
        split = real_splits(*args, **kw)
        return {**split, "train": split["train"][1:]}

    monkeypatch.setattr(build_module, "splits", shorter_train)
    assert sorted(build_zoo(tmp_path, **kwargs)["built"]) == ["t5/base", "t5/modules/max_digit"]


def test_variants_add_modules_and_reuse_the_default_ones(tmp_path):
    kwargs = dict(size="tiny", kinds=("t5",), tasks=["max_digit", "biggest_digit"], progress=False)
    build_zoo(tmp_path, overrides=FAST, **kwargs)
    large = build_zoo(tmp_path, overrides={**FAST, "variants": 2, "variant_steps": 2}, **kwargs)
    assert sorted(large["built"]) == ["t5/modules/max_digit-v1", "t5/modules/max_digit-v2"]
    assert [e["path"] for e in large["variants"]["t5"]] == ["t5/modules/max_digit-v1", "t5/modules/max_digit-v2"]
    assert all(e["task"] == "max_digit" and e["train_size"] == 32 and e["module_accuracy_on_task"] is None
               for e in large["variants"]["t5"])
    weights = [load_file(tmp_path / p / "adapter_model.safetensors")
               for p in ("t5/modules/max_digit", "t5/modules/max_digit-v1", "t5/modules/max_digit-v2")]
    assert all(any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(weights, weights[1:]))
    configs = [json.loads((tmp_path / "t5/modules" / name / "adapter_config.json").read_text())
               for name in ("max_digit", "max_digit-v1")]
    assert configs[0] == configs[1] and configs[0]["base_model_name_or_path"] is None, "one pool, one base entry"
    held = splits(get_task("max_digit"), 0, 32, 5, 8)
    unseen = {e["input"] for e in held["test"] + held["fewshot"]}
    samples = []
    for name in ("max_digit", "max_digit-v1", "max_digit-v2"):
        lines = (tmp_path / "t5/modules" / name / "train_sample.jsonl").read_text().splitlines()
        samples.append([json.loads(line) for line in lines])
        assert len(lines) == 20 and not {e["input"] for e in samples[-1]} & unseen
    assert samples[0] == held["train"][:20] and samples[1] != samples[0] and samples[2] != samples[1]


def test_build_is_deterministic(tmp_path, zoo):
    out, _ = zoo
    other = build_zoo(tmp_path, size="tiny", kinds=("t5",), tasks=UPSTREAM + HELDOUT, overrides=FAST, progress=False)
    for name in UPSTREAM:
        a = load_file(out / "t5/modules" / name / "adapter_model.safetensors")
        b = load_file(tmp_path / "t5/modules" / name / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert other["modules"]["t5"] == load_manifest(out)["modules"]["t5"]


def test_training_tokenises_examples_for_both_kinds():
    tok = make_tokenizer()
    ex = [{"input": "ab", "output": "c"}]
    t5 = tokenize_examples(tok, ex, encoder_decoder=True)
    assert t5.input_ids.tolist() == [[100, 101, 1]] and t5.labels.tolist() == [[102, 1]]
    dec = tokenize_examples(tok, ex + [{"input": "a", "output": "cd"}], encoder_decoder=False)
    assert dec.input_ids.tolist() == [[100, 101, 102, 1], [100, 102, 103, 1]]
    assert dec.labels.tolist() == [[-100, -100, 102, 1], [-100, 102, 103, 1]]
    two = tokenize_examples(tok, [{"input": "abc", "output": "d"}, {"input": "a", "output": "de"}], encoder_decoder=True)
    assert two.labels.tolist() == [[103, 1, -100], [103, 104, 1]]
    assert two.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_modules_share_their_initialisation():
    tok = make_tokenizer()
    base = build_model("t5", "tiny")
    data = splits(get_task("max_digit"), 0, 8, 0, 0)["train"]
    other = splits(get_task("lookup"), 0, 8, 0, 0)["train"]
    a, _ = train_lora(base, tok, data, ["q", "v"], rank=4, steps=0, progress=False)
    b, _ = train_lora(base, tok, other, ["q", "v"], rank=4, steps=0, progress=False, seed=5)
    sa = {k: v for k, v in a.state_dict().items() if "lora_A" in k}
    sb = {k: v for k, v in b.state_dict().items() if "lora_A" in k}
    assert sa and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any("lora" in k for k in base.state_dict()), "training a module must leave the base untouched"


def test_exact_match_normalisation_and_generation():
    assert normalize(" True.\n") == "true"
    tok = make_tokenizer()
    for kind in ("t5", "llama"):
        model = build_model(kind, "tiny")
        inputs = ["Largest digit: 3 1\nAnswer:", "Evaluate: True\nAnswer:"]
        preds = generate(model, tok, inputs, max_new_tokens=4)
        assert preds == [generate(model, tok, [s], max_new_tokens=4)[0] for s in inputs]
        examples = [{"input": s, "output": p + "."} for s, p in zip(inputs, preds)]
        assert exact_match(model, tok, examples, max_new_tokens=4).accuracy == 100.0
        examples[0]["output"] = "not " + preds[0]
        assert exact_match(model, tok, examples, max_new_tokens=4).accuracy == 50.0
        with pytest.raises(InputError, match="at least one"):
            exact_match(model, tok, [], max_new_tokens=4)


def test_specialist_check_scores_base_and_module_on_fresh_examples(zoo):
    out, _ = zoo
    result = check_specialists(out, "llama", examples=12, progress=False)
    assert [row["task"] for row in result["tasks"]] == UPSTREAM
    assert sorted(result["beat"] + result["tie"] + result["below"]) == sorted(UPSTREAM)
    fresh = check_examples(get_task("lookup"), 0, 32, 5, 8, 12)
    held = splits(get_task("lookup"), 0, 32, 5, 8)
    assert len(fresh) == 12 and fresh[:8] == held["test"]
    assert not {e["input"] for e in fresh[8:]} & {e["input"] for s in held.values() for e in s}
    few_inputs = check_examples(get_task("majority_bit"), 0, 1000, 5, 100, 1000)  # its splits use up its inputs
    assert 100 <= len(few_inputs) < 1000 and len({e["input"] for e in few_inputs}) == len(few_inputs)
    module, tokenizer = load_model(str(out / "llama/base"), out / "llama/modules/lookup")
    by_hand = exact_match(module, tokenizer, fresh, max_new_tokens=16).accuracy / 100
    row = result["tasks"][UPSTREAM.index("lookup")]
    assert row["examples"] == 12 and row["module"] == by_hand


def test_zoo_check_command_prints_and_writes_the_figures(zoo, tmp_path, capsys):
    out, _ = zoo
    assert cli_main(["zoo", "check", "--zoo", str(out), "--examples", "4", "--output", str(tmp_path / "s.json")]) == 0
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["t5"]["examples"] == 4 and len(written["t5"]["tasks"]) == len(UPSTREAM)
    assert "modules beat the base" in capsys.readouterr().out
    assert cli_main(["zoo", "check", "--zoo", str(tmp_path), "--examples", "4"]) == 2
    assert "is not a zoo (no manifest.json)" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text(json.dumps({"bases": {"t5": "t5/base"}, "modules": {"t5": []}, "seed": 0}))
    assert cli_main(["zoo", "check", "--zoo", str(tmp_path)]) == 2
    assert "is not a base model built by `lorahub-ray zoo build`" in capsys.readouterr().err
