"""Tests for the ``judge`` reward (medtune.recipes.judge_reward): scores from a fake verifier,
caching (memory, disk, identical completions), config checks, and failures refusing the step with
one line naming the reward."""

import doctest
import socket

import pytest

from medtune.config import stage_from_dict
from medtune.config.schema import JudgeRewardConfig
from medtune.errors import MedtuneError
from medtune.llm_client import UnparsableReply
from medtune.recipes import judge_reward
from medtune.recipes.judge_reward import JudgeReward, check_judge_config
from medtune.recipes.rewards import checked_reward, reward_function
from medtune.recipes.rl import stage_reward
from tests.helpers.fake_judge import FakeVerifier

QUESTION = [{"role": "user", "content": "偏头痛应到哪个科室就诊？"}]


def reward_for(server, **settings):
    return JudgeReward(JudgeRewardConfig(endpoint=server.url, model="judge", retries=1, **settings))


def test_module_doctests_pass():
    assert doctest.testmod(judge_reward).failed == 0


def test_parse_reads_the_last_score_after_any_trace_and_maps_the_range():
    reward = JudgeReward(JudgeRewardConfig(endpoint="http://127.0.0.1:9/v1", model="m"))
    assert reward.parse("Score：0") == 0.0
    assert reward.parse("<think>score: 0 at first</think>\nscore: 1") == 1.0
    for bad, why in (("I cannot decide", "no score in the reply"), ("score: 7", "score 7 is outside 0-1")):
        with pytest.raises(UnparsableReply, match=why):
            reward.parse(bad)
    ten = JudgeReward(JudgeRewardConfig(endpoint="http://127.0.0.1:9/v1", model="m", score_pattern=r"(\d+)/10",
                                        score_max=10))
    assert ten.parse("8/10") == pytest.approx(0.8)


@pytest.mark.parametrize("settings,message", [
    ({"endpoint": ""}, "reward judge needs rl.judge.endpoint and rl.judge.model"),
    ({"endpoint": "localhost:8000"}, "rl.judge.endpoint 'localhost:8000' must start with http://"),
    ({"prompt": "Q {question} A {answr}"}, "rl.judge.prompt: unknown field {answr}"),
    ({"prompt": "Q {question} R {reference}"}, "rl.judge.prompt must contain {answer}"),
    ({"prompt": "{answer} {"}, "rl.judge.prompt: Single '{' encountered"),
    ({"score_pattern": r"(\d)/(\d)"}, "rl.judge.score_pattern must have exactly one group (the score), has 2"),
    ({"score_pattern": r"(\d"}, "rl.judge.score_pattern is not a regular expression"),
    ({"score_min": 1.0, "score_max": 1.0}, "rl.judge.score_max (1.0) must be above rl.judge.score_min (1.0)"),
    ({"api_key_env": "MEDTUNE_TEST_UNSET_KEY"}, "environment variable MEDTUNE_TEST_UNSET_KEY is not set"),
])
def test_config_checks(settings, message):
    cfg = JudgeRewardConfig(**{"endpoint": "http://127.0.0.1:9/v1", "model": "m", **settings})
    with pytest.raises(MedtuneError, match="^t.yaml: .*" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("{", r"\{").replace("}", r"\}")):
        check_judge_config(cfg, "t.yaml")


