"""Tests for medtune.evaluation.judge (and answer_files) against a local fake judge: strict reply parsing, answer
shuffling mapped back to systems, cache, retries, failures, answer files and metrics."""

import doctest
import json
import re
import socket

import pytest

from medtune import llm_client
from medtune.errors import MedtuneError
from medtune.evaluation import answer_files
from medtune.evaluation import judge as judge_module
from medtune.evaluation.answer_files import (
    Item,
    load_items,
    read_cmb_clin,
    read_references,
    require_references,
)
from medtune.evaluation.judge import (
    RUBRICS,
    Judge,
    dreamer_focus,
    judge_client,
    judge_messages,
    judge_result,
    parse_verdict,
)
from medtune.llm_client import UnparsableReply
from tests.conftest import write_jsonl
from tests.helpers.fake_judge import FAIR, GOOD, FakeJudge

SYSTEMS = ["base", "sft", "gpt"]
CATEGORIES = ["知识问答", "翻译", "代码生成", "伦理、拒答类"]


def test_module_doctests_pass():
    assert doctest.testmod(judge_module).failed == 0
    assert doctest.testmod(llm_client).failed == 0
    assert doctest.testmod(answer_files).failed == 0


def items(n=8, good="sft", fair="gpt"):
    """n prompts over four categories; ``good`` always answers with the marker, ``fair`` half."""
    return [Item(str(i), f"问题{i}：高血压怎么办？",
                 {s: (f"回答{i}{GOOD}" if s == good else f"回答{i}{FAIR}" if s == fair else f"回答{i}")
                  for s in SYSTEMS}, category=CATEGORIES[i % 4])
            for i in range(n)]


def client(server, **kw):
    return judge_client(server.url, "fake-judge", backoff=0.01, timeout=5.0, **kw)


# --- strict parsing --------------------------------------------------------------------------

DREAMER, SUS = RUBRICS["dreamer"], RUBRICS["sus"]
GOOD_REPLY = {"A": {"score": 9, "reason": "准确"}, "B": {"score": 0, "reason": "拒答"}}


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False)


def test_parse_accepts_exact_json_and_a_fence_around_all_of_it():
    expected = {"A": ({"score": 9}, "准确"), "B": ({"score": 0}, "拒答")}
    for text in (dumps(GOOD_REPLY), f"  {dumps(GOOD_REPLY)}\n", f"```json\n{dumps(GOOD_REPLY)}\n```",
                 f"```\n{dumps(GOOD_REPLY)}\n```"):
        assert parse_verdict(text, DREAMER, ["A", "B"]) == expected
    sus = {"A": {"safety": 3, "usability": 1, "smoothness": 2, "reason": "安全但无用"}}
    assert parse_verdict(dumps(sus), SUS, ["A"]) == {
        "A": ({"safety": 3, "usability": 1, "smoothness": 2}, "安全但无用")}


def with_a(**entry):
    return dumps({"A": {"score": 5, "reason": "一般", **entry}, "B": GOOD_REPLY["B"]})


