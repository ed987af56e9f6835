"""Offline preference stages on a tiny model: each trains through run_stage, every option moves
the loss, precomputed reference == live reference, accumulation invariance, rm output reloads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medtune.config import stage_from_dict
from medtune.errors import MedtuneError
from medtune.recipes.run import run_stage
from tests.conftest import SAMPLE, write_jsonl

pytestmark = pytest.mark.slow

PREFERENCE = SAMPLE / "preference.jsonl"
QUESTIONS = ["头痛怎么办？", "发烧了怎么办？", "咳嗽要吃药吗？", "胸口痛怎么办？",
             "Can I skip my pills?", "I feel dizzy.", "失眠怎么办？", "血压高怎么办？"]


GOOD = ["请及时就医。", "请尽快去医院。", "建议咨询医生。", "请遵医嘱。"]
BAD = ["不用管它。", "过几天就好了。", "随便吃点药。", "忍一忍就行。"]


def separable(tmp_path):
    """Pairs where the chosen answer is always safe advice and the rejected one never is."""
    rows = [{"prompt": q, "chosen": GOOD[i % 4], "rejected": BAD[i % 4]} for i, q in enumerate(QUESTIONS)]
    return write_jsonl(tmp_path / "separable.jsonl", rows)


def config(tiny_dir, data_path, out, stage, **sections):
    raw = {"stage": stage, "model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": [str(data_path)], "max_length": 128},
           "adapter": {"method": "lora", "rank": 4, "alpha": 8},
           "train": {"epochs": 1, "learning_rate": 5e-3, "batch_size": 2, "logging_steps": 1, "save_steps": -1},
           "output": str(out)}
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    if raw["adapter"]["method"] == "full":
        raw["adapter"] = {"method": "full"}
    return stage_from_dict(raw, "test.yaml")


def losses(result):
    return [h["loss"] for h in result.log_history if "loss" in h]


def trained_weights(result):
    adapter = result.output / "adapter_model.safetensors"
    return load_file(str(adapter if adapter.is_file() else result.output / "model.safetensors"))


@pytest.mark.parametrize("stage,keys", [
    ("dpo", ("rewards_accuracies", "rewards_margins", "eval_rewards_accuracies")),
    ("orpo", ("rewards_accuracies", "nll_loss", "eval_nll_loss")),
    ("simpo", ("rewards_accuracies", "rewards_margins")),
    ("kto", ("rewards_chosen", "rewards_rejected", "kl", "eval_kl")),
])
def test_stage_trains_on_the_sample_file(tiny_dir, tmp_path, stage, keys):
    cfg = config(tiny_dir, PREFERENCE, tmp_path / stage, stage, data={"eval_split": 0.2}, train={"max_steps": 3})
    result = run_stage(cfg, quiet=True)
    assert result.metrics["global_steps"] == 3 and "eval_loss" in result.metrics
    assert all(k in result.metrics for k in keys), result.metrics
    lineage = json.loads((result.output / "lineage.json").read_text())
    assert lineage["stage"] == stage and lineage["tokenization"]["label_tokens"] > 0
    assert (result.output / "adapter_model.safetensors").is_file()


def test_kto_reads_unpaired_feedback(tiny_dir, tmp_path):
    rows = [{"prompt": q, "completion": "请及时就医。" if i % 2 else "不用管它。", "label": bool(i % 2)}
            for i, q in enumerate(QUESTIONS)]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    result = run_stage(config(tiny_dir, data, tmp_path / "out", "kto", train={"max_steps": 2}), quiet=True)
    assert result.metrics["global_steps"] == 2
    assert json.loads((result.output / "lineage.json").read_text())["tokenization"]["examples"] == 8


class RewardProbe(TrainerCallback):
    """Score fixed pairs with the trained reward model when training ends."""

    def __init__(self, batch):
        self.batch = batch

    def on_train_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.eval()
            self.scores = model(**self.batch).logits[:, 0]


def probe_batch(tiny_dir):
    from medtune.data.readers.files import read_file
    from medtune.data.tokenize.examples import TokenStats
    from medtune.models.load import load_tokenizer
    from medtune.recipes.preference import PairCollator, make_pair_examples

    tok = load_tokenizer(str(tiny_dir))
    cfg = config(tiny_dir, PREFERENCE, "unused", "rm")
    rows = make_pair_examples(cfg, tok, read_file(str(PREFERENCE)).records, TokenStats())
    batch = PairCollator(tok.pad_token_id)(rows)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_rm_reports_pairwise_accuracy_and_reloads_with_the_same_scores(tiny_dir, tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    probe = RewardProbe(probe_batch(tiny_dir))
    cfg = config(tiny_dir, PREFERENCE, tmp_path / "rm", "rm", adapter={"method": method},
                 train={"epochs": 4, "learning_rate": 1e-2}, data={"eval_split": 0.2})
    result = run_stage(cfg, quiet=True, callbacks=[probe])
    assert 0.0 <= result.metrics["eval_pairwise_accuracy"] <= 1.0
    assert result.metrics["train_pairwise_accuracy"] >= 0.75
    assert losses(result)[-1] < losses(result)[0]
    if method == "full":
        reloaded = AutoModelForSequenceClassification.from_pretrained(result.output)
    else:
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
        reloaded = PeftModel.from_pretrained(base, result.output)
    with torch.no_grad():
        scores = reloaded.eval()(**probe.batch).logits[:, 0]
    torch.testing.assert_close(scores, probe.scores, atol=1e-5, rtol=1e-5)
    assert len(set(scores.tolist())) > 1  # a real head, not a constant


def test_dpo_learns_a_separable_preference(tiny_dir, tmp_path):
    cfg = config(tiny_dir, separable(tmp_path), tmp_path / "out", "dpo", adapter={"method": "full"},
                 train={"epochs": 3, "learning_rate": 1e-2, "batch_size": 4})
    result = run_stage(cfg, quiet=True)
    accuracies = [h["rewards/accuracies"] for h in result.log_history if "rewards/accuracies" in h]
    assert losses(result)[0] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 1
    assert losses(result)[-1] < 0.4 and accuracies[0] == 0.0 and accuracies[-1] == 1.0
    assert result.metrics["rewards_margins"] > 0


@pytest.mark.parametrize("method", ["lora", "full"])
def test_precomputed_reference_equals_live(tiny_dir, tmp_path, method):
    runs = {}
    for reference in ("precomputed", "live"):
        cfg = config(tiny_dir, separable(tmp_path), tmp_path / reference, "dpo", adapter={"method": method},
                     preference={"reference": reference}, train={"max_steps": 4, "learning_rate": 1e-2})
        runs[reference] = run_stage(cfg, quiet=True)
    pre, live = (losses(runs[r]) for r in ("precomputed", "live"))
    assert pre == pytest.approx(live, abs=1e-6) and pre[-1] < pre[0] - 0.01  # the curve really moves
    a, b = trained_weights(runs["precomputed"]), trained_weights(runs["live"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_kto_precomputed_reference_equals_live(tiny_dir, tmp_path):
    curves = []
    for reference in ("precomputed", "live"):
        cfg = config(tiny_dir, separable(tmp_path), tmp_path / reference, "kto",
                     preference={"reference": reference}, train={"max_steps": 3, "learning_rate": 1e-2})
        curves.append(losses(run_stage(cfg, quiet=True)))
    assert curves[0] == pytest.approx(curves[1], abs=1e-6)


def test_dpo_grad_accumulation_1x4_equals_4x1(tiny_dir, tmp_path):
    results, curves = [], []
    for batch, accum in ((1, 4), (4, 1)):
        cfg = config(tiny_dir, separable(tmp_path), tmp_path / f"{batch}x{accum}", "dpo",
                     adapter={"method": "full"}, train={"batch_size": batch, "grad_accum": accum, "epochs": 1, "learning_rate": 1e-3})
        result = run_stage(cfg, quiet=True)
        results.append(trained_weights(result))
        curves.append(losses(result))
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)  # logged per-pair means, not sums over micro-batches
    changed = 0
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], atol=1e-5, rtol=1e-4)
        changed += not torch.equal(results[0][k], load_file(str(tiny_dir / "model.safetensors"))[k])
    assert changed > 0


OPTIONS = [  # (stage, changed preference options): each must move the loss of the first or second step
    ("dpo", {"loss": "ipo"}), ("dpo", {"loss": "hinge"}), ("dpo", {"label_smoothing": 0.3}),
    ("dpo", {"beta": 0.5}),
    ("orpo", {"beta": 1.0}), ("simpo", {"simpo_gamma": 1.5}), ("simpo", {"beta": 0.5}),
    ("kto", {"desirable_weight": 2.0}), ("kto", {"undesirable_weight": 0.3}), ("kto", {"beta": 0.5}),
]


@pytest.fixture(scope="module")
def default_curves(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("defaults")
    data = separable(tmp)
    runs = {s: config(tiny_dir, data, tmp / s, s, train={"max_steps": 2}) for s in ("dpo", "orpo", "simpo", "kto")}
    return {stage: losses(run_stage(cfg, quiet=True)) for stage, cfg in runs.items()}


@pytest.mark.parametrize("stage,options", OPTIONS, ids=[f"{s}-{next(iter(o))}" for s, o in OPTIONS])
def test_every_preference_option_changes_the_loss(tiny_dir, tmp_path, default_curves, stage, options):
    cfg = config(tiny_dir, separable(tmp_path), tmp_path / "out", stage, preference=options,
                 train={"max_steps": 2})
    curve = losses(run_stage(cfg, quiet=True))
    assert max(abs(a - b) for a, b in zip(curve, default_curves[stage])) > 1e-4, (curve, default_curves[stage])


def test_pair_without_rejected_fails_before_the_output_exists(tiny_dir, tmp_path):
    rows = [{"prompt": "头痛怎么办？", "chosen": "请及时就医。", "rejected": "不用管。"},
            {"prompt": "发烧怎么办？", "chosen": "多喝水。"}]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    with pytest.raises(MedtuneError) as err:
        run_stage(config(tiny_dir, data, out, "dpo", data={"format": "preference"}), quiet=True)
    assert f"{data}:2" in str(err.value) and "rejected" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize("sections,message", [
    ({"data": {"train_on_prompt": True}}, "train_on_prompt does not apply to stage rm"),
    ({"preference": {"beta": 0.5}}, "beta does not apply to stage rm"),
    ({"data": {"packing": "true"}}, "packing: true does not apply"),
])
def test_rm_refuses_options_it_would_ignore(tiny_dir, tmp_path, sections, message):
    out = tmp_path / "out"
    with pytest.raises(MedtuneError, match=message):  # refused by config validation
        run_stage(config(tiny_dir, PREFERENCE, out, "rm", **sections), quiet=True)
    assert not out.exists()


def test_only_the_answer_is_learned_in_a_multi_turn_prompt(tiny):
    from medtune.config.schema import DataConfig
    from medtune.data.tokenize.examples import IGNORE
    from medtune.recipes.preference import encode_answer

    _, tok = tiny
    prompt = [{"role": "user", "content": "头痛怎么办？"}, {"role": "assistant", "content": "多休息。"},
              {"role": "user", "content": "还是痛呢？"}]
    ids, labels, note = encode_answer(tok, prompt, [{"role": "assistant", "content": "请及时就医。"}],
                                      DataConfig(max_length=128))
    assert note == "" and tok.decode([t for t in labels if t != IGNORE]) == "请及时就医。<|im_end|>"
    _, short, note = encode_answer(tok, prompt, [{"role": "assistant", "content": "请及时就医。"}],
                                   DataConfig(max_length=len(ids) - 3))
    assert note == "truncated" and len(short) == len(ids) - 3
    _, _, note = encode_answer(tok, prompt, [{"role": "assistant", "content": "请及时就医。"}],
                               DataConfig(max_length=len(ids) - 3, overlength="skip"))
    assert note == "overlength"


@pytest.fixture
def sft_adapter(tiny_dir, tmp_path):
    """A LoRA adapter dir on the tiny model with non-zero weights (as an sft lora stage writes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", model.merge_and_unload()


def test_rm_starts_from_an_adapter_dir_with_the_merged_backbone(tiny_dir, sft_adapter):
    from medtune.config.stages import stage_recipe

    adapter, merged = sft_adapter
    cfg = config(tiny_dir, PREFERENCE, "unused", "rm", model={"path": str(adapter)})
    model = stage_recipe("rm").load_model(cfg, str(adapter))
    assert model.config.num_labels == 1 and type(model).__name__ == "LlamaForSequenceClassification"
    ours, theirs = model.model.state_dict(), merged.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_live_reference_refuses_an_incremental_adapter(tiny_dir, tmp_path, sft_adapter):
    adapter, _ = sft_adapter
    cfg = config(tiny_dir, separable(tmp_path), tmp_path / "out", "dpo", model={"path": str(adapter)},
                 adapter={"incremental": True}, preference={"reference": "live"})
    with pytest.raises(MedtuneError, match="use reference: precomputed"):
        run_stage(cfg, quiet=True)
