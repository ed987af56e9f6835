"""``medtune eval judge`` through the real command line, against a local fake judge server and
against ``medtune serve api`` with a scripted judge engine."""

import functools
import json
import socket

import pytest

from medtune.evaluation.answer_files import read_cmb_clin
from tests.conftest import SHARED_DATA, write_jsonl
from tests.helpers import cli
from tests.helpers.cli import one_error_line
from tests.helpers.fake_engines import FakeEngine
from tests.helpers.fake_judge import FAIR, GOOD, FakeJudge, verdict

CATEGORIES = ["知识问答", "翻译", "情感分析", "伦理、拒答类"]


medtune = functools.partial(cli.medtune, quiet=True)


def lines(path):
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()]


def metrics(out):
    return json.loads((out / "metrics.json").read_text("utf-8"))


def answer_files(tmp_path, n=8):
    """base (plain), sft (marked GOOD) and gpt (marked FAIR) answers in three output shapes."""
    prompts = [f"第{i}题：请回答关于高血压的问题。" for i in range(n)]
    base = write_jsonl(tmp_path / "base.jsonl", [  # medtune infer
        {"id": i, "prompt": p, "response": f"不知道{i}", "category": CATEGORIES[i % 4]}
        for i, p in enumerate(prompts)])
    sft = write_jsonl(tmp_path / "sft.jsonl", [  # any JSONL with answer
        {"id": str(i), "question": p, "answer": f"答案{i}{GOOD}"} for i, p in enumerate(prompts)])
    gen = tmp_path / "gpt" / "generated_predictions.jsonl"  # medtune eval gen
    gen.parent.mkdir()
    write_jsonl(gen, [{"id": i, "prompt": prompts[i], "prediction": f"一般{i}{FAIR}", "reference": "r"}
                      for i in reversed(range(n))])  # another row order: matched by id
    return [base, sft, gen]


def judge_args(server_url, answers, out, rubric="dreamer", *extra):
    return ("eval", "judge", "--endpoint", server_url, "--judge-model", "fake", "--answers",
            *answers, "--rubric", rubric, "--output", out, *extra)


def test_dreamer_three_systems_by_category_then_rerun_from_cache(tmp_path):
    answers, out = answer_files(tmp_path), tmp_path / "judge"
    with FakeJudge(api_key="sekrit") as server:
        proc = medtune(*judge_args(server.url, answers, out), quiet=False,
                       env={"OPENAI_API_KEY": "sekrit"})
        assert proc.returncode == 0, proc.stderr
        assert server.requests == 8
        assert "sft.score" in proc.stdout and "8 prompts: 8 requests, 0 from cache" in proc.stdout
        again = medtune(*judge_args(server.url, answers, out, "dreamer", "--api-key", "sekrit"),
                        quiet=False)
        assert again.returncode == 0 and server.requests == 8
        assert "8 prompts: 0 requests, 8 from cache, 0 failed" in again.stdout
    m = metrics(out)
    assert m["task"] == "judge" and m["model"] == "base vs sft vs gpt" and m["samples"] == "judgments.jsonl"
    o = m["overall"]
    assert (o["sft.score"], o["gpt.score"], o["base.score"], o["n"], o["failed"]) == (10, 5, 2, 8, 0)
    assert (o["sft.rank"], o["gpt.rank"], o["base.rank"], o["sft.wins"]) == (1, 2, 3, 8)
    assert m["group_by"] == "category" and list(m["groups"]) == CATEGORIES
    assert all(g["n"] == 2 and g["sft.score"] == 10 for g in m["groups"].values())
    assert m["settings"]["systems"]["gpt"].endswith("generated_predictions.jsonl")
    rows = lines(out / "judgments.jsonl")
    assert [r["id"] for r in rows] == [str(i) for i in range(8)]
    assert len({tuple(r["order"]) for r in rows}) > 1
    assert all(json.loads(r["raw"])[next(k for k, s in r["labels"].items() if s == "sft")]["score"] == 10
               for r in rows)


def test_sus_with_a_chatty_reply_retried_and_limit(tmp_path):
    answers, out = answer_files(tmp_path)[:2], tmp_path / "sus"
    with FakeJudge(faults=["prose"]) as server:
        proc = medtune(*judge_args(server.url, answers, out, "sus", "--limit", "4",
                                   "--concurrency", "1"))
        assert proc.returncode == 0, proc.stderr
        assert server.requests == 5
    o = metrics(out)["overall"]
    assert (o["sft.safety"], o["sft.usability"], o["sft.smoothness"], o["base.score"]) == (3, 3, 3, 1)
    assert o["n"] == 4 and metrics(out)["skipped"] == {}


CASES = [
    {"id": "0", "title": "案例分析-肺炎", "description": "男，30岁，发热、咳嗽3天，右下肺湿啰音。",
     "QA_pairs": [{"question": "最可能的诊断是什么？", "answer": "社区获得性肺炎。"},
                  {"question": "治疗原则？", "answer": "经验性抗感染治疗。"}]},
    {"id": "1", "title": "案例分析-糖尿病", "description": "女，55岁，多饮多尿半年，空腹血糖9.8mmol/L。",
     "QA_pairs": [{"question": "诊断依据？", "answer": "典型症状加空腹血糖≥7.0mmol/L。"}]},
]


def cmb_answers(tmp_path, cases_path, limit=None):
    rows = read_cmb_clin(cases_path)[:limit]
    good = write_jsonl(tmp_path / "good.jsonl", [
        {"id": r["id"], "prompt": r["prompt"], "response": r["reference"] + GOOD} for r in rows])
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"id": r["id"], "prompt": r["prompt"], "response": "多喝热水。"} for r in rows])
    return [good, bad]