@pytest.mark.parametrize("text, why", [
    (with_a(score=11), '"score" 11 is outside 0-10'),
    (with_a(score=-1), '"score" -1 is outside 0-10'),
    (with_a(score=7.5), '"score" must be an integer, got 7.5'),
    (with_a(score=8.0), '"score" must be an integer, got 8.0'),
    (with_a(score="8"), "must be an integer, got '8'"),
    (with_a(score=True), "must be an integer, got True"),
    (with_a(reason=""), '"reason" must be a non-empty string'),
    (with_a(confidence=1), "keys ['confidence', 'reason', 'score']"),
    (dumps({"A": {"score": 5}, "B": GOOD_REPLY["B"]}), "keys ['score']"),
    (dumps({"A": GOOD_REPLY["A"]}), "missing ['B']"),
    (dumps({**GOOD_REPLY, "C": GOOD_REPLY["A"]}), "unexpected ['C']"),
    (dumps({"a": GOOD_REPLY["A"], "B": GOOD_REPLY["B"]}), "missing ['A'], unexpected ['a']"),
    ('{"A": {"score": 1, "reason": "x"}, "A": {"score": 9, "reason": "y"}, '
     + '"B": {"score": 1, "reason": "z"}}', 'key "A" appears twice'),
    ("评分如下：" + dumps(GOOD_REPLY), "not JSON"),
    (dumps(GOOD_REPLY) + "\n以上。", "not JSON"),
    (f"```json\n{dumps(GOOD_REPLY)}\n```\n说明：A更好。", "not JSON"),
    (dumps([GOOD_REPLY]), "expected a JSON object, got list"),
    (dumps({"A": 9, "B": 1}), "answer A: expected an object, got int"),
])
def test_parse_rejects_anything_but_the_exact_shape(text, why):
    with pytest.raises(UnparsableReply) as e:
        parse_verdict(text, DREAMER, ["A", "B"])
    assert why in str(e.value)


# --- prompts ---------------------------------------------------------------------------------


def test_prompts_show_labels_material_and_the_reply_format():
    item = Item("c-1", "以下是一位病人的病例：\n男，49岁……\n简述诊断。", {"sysX": "嵌顿疝", "sysY": "阑尾炎"},
                reference="嵌顿性腹股沟斜疝", description="男，49岁，右下腹痛3小时。", question="简述诊断。")
    text = judge_messages(item, RUBRICS["cmb-clin"], ["sysY", "sysX"])[0]["content"]
    assert "[病例]\n男，49岁，右下腹痛3小时。\n[病例结束]" in text
    assert "[问题]\n简述诊断。\n[问题结束]" in text and "[参考答案]\n嵌顿性腹股沟斜疝" in text
    assert text.index("[回答A]\n阑尾炎\n[回答A结束]") < text.index("[回答B]\n嵌顿疝\n[回答B结束]")
    assert '"fluency": 1到5的整数' in text and '"proficiency": 1到5的整数' in text
    assert "sysX" not in text and "sysY" not in text  # systems are anonymous labels
    sus = judge_messages(item, SUS, ["sysX", "sysY"])[0]["content"]
    assert "[用户问题]\n" + item.prompt in sus and "参考答案" not in sus
    assert '"safety": 1到3的整数, "usability": 1到3的整数, "smoothness": 1到3的整数' in sus


def test_dreamer_category_focus_by_name_or_alias():
    assert dreamer_focus("translation")[0] == dreamer_focus("02translate")[0] == "翻译"
    assert dreamer_focus("Code")[0] == "代码生成" and dreamer_focus("refusal")[0] == "伦理、拒答类"
    assert dreamer_focus("") == ("通用", dreamer_focus("whatever")[1])
    prompt = judge_messages(items(1)[0], DREAMER, SYSTEMS)[0]["content"]
    assert "任务类别：知识问答。" in prompt and "0到10的整数" in prompt


# --- judging through the fake server ---------------------------------------------------------


def test_marked_system_wins_whatever_order_it_is_shown_in():
    with FakeJudge() as server:
        rows = list(Judge(client(server), "dreamer", seed=1, concurrency=3).run(items()))
    assert len(server.prompts) == 8
    assert len({r["order"].index("sft") for r in rows}) > 1  # really shown in different places
    prompts = {row["id"]: next(p for p in server.prompts if f"\n{row['prompt']}\n" in p)
               for row in rows}
    for row in rows:
        assert row["status"] == "ok" and row["score"] == {"base": 2, "sft": 10, "gpt": 5}
        label = "ABC"[row["order"].index("sft")]
        assert row["labels"][label] == "sft" and f"[回答{label}]\n回答{row['id']}{GOOD}" in prompts[row["id"]]
    result = judge_result(rows, SYSTEMS, "dreamer")
    o = result.overall
    assert (o["sft.score"], o["gpt.score"], o["base.score"]) == (10, 5, 2)
    assert (o["sft.rank"], o["gpt.rank"], o["base.rank"]) == (1, 2, 3)
    assert (o["sft.wins"], o["n"], o["failed"]) == (8, 8, 0)
    assert list(result.groups) == CATEGORIES and result.groups["翻译"]["n"] == 2


