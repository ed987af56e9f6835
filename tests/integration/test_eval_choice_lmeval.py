"""The log-likelihood scorer of ``medtune eval choice`` against lm-evaluation-harness.

The same 30 questions (zh/en, 3-5 options, with contexts, 4 multi-answer), the same tiny model and
the same prompt text — the chat-template rendering the CLI makes, given to lm-eval as
``doc_to_text`` with the candidate letters (or letter sets) as ``doc_to_choice`` — must give the
same chosen letters. lm-eval moves the template's trailing "\\n" into the continuation, so each of
its log-likelihoods carries log P("\\n" | prompt without it); that offset is asked of lm-eval too
and taken off before the values are compared.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow

ZH_STEMS = ["高血压的首选药物是", "糖尿病最常见的并发症是", "感冒应到哪个科室就诊", "缺铁性贫血的首选治疗是",
            "心绞痛发作时首选", "急性阑尾炎的典型体征是", "小儿易患中耳炎的原因是", "肺炎链球菌肺炎首选",
            "甲状腺功能亢进的典型症状是", "胃溃疡疼痛的特点是"]
EN_STEMS = ["First-line drug for hypertension?", "Most common complication of diabetes?",
            "Which vitamin deficiency causes scurvy?", "Antidote for paracetamol overdose?",
            "Typical sign of appendicitis?", "Drug of choice for anaphylaxis?",
            "Most common cause of community-acquired pneumonia?", "Which organ produces insulin?"]
ZH_OPTS = ["氨氯地平", "二甲双胍", "阿司匹林", "呼吸内科", "铁剂", "硝酸甘油", "麦氏点压痛"]
EN_OPTS = ["Amlodipine", "Metformin", "Vitamin C", "N-acetylcysteine", "Epinephrine", "Pancreas"]


def questions() -> list[dict]:
    """30 questions: zh and en single-answer, 4 multi-answer, 3 PubMedQA-style with a context."""
    out = []
    for i, stem in enumerate(ZH_STEMS + EN_STEMS):
        pool = ZH_OPTS if i < len(ZH_STEMS) else EN_OPTS
        k = 3 + i % 3
        options = {chr(65 + j): pool[(i + j) % len(pool)] for j in range(k)}
        out.append({"id": f"s{i}", "question": stem, "options": options, "answer": chr(65 + i % k)})
    for i, stem in enumerate(ZH_STEMS[:2] + EN_STEMS[:3]):
        options = {chr(65 + j): ZH_OPTS[(i + j) % len(ZH_OPTS)] for j in range(4)}
        out.append({"id": f"r{i}", "question": stem + "？", "options": options, "answer": "ABCD"[i % 4]})
    for i, answer in enumerate(["AC", "BCD", "ABDE", "BE"]):
        options = {chr(65 + j): ZH_OPTS[(i + j) % len(ZH_OPTS)] for j in range(5)}
        out.append({"id": f"m{i}", "question": ZH_STEMS[i] + "（多选）", "options": options, "answer": answer})
    for i, answer in enumerate(["A", "B", "C"]):
        out.append({"id": f"p{i}", "question": EN_STEMS[i], "context": f"We studied {EN_OPTS[i]}.",
                    "options": {"A": "yes", "B": "no", "C": "maybe"}, "answer": answer})
    return out


@pytest.fixture(scope="module")
def medtune_run(varied_dir, tmp_path_factory):
    """medtune's CLI path (prepare + run, chat template, batch 8) on the 30 questions."""
    from medtune.evaluation.choice import ChoiceSettings, prepare_benchmark, run_benchmark
    from medtune.inference.chat import ChatModel

    tmp = tmp_path_factory.mktemp("parity")
    data = write_jsonl(tmp / "bench.jsonl", questions())
    bot = ChatModel.load(varied_dir, device="cpu", dtype="float32")
    bench = prepare_benchmark([data], ChoiceSettings(batch_size=8))
    run_benchmark(bot, bench, tmp / "out", quiet=True)
    rows = [json.loads(x) for x in (tmp / "out" / "predictions.jsonl").read_text().splitlines()]
    return bot, bench, rows, tmp


