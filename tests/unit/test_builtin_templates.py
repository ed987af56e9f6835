"""Built-ins against the published templates they copy, and template: auto picking them up.

The published texts are the fixtures of test_real_templates.py (each cites its model repository).
"""

import logging

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from medtune.data.tokenize.templates import matching_builtin, template_source
from tests.unit.test_real_templates import A1, A2, FIXTURES, Q1, Q2, SYSTEM, TWO_TURNS, learned_runs

R1_TOKENS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
TRACE = "Below 60 is bradycardia, but athletes often rest near 50."

CONVERSATIONS = [
    TWO_TURNS[:1],
    TWO_TURNS[:3],
    [{"role": "system", "content": SYSTEM}] + TWO_TURNS[:3],
    TWO_TURNS[:2],
    TWO_TURNS,
    [{"role": "system", "content": SYSTEM}] + TWO_TURNS,
    [TWO_TURNS[0], {"role": "assistant", "content": A1, "reasoning_content": TRACE}, *TWO_TURNS[2:]],
    TWO_TURNS[:3] + [{"role": "assistant", "content": A2, "reasoning_content": TRACE}],
    TWO_TURNS[:3] + [{"role": "assistant", "content": f"<think>\n{TRACE}\n</think>\n\n{A2}"}],
]


def published(name):
    return (FIXTURES / name).read_text(encoding="utf-8")


def rendered(source, messages, **kwargs):
    return render_jinja_template(conversations=[messages], chat_template=source, **kwargs)[0][0]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("kwargs", [{}, {"add_generation_prompt": True},
                                    {"add_generation_prompt": True, "enable_thinking": False}])
def test_qwen3_renders_like_the_published_template(messages, kwargs):
    if kwargs and messages[-1]["role"] == "assistant":
        return
    assert rendered(template_source("qwen3"), messages, **kwargs) == rendered(published("qwen3.jinja"), messages, **kwargs)


@pytest.mark.parametrize("messages", [c for c in CONVERSATIONS if c[-1]["role"] == "user"])
def test_deepseek_r1_prompts_render_like_the_published_template(messages):
    ours = rendered(template_source("deepseek-r1"), messages, add_generation_prompt=True, **R1_TOKENS)
    assert ours == rendered(published("deepseek-r1-distill.jinja"), messages, add_generation_prompt=True, **R1_TOKENS)


def test_deepseek_r1_final_reply_follows_its_serving_prompt():
    messages = TWO_TURNS[:3] + [{"role": "assistant", "content": A2, "reasoning_content": TRACE}]
    prompt = rendered(template_source("deepseek-r1"), messages[:3], add_generation_prompt=True, **R1_TOKENS)
    full = rendered(template_source("deepseek-r1"), messages, **R1_TOKENS)
    assert full == prompt + f"{TRACE}\n</think>\n\n{A2}<｜end▁of▁sentence｜>"
    # Past turns as published: the trace is dropped.
    assert full.startswith(rendered(published("deepseek-r1-distill.jinja"), messages[:3], **R1_TOKENS))


@pytest.mark.parametrize(("fixture", "tokens", "expected"), [
    ("qwen3.jinja", {}, "qwen3"),
    ("deepseek-r1-distill.jinja", R1_TOKENS, "deepseek-r1"),
    ("qwen2.5.jinja", {}, None),
    ("llama3.1.jinja", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, None),
    ("gemma.jinja", {"bos_token": "<bos>", "eos_token": "<eos>"}, None),
])
def test_matching_builtin(fixture, tokens, expected):
    assert matching_builtin(published(fixture), tokens.get("bos_token", ""), tokens.get("eos_token", "")) == expected


def test_builtins_match_themselves_first():
    from medtune.data.tokenize.templates import TEMPLATE_NAMES

    for name in TEMPLATE_NAMES:
        assert matching_builtin(template_source(name), "<s>", "</s>") == name


def test_auto_uses_the_matching_builtin_and_says_so(tiny_dir, tmp_path, caplog):
    """A DeepSeek-R1 distill's own template: refused as it is (see test_real_templates), trained
    exactly through the built-in, whose prompts are the same."""
    from transformers import AutoTokenizer

    from medtune.data.tokenize.examples import encode_conversation
    from medtune.models.load import load_tokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.add_special_tokens({**R1_TOKENS, "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]},
                           replace_extra_special_tokens=False)
    tok.chat_template = published("deepseek-r1-distill.jinja")
    tok.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="medtune.models.load"):
        loaded = load_tokenizer(str(tmp_path))
    assert loaded.chat_template == template_source("deepseek-r1")
    assert "has the chat template of built-in 'deepseek-r1'; using the built-in" in caplog.text
    messages = TWO_TURNS[:3] + [{"role": "assistant", "content": A2, "reasoning_content": TRACE}]
    ids, labels = encode_conversation(loaded, messages)
    assert learned_runs(loaded, ids, labels) == [A1 + "<｜end▁of▁sentence｜>",
                                                 f"{TRACE}\n</think>\n\n{A2}<｜end▁of▁sentence｜>"]
    prompt = list(loaded.apply_chat_template(messages[:3], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"])
    assert ids[:len(prompt)] == prompt
    assert Q1 in loaded.decode(prompt) and Q2 in loaded.decode(prompt)