def test_order_is_seeded_per_prompt_and_scores_do_not_depend_on_it():
    judge = Judge(judge_client("http://x/v1", "m"), "dreamer", seed=0)
    again, other = Judge(judge.client, "dreamer", seed=0), Judge(judge.client, "dreamer", seed=9)
    orders = [judge.order(i) for i in items()]
    assert orders == [again.order(i) for i in items()]
    assert orders != [other.order(i) for i in items()]
    scores = []
    for seed in (0, 9):
        with FakeJudge() as server:
            scores.append([r["score"] for r in Judge(client(server), "dreamer", seed=seed).run(items())])
    assert scores[0] == scores[1]


def test_position_biased_judge_is_mapped_back_by_the_recorded_order():
    def first_is_best(url, body, headers, timeout):
        labels = sorted(set(re.findall(r"\[回答([A-Z])\]", json.loads(body)["messages"][0]["content"])))
        verdict = {lab: {"score": 10 if lab == "A" else 2, "reason": "位置"} for lab in labels}
        reply = {"choices": [{"message": {"content": dumps(verdict)}}]}
        return 200, {}, json.dumps(reply).encode()

    judge = Judge(judge_client("http://x/v1", "m", transport=first_is_best), "dreamer", seed=3)
    rows = list(judge.run(items(30)))
    for row in rows:
        assert row["score"][row["order"][0]] == 10 and sorted(row["score"].values()) == [2, 2, 10]
    shown_first = {s: sum(r["order"][0] == s for r in rows) for s in SYSTEMS}
    assert all(count >= 5 for count in shown_first.values())  # the bias is spread over systems


def test_sus_and_cmb_clin_score_every_axis():
    with FakeJudge() as server:
        sus = list(Judge(client(server), "sus").run(items(4)))
        cases = [Item(i.id, i.prompt, i.answers, reference="参考") for i in items(4)]
        cmb = list(Judge(client(server), "cmb-clin").run(cases))
    assert sus[0]["scores"]["sft"] == {"safety": 3, "usability": 3, "smoothness": 3}
    assert sus[0]["scores"]["gpt"] == {"safety": 2, "usability": 2, "smoothness": 2}
    assert sus[0]["scores"]["base"] == {"safety": 1, "usability": 1, "smoothness": 1}
    o = judge_result(sus, SYSTEMS, "sus").overall
    assert (o["sft.safety"], o["gpt.usability"], o["base.smoothness"], o["sft.score"]) == (3, 2, 1, 3)
    o = judge_result(cmb, SYSTEMS, "cmb-clin").overall
    assert (o["sft.fluency"], o["gpt.completeness"], o["base.proficiency"]) == (5, 3, 1)
    assert cmb[0]["reasons"]["sft"] == "含标记"


def test_cache_second_run_pays_nothing(tmp_path):
    with FakeJudge() as server:
        first = Judge(client(server, cache_dir=tmp_path), "dreamer", concurrency=2)
        rows = list(first.run(items()))
        second = Judge(client(server, cache_dir=tmp_path), "dreamer")
        assert list(second.run(items())) == rows
        assert server.requests == 8
        assert second.client.usage["requests"] == 0 and second.client.usage["cache_hits"] == 8
        assert second.client.usage["saved_tokens"] == server.prompt_tokens + server.completion_tokens
        # Another seed shows the answers in other orders: other prompts, paid once more.
        list(Judge(client(server, cache_dir=tmp_path), "dreamer", seed=5).run(items()))
        assert server.requests > 8


@pytest.mark.parametrize("fault", ["garbage", "prose", "range", "missing", "float", "extra",
                                   "duplicate"])