def _lm_eval(bot, docs, tmp, monkeypatch):
    """lm-eval's per-doc log-likelihoods (one list per doc) and its HFLM."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    write_jsonl(tmp / "docs.jsonl", docs)
    (tmp / "tasks").mkdir(exist_ok=True)
    task = {"task": "medtune_choice_parity", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(tmp / "docs.jsonl")},
                               "cache_dir": str(tmp / "hf-cache")},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "prompt",
            "doc_to_choice": "choices", "doc_to_target": "gold", "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    (tmp / "tasks" / "parity.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    lm = HFLM(pretrained=bot.model, tokenizer=bot.tokenizer, device="cpu", batch_size=8)
    manager = TaskManager(include_path=str(tmp / "tasks"), include_defaults=False)
    out = simple_evaluate(model=lm, tasks=["medtune_choice_parity"], task_manager=manager,
                          log_samples=True, bootstrap_iters=0)
    samples = sorted(out["samples"]["medtune_choice_parity"], key=lambda s: s["doc_id"])
    return [[r[0][0] for r in s["resps"]] for s in samples], lm


def _newline_offsets(lm, texts) -> list[float]:
    """log P(trailing whitespace | prompt without it), as lm-eval scores it."""
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, (t.rstrip(), t[len(t.rstrip()):]), i) for i, t in enumerate(texts)]
    return [ll for ll, _ in lm.loglikelihood(reqs)]


def test_loglik_letters_match_lm_eval(medtune_run, monkeypatch):
    from medtune.evaluation.choice import candidates, render_prompts

    bot, bench, rows, tmp = medtune_run
    texts, _, _ = render_prompts(bot.tokenizer, bench.items, None, 0, 8, None)
    assert all(t.startswith("<|im_start|>user\n") and t.endswith("<|im_start|>assistant\n") for t in texts)
    cands = [candidates(i) for i in bench.items]
    docs = [{"prompt": t, "choices": c, "gold": c.index(i.answer)}
            for t, c, i in zip(texts, cands, bench.items)]
    lls, lm = _lm_eval(bot, docs, tmp, monkeypatch)
    offsets = _newline_offsets(lm, texts)
    theirs = [c[max(range(len(c)), key=ll.__getitem__)] for c, ll in zip(cands, lls)]
    assert len(rows) == 30 and sum(len(c) > 5 for c in cands) == 4
    assert [r["prediction"] for r in rows] == theirs and len(set(theirs)) >= 3  # not one constant
    delta = max(abs(ll - off - r["scores"][c]) for r, cs, lv, off in zip(rows, cands, lls, offsets)
                for c, ll in zip(cs, lv))
    print(f"lm-eval parity: 30/30 letters agree, max |delta loglik| = {delta:.2e}")
    assert delta < 1e-4


def test_batched_scores_equal_one_at_a_time(medtune_run):
    from medtune.evaluation.choice import candidates, render_prompts, score_candidates

    bot, bench, rows, _ = medtune_run
    texts, ids, _ = render_prompts(bot.tokenizer, bench.items, None, 0, 8, None)
    cands = [candidates(i) for i in bench.items]
    one = score_candidates(bot.model, bot.tokenizer, ids, texts, cands, batch_size=1)
    many = score_candidates(bot.model, bot.tokenizer, ids, texts, cands, batch_size=30)
    assert [max(s, key=s.get) for s in one] == [max(s, key=s.get) for s in many] == \
        [r["prediction"] for r in rows]
    assert max(abs(a[c] - b[c]) for a, b in zip(one, many) for c in a) < 1e-4


def test_prompt_ids_are_the_chat_engine_ids(medtune_run):
    from medtune.evaluation.choice import prompt_messages, render_prompts

    bot, bench, _, _ = medtune_run
    _, ids, _ = render_prompts(bot.tokenizer, bench.items[:5], None, 0, 8, None)
    assert ids == [bot.engine.encode_chat(prompt_messages(i)) for i in bench.items[:5]]


def test_long_prompts_drop_shots_then_are_cut_from_the_left(medtune_run):
    from medtune.evaluation.choice import ShotPicker, render_prompts

    bot, bench, _, _ = medtune_run
    item, picker = bench.items[:1], ShotPicker(bench.items[10:])
    _, [full], counts = render_prompts(bot.tokenizer, item, picker, 3, 8, None)
    assert not counts
    _, [fewer], counts = render_prompts(bot.tokenizer, item, picker, 3, 8, len(full) - 1 + 8)
    assert 1 <= counts["shots dropped"] <= 3 and len(fewer) < len(full)
    _, [zero], _ = render_prompts(bot.tokenizer, item, None, 0, 8, None)
    _, [cut], counts = render_prompts(bot.tokenizer, item, picker, 3, 8, 10 + 8)
    assert counts == {"shots dropped": 3, "prompts cut from the left": 1} and cut == zero[-10:]
