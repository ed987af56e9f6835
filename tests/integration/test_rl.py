"""Online RL (grpo, rloo): reward functions with golden values, reward model checks, tiny runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from medtune.config import stage_from_dict
from medtune.data.tokenize.examples import TokenStats, apply_template
from medtune.errors import MedtuneError
from medtune.recipes import rewards
from medtune.recipes.rl import check_reward_model, load_reward_model, make_examples
from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, write_jsonl

RECORDED = []  # (prompts, completions, completion_ids) of every call of record_completions
NOT_CALLABLE = 3


def record_completions(prompts, completions, completion_ids, **kwargs):
    """Reward function used by the runs below: records its inputs, scores by completion length."""
    RECORDED.append((prompts, completions, completion_ids, kwargs["reference"]))
    return [float(len(ids)) / 8 + len(rewards.completion_text(c)) / 100 for c, ids in zip(completions, completion_ids)]


RECORDER = "tests.integration.test_rl:record_completions"


# ---- reward functions: golden values -------------------------------------------------------------

def test_reference_overlap_golden_values():
    score = rewards.reference_overlap
    assert score([[]], ["头痛"], reference=["头痛头晕。"]) == [pytest.approx(2 / 3)]
    assert score([[]], [[{"role": "assistant", "content": "头痛"}]], reference=["头痛头晕"]) == [pytest.approx(2 / 3)]
    assert score([[]] * 2, ["头痛头晕", "发热"], reference=["头痛头晕。"] * 2) == [1.0, 0.0]
    # Latin script counts words, case and punctuation ignored: P = 4/4, R = 4/7
    english = score([[]], ["Rest and drink fluids"], reference=["rest, drink fluids, and see a doctor"])
    assert english == [pytest.approx(8 / 11)]
    assert score([[]], [""], reference=["头痛"]) == [0.0]


def test_length_golden_values():
    ref = ["头痛头晕"]  # 4 units
    got = [rewards.length([[]], [c], reference=ref)[0] for c in ("头痛", "头痛头晕", "头痛头晕发", "头痛头晕头痛头晕头")]
    assert got == [-0.5, 0.0, -0.25, -1.0]
    # an answer cut off at max_new_tokens never ended: -1 however close its text is
    assert rewards.length([[]], ["头痛头晕"], completion_ids=[[1] * 8], max_new_tokens=8, reference=ref) == [-1.0]
    assert rewards.length([[]], ["头痛头晕"], completion_ids=[[1] * 7], max_new_tokens=8, reference=ref) == [0.0]


def test_no_repetition_golden_values():
    texts = ["头痛头痛头痛头痛", "高血压的典型症状是头痛", "头痛", "the cat sat on the mat", "好。。。。。"]
    # 头痛头痛头痛头痛: 5 four-grams, 2 distinct; 好。。。。。: 3 four-grams, 2 distinct (punctuation kept)
    assert rewards.no_repetition([[]] * 5, texts) == [pytest.approx(-0.6), 0.0, 0.0, 0.0, pytest.approx(-1 / 3)]


MC_PROMPT = [{"role": "user", "content": "以下是一道单项选择题。\n\n哪种药抗血小板？\nA. 阿司匹林\nB. 青霉素\n(C) 地塞米松"}]
MC_MULTI = [{"role": "user", "content": "Which are antibiotics?\n(A) penicillin\n(B) aspirin\n(C) amoxicillin"
                                        "\nAnswer with the letters."}]


def test_choice_match_reads_the_option_after_any_trace():
    match = rewards.choice_match
    replies = ["答案是A。", "<think>\nB? 不，A 抑制血小板\n</think>\n\nA", "B", "<think>A", "",
               [{"role": "assistant", "content": "(A) 阿司匹林"}], "答案是C。"]
    assert match([MC_PROMPT] * 7, replies, reference=["A"] * 7) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # the reference may be a sentence too; a multi-answer question needs every letter
    assert match([MC_PROMPT], ["A"], reference=["答案是A。"]) == [1.0]
    assert match([MC_MULTI] * 3, ["The answer is AC.", "A", "ABC"], reference=["AC"] * 3) == [1.0, 0.0, 0.0]
    with pytest.raises(MedtuneError, match=r"reward choice_match: the prompt has no option lines"):
        match([[{"role": "user", "content": "头痛怎么办？"}]], ["A"], reference=["A"])
    with pytest.raises(MedtuneError, match=r"reward choice_match: reference 'E' names none of the options A, B, C"):
        match([MC_PROMPT], ["A"], reference=["E"])


def test_answer_match_normalised_exact_or_contains():
    replies = ["头痛", "<think>头晕？</think>\n典型症状是头痛。", "头晕", "<think>头痛", "HEADACHE!", "a headache"]
    refs = ["头痛。", "头痛", "头痛", "头痛", "Headache", "headache"]
    assert rewards.answer_match([[]] * 6, replies, reference=refs) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert rewards.answer_match([[]], ["anything"], reference=["。"]) == [0.0]  # nothing left to match


def test_find_option_lines_in_running_text():
    from medtune.data.readers.choice import find_option_lines

    assert find_option_lines(MC_PROMPT[0]["content"]) == {"A": "阿司匹林", "B": "青霉素", "C": "地塞米松"}
    assert find_option_lines("A. only one\nthen text") == {}
    assert find_option_lines("A. x\nB. y\ntext\nA. p\nB. q\nC. r\nAnswer:") == {"A": "p", "B": "q", "C": "r"}
    assert find_option_lines("A. x\nC. y") == {}


def nan_reward(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)


def raising_reward(prompts, completions, **kwargs):
    raise ZeroDivisionError("division by zero\nsecond line")


def test_checked_reward_refuses_raise_nan_and_wrong_count():
    check = rewards.checked_reward
    assert check(rewards.answer_match, "answer_match")([[]], ["a"], reference=["a"]) == [1.0]
    assert check(rewards.answer_match, "answer_match").__name__ == "answer_match"  # TRL logs it by name
    assert check(lambda prompts, completions, **k: [None, 1], "x")([[]] * 2, ["a", "b"]) == [None, 1]
    cases = [(nan_reward, "pkg:nan_reward", r"^reward pkg:nan_reward returned nan for completion 0; step refused$"),
             (raising_reward, "pkg:raising_reward",
              r"^reward pkg:raising_reward raised ZeroDivisionError: division by zero; step refused$"),
             (lambda prompts, completions, **k: [1.0], "pkg:short", r"^reward pkg:short returned 1 scores for 2"),
             (lambda prompts, completions, **k: ["1", "2"], "pkg:text", r"returned '1' for completion 0, not a number"),
             (lambda prompts, completions, **k: [float("inf")] * 2, "pkg:inf", "returned inf for completion 0")]
    for fn, name, message in cases:
        with pytest.raises(MedtuneError, match=message):
            check(fn, name)([[]] * 2, ["a", "b"])


def test_reward_function_lookup_and_errors():
    assert rewards.reward_function("no_repetition") is rewards.no_repetition
    assert rewards.reward_function(RECORDER) is record_completions
    bad = {"overlap_f1": "is not a built-in reward", "nosuch_pkg_xyz.mod:f": "cannot import 'nosuch_pkg_xyz.mod'",
           "tests.integration.test_rl:nope": "module 'tests.integration.test_rl' has no 'nope'",
           "tests.integration.test_rl:NOT_CALLABLE": "is a int, not a function"}
    for spec, message in bad.items():
        with pytest.raises(MedtuneError, match=message):
            rewards.reward_function(spec)


# ---- examples ------------------------------------------------------------------------------------

def test_make_examples_prompt_reference_and_skip(tiny):
    _, tok = tiny
    cfg = stage_from_dict({"stage": "grpo", "model": {"path": "x/y"}, "data": {"train": ["a"], "max_length": 100},
                           "rl": {"reward_functions": ["length"]}, "output": "o"}, "t.yaml")
    pref = {"prompt": [{"role": "user", "content": "感冒挂什么科？"}],
            "chosen": [{"role": "assistant", "content": "呼吸内科。"}],
            "rejected": [{"role": "assistant", "content": "骨科。"}]}
    long = {"messages": [{"role": "user", "content": "头痛" * 60}, {"role": "assistant", "content": "休息。"}]}
    stats = TokenStats()
    rows = make_examples(cfg, tok, [{"messages": CONVERSATIONS[1]}, pref, long], stats)
    assert [r["prompt"] for r in rows] == [CONVERSATIONS[1][:4], pref["prompt"]]
    assert [r["reference"] for r in rows] == ["应避免高糖饮食。", "呼吸内科。"]
    n = len(apply_template(tok, CONVERSATIONS[1][:4], add_generation_prompt=True)["input_ids"])
    assert rows[0]["length"] == n and n < 100
    assert stats.skipped == {"prompt longer than data.max_length": 1} and stats.examples == 2


# ---- reward models -------------------------------------------------------------------------------

def save_reward_model(tiny_dir, out, labels=1):
    """Write a tiny random one-score classifier with the tiny tokenizer (as stage rm would)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    config = AutoConfig.from_pretrained(tiny_dir, num_labels=labels, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reward_dir(tiny_dir, tmp_path_factory):
    return save_reward_model(tiny_dir, tmp_path_factory.mktemp("rm") / "rm")


def test_check_reward_model_refuses_what_is_not_one(tiny_dir, reward_dir, tmp_path):
    check_reward_model(str(reward_dir))
    with pytest.raises(MedtuneError, match=r"is not a reward model \(architectures: LlamaForCausalLM\); "
                                           "train one with stage: rm"):
        check_reward_model(str(tiny_dir))
    with pytest.raises(MedtuneError, match="not found"):
        check_reward_model(str(tmp_path / "missing"))
    with pytest.raises(MedtuneError, match="classifier with 2 labels"):
        check_reward_model(str(save_reward_model(tiny_dir, tmp_path / "two", labels=2)))
    untemplated = Path(shutil.copytree(reward_dir, tmp_path / "no-template"))
    (untemplated / "chat_template.jinja").unlink()
    with pytest.raises(MedtuneError, match="has no chat template"):
        check_reward_model(str(untemplated))


@pytest.mark.parametrize("base", ["model", "adapter"])
def test_reward_adapter_dir_is_merged_into_a_classifier_on_its_base(tiny_dir, tmp_path, base):
    """Stage rm with LoRA writes a SEQ_CLS adapter over model.path, itself a model or an adapter dir."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    lm_lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                             LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM",
                                        init_lora_weights=False))
    lm_lora.save_pretrained(tmp_path / "lm-lora")

    def classifier(on):  # what the rm stage trained on: the causal LM's backbone, a score head
        model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
        if on == "adapter":
            lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "lm-lora")
            model.model.load_state_dict(lm.merge_and_unload().model.state_dict())
        return model

    rm_dir = tmp_path / "rm-lora"
    get_peft_model(classifier(base), LoraConfig(r=4, target_modules="all-linear", task_type="SEQ_CLS",
                                                init_lora_weights=False)).save_pretrained(rm_dir)
    config = json.loads((rm_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_dir if base == "model" else tmp_path / "lm-lora")
    (rm_dir / "adapter_config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(rm_dir)

    model, tok = load_reward_model(str(rm_dir))
    ids = tok.apply_chat_template(CONVERSATIONS[0], return_tensors="pt", return_dict=True)["input_ids"]
    expected = PeftModel.from_pretrained(classifier(base), rm_dir).eval()(input_ids=ids).logits
    assert not isinstance(model, PeftModel) and model(input_ids=ids).logits.shape == (1, 1)
    assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
    other = PeftModel.from_pretrained(classifier("adapter" if base == "model" else "model"), rm_dir).eval()
    assert not torch.allclose(other(input_ids=ids).logits, expected, atol=1e-4)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path / "lm-lora")
    with pytest.raises(MedtuneError, match=r"is not a reward model \(an adapter with task_type CAUSAL_LM\)"):
        check_reward_model(str(tmp_path / "lm-lora"))


# ---- tiny runs -----------------------------------------------------------------------------------

def rl_config(tiny_dir, tmp_path, stage, out="out", **sections):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS])
    raw = {"stage": stage, "model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": [str(data)], "max_length": 128},
           "adapter": {"method": "lora", "rank": 4, "alpha": 8},
           "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": -1},
           "rl": {"num_generations": 2, "max_new_tokens": 8}, "output": str(tmp_path / out)}
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    if raw["adapter"]["method"] != "lora":
        raw["adapter"] = {"method": raw["adapter"]["method"]}
    return stage_from_dict(raw, "test.yaml")


class Probe(TrainerCallback):
    """Trainable parameters at start and end, and the trained model's logits on a fixed prompt."""

    ids = torch.tensor([[5, 17, 40, 99, 3, 250]])

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.changed = [n for n, p in model.named_parameters() if n in self.before
                        and not torch.equal(p.detach(), self.before[n])]
        with torch.no_grad():
            self.logits = model(input_ids=self.ids).logits


def logged(result, key):
    return [h[key] for h in result.log_history if h.get(key) is not None]


def lineage(result):
    return json.loads((result.output / "lineage.json").read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("stage,generations,max_new", [("grpo", 2, 8), ("rloo", 4, 4)])
def test_reward_functions_only(tiny_dir, tmp_path, stage, generations, max_new):
    from medtune.models.load import load_model

    RECORDED.clear()
    cfg = rl_config(tiny_dir, tmp_path, stage, train={"batch_size": 4},
                    rl={"num_generations": generations, "max_new_tokens": max_new,
                        "reward_functions": [RECORDER, "reference_overlap"]})
    probe = Probe()
    result = run_stage(cfg, quiet=True, callbacks=[probe])
    assert len(RECORDED) == 2  # one generation batch per step
    answers = {tuple(map(str, c[:-1])): c[-1]["content"] for c in CONVERSATIONS}
    for prompts, _completions, ids, references in RECORDED:
        assert len(prompts) == 4
        for i in range(0, 4, generations):  # groups of num_generations completions of one prompt
            assert all(p == prompts[i] for p in prompts[i:i + generations])
        assert {tuple(map(str, p)) for p in prompts} <= set(answers)
        assert references == [answers[tuple(map(str, p))] for p in prompts]
        assert max(len(x) for x in ids) == max_new  # a random model rarely stops early: the cap binds
    assert min(logged(result, "entropy")) > 6.0  # temperature 1 on a random 600-token model: ~ln 600
    assert not logged(result, "kl")  # beta 0: no reference model
    metrics = lineage(result)["metrics"]
    assert set(metrics["rewards"]) == {"record_completions", "reference_overlap"}
    assert metrics["reward_start"] == pytest.approx(logged(result, "reward")[0], abs=1e-6)
    assert metrics["reward_end"] == pytest.approx(logged(result, "reward")[-1], abs=1e-6)
    assert probe.changed and all("lora_" in n for n in probe.changed)
    assert torch.allclose(load_model(str(result.output), "float32", "cpu")(input_ids=Probe.ids).logits,
                          probe.logits, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_reward_model_only_full_with_kl(tiny_dir, reward_dir, tmp_path, stage):
    from transformers import AutoModelForCausalLM

    cfg = rl_config(tiny_dir, tmp_path, stage, adapter={"method": "full"}, reward_model=str(reward_dir),
                    train={"learning_rate": 1e-3}, rl={"beta": 0.1, "temperature": 0.01})
    probe = Probe()
    result = run_stage(cfg, quiet=True, callbacks=[probe])
    assert logged(result, "kl") and logged(result, "rewards/rm/mean")
    assert max(logged(result, "entropy")) < 2.0  # temperature 0.01 sharpens the sampling distribution
    metrics = lineage(result)["metrics"]
    assert set(metrics["rewards"]) == {"rm"} and "kl_end" in metrics
    assert probe.changed
    reloaded = AutoModelForCausalLM.from_pretrained(result.output)
    assert torch.allclose(reloaded(input_ids=Probe.ids).logits, probe.logits, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_reward_model_and_functions_are_weighted(tiny_dir, reward_dir, tmp_path, stage):
    weights = [2.0, 0.5, 3.0]
    evals = stage == "grpo"  # one eval run is enough: the loop is TRL's, shared by both
    cfg = rl_config(tiny_dir, tmp_path, stage, reward_model=str(reward_dir), data={"eval_split": 0.25 * evals},
                    rl={"reward_functions": [RECORDER, "no_repetition"], "reward_weights": weights, "beta": 0.1})
    result = run_stage(cfg, quiet=True)
    parts = ["rewards/rm/mean", "rewards/record_completions/mean", "rewards/no_repetition/mean"]
    for h in [h for h in result.log_history if "reward" in h]:
        assert h["reward"] == pytest.approx(sum(w * h[p] for w, p in zip(weights, parts)), abs=1e-5)
    assert logged(result, "kl")
    assert not (result.output / "ref").exists()  # TRL's frozen reference adapter is not an output
    assert set(json.loads((result.output / "adapter_config.json").read_text())) >= {"r", "task_type"}
    metrics = lineage(result)["metrics"]
    assert ("eval_loss" in metrics) == evals and set(metrics["rewards"]) == {"rm", "record_completions", "no_repetition"}


@pytest.mark.slow
def test_grpo_answer_match_dr_grpo_two_steps(tiny_dir, tmp_path):
    """A GRPO run on the built-in verifier with a non-default loss: TRL gets the loss, logs the reward."""
    seen = []

    class Args(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append(args.loss_type)

    cfg = rl_config(tiny_dir, tmp_path, "grpo", rl={"reward_functions": ["answer_match"], "loss_type": "dr_grpo"})
    result = run_stage(cfg, quiet=True, callbacks=[Args()])
    assert seen == ["dr_grpo"] and result.log_history[-1]["step"] == 2
    rewards_logged = logged(result, "rewards/answer_match/mean")
    assert len(rewards_logged) == 2 and all(0.0 <= r <= 1.0 for r in rewards_logged)
    assert set(lineage(result)["metrics"]["rewards"]) == {"answer_match"}


@pytest.mark.slow
def test_nan_reward_refuses_the_step_naming_the_function(tiny_dir, tmp_path):
    cfg = rl_config(tiny_dir, tmp_path, "grpo", rl={"reward_functions": ["tests.integration.test_rl:nan_reward"]})
    with pytest.raises(MedtuneError, match=r"^reward tests.integration.test_rl:nan_reward returned nan for "
                                           r"completion 0; step refused$"):
        run_stage(cfg, quiet=True)


def test_loss_type_is_grpo_only(tiny_dir, tmp_path):
    with pytest.raises(MedtuneError, match=r"rl.loss_type applies to grpo only"):
        rl_config(tiny_dir, tmp_path, "rloo", rl={"reward_functions": ["length"], "loss_type": "grpo"})
    with pytest.raises(MedtuneError, match=r"rl.loss_type.*cispo"):
        rl_config(tiny_dir, tmp_path, "grpo", rl={"reward_functions": ["length"], "loss_type": "cispo"})
    assert rl_config(tiny_dir, tmp_path, "grpo", rl={"reward_functions": ["length"], "loss_type": "bnpo"}).rl.loss_type == "bnpo"


# ---- bad input: refused before the output dir is created -----------------------------------------

@pytest.mark.parametrize("change,message", [
    ({"reward_model": "CAUSAL"}, r"is not a reward model \(architectures: LlamaForCausalLM\)"),
    ({"reward_model": "MISSING"}, "not found"),
    ({"rl": {"reward_functions": ["tests.integration.test_rl:nope"]}}, "has no 'nope'"),
    ({"rl": {"reward_functions": ["length"]}, "data": {"packing": "true"}}, "data.packing does not apply"),
    ({"rl": {"reward_functions": ["length"]}, "data": {"train_on_prompt": True}}, "data.train_on_prompt does not"),
])
def test_bad_rewards_fail_before_the_output_exists(tiny_dir, tmp_path, change, message):
    paths = {"CAUSAL": str(tiny_dir), "MISSING": str(tmp_path / "no-rm")}
    if "reward_model" in change:
        change = {"reward_model": paths[change["reward_model"]]}
    with pytest.raises(MedtuneError, match=message):  # data options: refused by config validation
        run_stage(rl_config(tiny_dir, tmp_path, "grpo", **change), quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_grpo_with_the_judge_reward_through_a_fake_verifier(tiny_dir, tmp_path):
    from tests.helpers.fake_judge import FakeVerifier

    def even_length(reference, answer):  # a verdict that varies between completions, so the policy moves
        return int(len(answer) % 2 == 0)

    with FakeVerifier(grade=even_length) as server:
        judge = {"endpoint": server.url, "model": "verifier", "cache_dir": str(tmp_path / "judge-cache")}
        cfg = rl_config(tiny_dir, tmp_path, "grpo", train={"batch_size": 4},
                        rl={"num_generations": 4, "reward_functions": ["judge"], "judge": judge})
        probe = Probe()
        result = run_stage(cfg, quiet=True, callbacks=[probe])
    references = {c[-1]["content"] for c in CONVERSATIONS}
    asked = {p.split("[Reference answer]\n")[1].split("\n[End")[0] for p in server.prompts}
    assert asked <= references and asked
    rewards_logged = logged(result, "rewards/judge/mean")
    assert len(rewards_logged) == 2 and all(0.0 <= r <= 1.0 for r in rewards_logged)
    usage = lineage(result)["metrics"]["judge"]
    assert usage["scored"] == 2 * 4  # two steps of one prompt x 4 completions
    assert usage["requests"] == server.requests == len(server.prompts) <= usage["scored"]
    assert usage["requests"] + usage["cache_hits"] == usage["scored"]
    assert probe.changed  # the verdicts differed within a group: the adapter moved


@pytest.mark.slow
def test_grpo_judge_endpoint_down_refuses_the_step(tiny_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = rl_config(tiny_dir, tmp_path, "grpo", rl={"reward_functions": ["judge"], "judge": {
        "endpoint": f"http://127.0.0.1:{port}/v1", "model": "verifier", "retries": 0}})
    with pytest.raises(MedtuneError, match=r"^reward judge: connection error from http://127.0.0.1:\d+/v1/chat/"
                                           r"completions \(.*\); step refused$"):
        run_stage(cfg, quiet=True)
    assert not (tmp_path / "out" / "lineage.json").exists()