def test_each_bad_reply_is_asked_again_at_a_higher_temperature(fault):
    with FakeJudge(faults=[fault]) as server:
        rows = list(Judge(client(server), "dreamer", concurrency=1).run(items(2)))
    assert [r["status"] for r in rows] == ["ok", "ok"] and server.requests == 3
    assert server.temperatures == [0.0, 0.7, 0.0]
    assert rows[0]["score"] == {"base": 2, "sft": 10, "gpt": 5}


def test_retries_spent_then_counted_failed_never_scored(tmp_path):
    with FakeJudge(faults=["garbage", "range", "garbage"]) as server:
        judge = Judge(client(server, retries=2, cache_dir=tmp_path), "dreamer", concurrency=1)
        rows = list(judge.run(items(2)))
    assert server.requests == 4
    failed, ok = rows
    assert failed["status"] == "failed" and failed["failure"] == "unparsable reply"
    assert "not JSON" in failed["error"] and failed["raw"] == "这几个回答都还不错。"
    assert "score" not in failed and failed["order"] and ok["status"] == "ok"
    result = judge_result(rows, SYSTEMS, "dreamer")
    assert result.skipped == {"unparsable reply": 1}
    assert (result.overall["n"], result.overall["failed"], result.overall["sft.score"]) == (1, 1, 10)
    assert len(list(tmp_path.glob("*.json"))) == 1  # a bad reply is never cached


def test_unreachable_endpoint_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = Judge(judge_client(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff=0.01), "sus")
    with pytest.raises(MedtuneError, match=r"v1/chat/completions: endpoint unreachable after 1 "
                                           r"retries .*is the judge server running\?"):
        list(judge.run(items(3)))


def test_wrong_key_stops_at_once():
    with FakeJudge(api_key="right") as server:
        judge = Judge(client(server, api_key="wrong"), "dreamer", concurrency=1)
        with pytest.raises(MedtuneError, match="refused the API key"):
            list(judge.run(items(3)))
        assert server.requests == 1


def test_ranks_and_wins_split_ties():
    rows = [{"status": "ok", "category": "", "scores": {}, "score": {"a": 8, "b": 8, "c": 1}},
            {"status": "ok", "category": "", "scores": {}, "score": {"a": 2, "b": 6, "c": 6}}]
    o = judge_result(rows, ["a", "b", "c"], "dreamer").overall
    assert (o["a.rank"], o["b.rank"], o["c.rank"]) == (2.25, 1.5, 2.25)
    assert (o["a.wins"], o["b.wins"], o["c.wins"]) == (0.5, 1.0, 0.5)
    assert judge_result(rows, ["a", "b", "c"], "dreamer").group_by is None


# --- answer files ----------------------------------------------------------------------------


def test_load_items_from_infer_and_eval_gen_outputs(tmp_path):
    # medtune infer: input row kept (its "answer" is then the reference), plus id and response.
    infer = write_jsonl(tmp_path / "sft.jsonl", [
        {"id": 1, "instruction": "解释", "input": "高血压", "answer": "参考1", "response": "血压高",
         "category": "知识问答"},
        {"id": 2, "messages": [{"role": "user", "content": "头痛怎么办"}], "response": "休息"}])
    gen = tmp_path / "base" / "generated_predictions.jsonl"
    gen.parent.mkdir()
    write_jsonl(gen, [{"id": "2", "prompt": "头痛怎么办", "prediction": "吃药", "reference": "r2"},
                      {"id": "1", "prompt": "解释\n高血压", "prediction": "不知道", "reference": "r1"}])
    systems, got = load_items([infer, gen])
    assert systems == ["sft", "base"]
    assert [(i.id, i.prompt, i.answers, i.category, i.reference) for i in got] == [
        ("1", "解释\n高血压", {"sft": "血压高", "base": "不知道"}, "知识问答", "参考1"),
        ("2", "头痛怎么办", {"sft": "休息", "base": "吃药"}, "", "r2")]
    assert load_items([infer, gen], limit=1)[1][0].id == "1"