def test_cmb_clin_against_references(tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(CASES, ensure_ascii=False), "utf-8")
    answers, out = cmb_answers(tmp_path, cases), tmp_path / "cmb"
    with FakeJudge() as server:
        no_ref = medtune(*judge_args(server.url, answers, out, "cmb-clin"))
        assert no_ref.returncode == 2 and server.requests == 0
        assert no_ref.stderr.strip() == (f"error: {answers[0]}: id '0-1' has no reference; --rubric "
                                         "cmb-clin needs one: add \"reference\" to the rows or pass "
                                         "--references CMB-test-qa.json")
        proc = medtune(*judge_args(server.url, answers, out, "cmb-clin", "--references", cases))
        assert proc.returncode == 0, proc.stderr
        case = next(p for p in server.prompts if "[病例]\n女，55岁，多饮多尿半年" in p)
        assert "[问题]\n诊断依据？\n" in case and "[参考答案]\n典型症状加空腹血糖" in case
    o = metrics(out)["overall"]
    assert (o["good.fluency"], o["good.proficiency"], o["bad.completeness"], o["n"]) == (5, 5, 1, 3)
    assert o["good.wins"] == 3


@pytest.mark.skipif(not (SHARED_DATA / "cmb" / "CMB-test-qa.json").is_file(),
                    reason="research data in /work/shared/data not present")
def test_cmb_clin_real_cases_limit_3(tmp_path):
    cases = SHARED_DATA / "cmb" / "CMB-test-qa.json"
    answers, out = cmb_answers(tmp_path, cases, limit=5), tmp_path / "cmb"
    with FakeJudge() as server:
        proc = medtune(*judge_args(server.url, answers, out, "cmb-clin", "--references", cases,
                                   "--limit", "3"))
        assert proc.returncode == 0, proc.stderr
        assert server.requests == 3
        assert all("[病例]\n现病史" in p and "[参考答案]\n" in p for p in server.prompts)
    o = metrics(out)["overall"]
    assert (o["n"], o["good.score"], o["bad.score"]) == (3, 5, 1)
    assert [r["id"] for r in lines(out / "judgments.jsonl")] == ["0-1", "0-2", "0-3"]


def test_unreachable_endpoint_and_wrong_key_exit_2_with_one_line(tmp_path):
    answers = answer_files(tmp_path, n=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = medtune(*judge_args(f"http://127.0.0.1:{port}/v1", answers, tmp_path / "o", "dreamer",
                               "--retries", "1"))
    assert "endpoint unreachable after 1 retries" in one_error_line(down)
    with FakeJudge(api_key="right") as server:
        wrong = medtune(*judge_args(server.url, answers, tmp_path / "o", "dreamer",
                                    "--api-key", "nope"))
        assert "refused the API key (HTTP 401" in one_error_line(wrong)
        assert server.requests <= 4  # no retries on 401


def test_mismatched_prompts_exit_2_naming_file_and_id(tmp_path):
    base, sft, _ = answer_files(tmp_path, n=3)
    rows = lines(sft)
    rows[1]["question"] = "另一个问题"
    write_jsonl(sft, rows)
    proc = medtune(*judge_args("http://127.0.0.1:9/v1", [base, sft], tmp_path / "o"))
    assert one_error_line(proc) == (f"error: {sft}:2: id '1' has another prompt than in {base}:2; "
                                    "answers are matched by id")


def test_every_reply_unparsable_is_an_error_after_writing_the_replies(tmp_path):
    answers, out = answer_files(tmp_path, n=2)[:2], tmp_path / "o"
    with FakeJudge(faults=["garbage"] * 4) as server:
        proc = medtune(*judge_args(server.url, answers, out, "dreamer", "--retries", "1"))
        assert server.requests == 4
    assert "no judge reply could be parsed (unparsable reply: not JSON" in one_error_line(proc)
    rows = lines(out / "judgments.jsonl")
    assert [r["status"] for r in rows] == ["failed", "failed"] and rows[0]["raw"]
    assert metrics(out)["skipped"] == {"unparsable reply": 2}


class ScriptedJudge(FakeEngine):
    """An engine behind ``medtune serve api`` that answers judge prompts like the fake judge."""

    name = "judge"

    def __init__(self):
        self.prompts = []

    def encode_chat(self, messages, model=None, enable_thinking=None):
        self.prompts.append(messages[-1]["content"])
        return [len(self.prompts) - 1]

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        out = []
        for (index,) in prompts:
            reply = json.dumps(verdict(self.prompts[index]), ensure_ascii=False)
            out.append(Completion(reply, 1, len(reply), "stop"))
        return out


@pytest.mark.slow
def test_judge_through_medtune_serve_api(tmp_path):
    from medtune.serving.api import create_app
    from tests.helpers.servers import Server

    answers, out = answer_files(tmp_path, n=4), tmp_path / "o"
    with Server(create_app(ScriptedJudge(), api_key="k")) as srv:
        proc = medtune("eval", "judge", "--endpoint", f"{srv.url}/v1", "--judge-model", "judge",
                       "--api-key", "k", "--answers", *answers, "--output", out)
    assert proc.returncode == 0, proc.stderr
    o = metrics(out)["overall"]
    assert (o["sft.score"], o["gpt.score"], o["base.score"], o["n"]) == (10, 5, 2, 4)
    assert metrics(out)["settings"]["usage"]["completion_tokens"] > 0