def test_scores_and_cache_same_question_and_answer_asked_once(tmp_path):
    with FakeVerifier() as server:
        reward = reward_for(server)
        completions = ["应到神经内科就诊。", "<think>想一想</think>骨科。", "应到神经内科就诊。", "神经内科"]
        refs = ["神经内科"] * 4
        assert reward([QUESTION] * 4, completions, reference=refs) == [1.0, 0.0, 1.0, 1.0]
        assert server.requests == 3  # the repeated completion cost nothing
        assert "[Model answer]\n骨科。\n" in "".join(server.prompts)  # the answer after its trace
        assert reward([QUESTION] * 2, completions[:2], reference=refs[:2]) == [1.0, 0.0]
        assert server.requests == 3
        assert reward.usage == {"requests": 3, "cache_hits": 3, "scored": 6, "prompt_tokens": server.prompt_tokens,
                                "completion_tokens": server.completion_tokens, "saved_tokens": 0}
        disk = reward_for(server, cache_dir=str(tmp_path / "cache"))
        disk([QUESTION], completions[:1], reference=refs[:1])
        again = reward_for(server, cache_dir=str(tmp_path / "cache"))  # a new run
        assert again([QUESTION], completions[:1], reference=refs[:1]) == [1.0]
        assert server.requests == 4 and again.usage["cache_hits"] == 1 and again.usage["requests"] == 0


def test_bad_verdicts_are_asked_again_then_refuse_the_step_naming_the_reward():
    with FakeVerifier(faults=["garbage", "think"]) as server:  # one bad reply, then a right one
        assert reward_for(server)([QUESTION], ["神经内科"], reference=["神经内科"]) == [1.0]
        assert server.requests == 2
    with FakeVerifier(faults=["range", "garbage"]) as server:
        judge = checked_reward(reward_for(server), "judge")
        with pytest.raises(MedtuneError) as err:
            judge([QUESTION], ["神经内科"], reference=["神经内科"])
        assert str(err.value) == (f"reward judge: unparsable reply after 1 retries from {server.url}/chat/completions "
                                  "(no score in the reply: 'I cannot decide.'); step refused")


def test_endpoint_down_refuses_the_step_in_one_line():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = JudgeReward(JudgeRewardConfig(endpoint=f"http://127.0.0.1:{port}/v1", model="m", retries=0))
    with pytest.raises(MedtuneError, match=r"^reward judge: connection error from http://127.0.0.1:\d+/v1/chat/"
                                           r"completions \(.*\); step refused$"):
        checked_reward(reward, "judge")([QUESTION], ["x"], reference=["y"])


def test_api_key_comes_from_the_named_variable(monkeypatch):
    with FakeVerifier(api_key="secret") as server:
        monkeypatch.setenv("MEDTUNE_TEST_JUDGE_KEY", "secret")
        assert reward_for(server, api_key_env="MEDTUNE_TEST_JUDGE_KEY")([QUESTION], ["神经内科"],
                                                                       reference=["神经内科"]) == [1.0]
        with pytest.raises(MedtuneError, match="refused the API key"):
            checked_reward(reward_for(server), "judge")([QUESTION], ["神经内科"], reference=["神经内科"])


def test_stage_config_refuses_judge_settings_that_would_be_ignored(tmp_path):
    raw = {"stage": "grpo", "model": {"path": "m"}, "data": {"train": ["d.jsonl"]}, "output": str(tmp_path / "o"),
           "train": {"batch_size": 4}, "rl": {"reward_functions": ["answer_match"],
                                              "judge": {"endpoint": "http://127.0.0.1:9/v1"}}}
    with pytest.raises(MedtuneError, match="rl.judge is set but judge is not in rl.reward_functions"):
        stage_from_dict(raw, "t.yaml")
    raw["rl"]["reward_functions"] = ["judge"]
    with pytest.raises(MedtuneError, match="reward judge needs rl.judge.endpoint and rl.judge.model"):
        stage_from_dict(raw, "t.yaml")
    raw["rl"]["judge"]["model"] = "qwen"
    assert stage_from_dict(raw, "t.yaml").rl.judge.model == "qwen"
    sft = {**raw, "stage": "sft", "rl": {"judge": {"model": "qwen"}}}
    with pytest.raises(MedtuneError, match="rl.judge does not apply to stage sft"):
        stage_from_dict(sft, "t.yaml")
    assert isinstance(stage_reward("judge", stage_from_dict(raw, "t.yaml").rl), JudgeReward)
    with pytest.raises(MedtuneError, match=r"'judg' is not a built-in reward \(did you mean 'judge'\?\)"):
        reward_function("judg")