def test_system_names_from_field_stem_or_folder(tmp_path):
    paths = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        paths.append(write_jsonl(tmp_path / name / "generated_predictions.jsonl",
                                 [{"id": 1, "prompt": "p", "prediction": "x"}]))
    assert load_items(paths)[0] == ["a", "b"]
    named = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "prompt": "p", "answer": "x", "system": "b"}])
    with pytest.raises(MedtuneError, match=r"system name 'b' also used by .*b/generated_predictions"):
        load_items([paths[1], named])


@pytest.mark.parametrize("rows, error", [
    ([{"id": 1, "prompt": "p", "response": "x"}, {"id": 2, "prompt": "OTHER", "response": "y"}],
     r"b\.jsonl:2: id '2' has another prompt than in .*a\.jsonl:2"),
    ([{"id": 1, "prompt": "p", "response": "x"}], r"b\.jsonl: id '2' missing \(it is in .*a\.jsonl:2\)"),
    ([{"id": 1, "prompt": "p", "response": "x"}, {"id": 2, "prompt": "q", "response": "y"},
      {"id": 3, "prompt": "r", "response": "z"}], r"b\.jsonl:3: id '3' is not in .*a\.jsonl"),
    ([{"id": 1, "prompt": "p", "response": "x"}, {"id": 1, "prompt": "p", "response": "x"}],
     r"b\.jsonl:2: duplicate id '1'"),
    ([{"prompt": "p", "response": "x"}], r'b\.jsonl:1: field "id" missing'),
    ([{"id": 1, "prompt": "p"}], r'b\.jsonl:1: no "response", "prediction" or "answer" field'),
    ([{"id": 1, "text": "p", "response": "x"}], r'b\.jsonl:1: no "prompt", "question"'),
    ([{"id": 1, "prompt": "p", "response": 3}], r'b\.jsonl:1: field "response" must be a string'),
])
def test_answer_files_must_match_by_id(tmp_path, rows, error):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "prompt": "p", "response": "x"},
                                            {"id": "2", "prompt": " q ", "response": "y"}])
    b = write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(MedtuneError, match=error) as e:
        load_items([a, b])
    assert "\n" not in str(e.value)


CASES = [{"id": "7", "title": "案例分析-肺炎", "description": "男，30岁，发热咳嗽3天。",
          "QA_pairs": [{"question": "诊断是什么？", "answer": "社区获得性肺炎"},
                       {"question": "如何治疗？", "solution": "抗感染治疗"}]}]


def test_cmb_clin_rows_and_references(tmp_path):
    path = tmp_path / "cmb.json"
    path.write_text(dumps(CASES), "utf-8")
    rows = read_cmb_clin(path)
    assert [r["id"] for r in rows] == ["7-1", "7-2"]
    assert rows[1]["prompt"] == "以下是一位病人的病例：\n男，30岁，发热咳嗽3天。\n如何治疗？"
    assert rows[1]["reference"] == "抗感染治疗" and rows[0]["question"] == "诊断是什么？"
    refs = read_references(path)
    assert refs["7-1"]["reference"] == "社区获得性肺炎" and refs["7-2"]["description"] == CASES[0]["description"]
    jsonl = write_jsonl(tmp_path / "refs.jsonl", [{"id": 3, "solution": "s"}])
    assert read_references(jsonl) == {"3": {"reference": "s", "description": None, "question": None}}
    answers = write_jsonl(tmp_path / "m.jsonl", [{**r, "response": "答"} for r in rows])
    item = load_items([answers])[1][0]
    assert (item.reference, item.description, item.question) == (
        "社区获得性肺炎", CASES[0]["description"], "诊断是什么？")
    with pytest.raises(MedtuneError, match=r"id '1' has no reference; --rubric cmb-clin needs one"):
        require_references([Item("1", "p", {"a": "x"})], "a.jsonl")
