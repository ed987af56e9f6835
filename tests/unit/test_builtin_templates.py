"""Built-ins against the published templates they copy, and template: auto picking them up.

The published texts are the fixtures of test_real_templates.py (each cites its model repository).
"""

import logging

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from medtune.data.tokenize.templates import matching_builtin, template_source
from tests.unit.test_real_templates import A1, A2, FIXTURES, Q1, Q2, SYSTEM, TWO_TURNS, learned_runs

R1_TOKENS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
LLAMA_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
GEMMA_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>"}
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
    ("llama3.1.jinja", LLAMA_TOKENS, "llama3"),
    ("gemma3.jinja", GEMMA_TOKENS, "gemma"),
    # Gemma 2 refuses the system-message probes the built-in (Gemma 3 rules) renders.
    ("gemma.jinja", GEMMA_TOKENS, None),
    ("mistral.jinja", {"bos_token": "<s>", "eos_token": "</s>"}, "mistral"),
    ("phi3.jinja", {"bos_token": "<s>", "eos_token": "<|endoftext|>"}, "phi3"),
    ("phi4.jinja", {"eos_token": "<|im_end|>"}, "phi4"),
    ("yi.jinja", {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"}, "yi"),
    ("glm4.jinja", {"eos_token": "<|endoftext|>"}, "glm4"),
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


# built-in -> (published fixture, the family tokenizer's bos/eos); every conversation and both
# add_generation_prompt settings render byte for byte alike.
SAME_EVERYWHERE = {
    "llama3": ("llama3.1.jinja", LLAMA_TOKENS),
    "gemma": ("gemma3.jinja", GEMMA_TOKENS),
    "phi3": ("phi3.jinja", {"bos_token": "<s>", "eos_token": "<|endoftext|>"}),
    "phi4": ("phi4.jinja", {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}),
    "yi": ("yi.jinja", {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"}),
}


@pytest.mark.parametrize("name", sorted(SAME_EVERYWHERE))
@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("prompt", [False, True])
def test_builtin_renders_like_the_published_template(name, messages, prompt):
    fixture, tokens = SAME_EVERYWHERE[name]
    ours = rendered(template_source(name), messages, add_generation_prompt=prompt, **tokens)
    assert ours == rendered(published(fixture), messages, add_generation_prompt=prompt, **tokens)


def test_llama3_keeps_the_published_date_override():
    kwargs = {"add_generation_prompt": True, "date_string": "01 Mar 2025", **LLAMA_TOKENS}
    ours = rendered(template_source("llama3"), CONVERSATIONS[2], **kwargs)
    assert "Today Date: 01 Mar 2025\n\n" in ours and ours == rendered(published("llama3.1.jinja"), CONVERSATIONS[2], **kwargs)


@pytest.mark.parametrize("messages", [c for c in CONVERSATIONS if c[0]["role"] != "system"])
@pytest.mark.parametrize("prompt", [False, True])
def test_gemma_renders_like_gemma2_where_gemma2_accepts_the_conversation(messages, prompt):
    ours = rendered(template_source("gemma"), messages, add_generation_prompt=prompt, **GEMMA_TOKENS)
    assert ours == rendered(published("gemma.jinja"), messages, add_generation_prompt=prompt, **GEMMA_TOKENS)


MISTRAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


@pytest.mark.parametrize("messages", [c for c in CONVERSATIONS if c[-1]["role"] == "user" or c[0]["role"] != "system"])
def test_mistral_renders_like_the_published_template(messages):
    ours = rendered(template_source("mistral"), messages, **MISTRAL_TOKENS)
    assert ours == rendered(published("mistral.jinja"), messages, **MISTRAL_TOKENS)


def test_mistral_system_message_sits_in_the_served_turn_before_the_final_reply():
    messages = [{"role": "system", "content": SYSTEM}] + TWO_TURNS
    prompt = rendered(published("mistral.jinja"), messages[:4], **MISTRAL_TOKENS)
    assert f"[INST] {SYSTEM}\n\n{Q2}[/INST]" in prompt
    assert rendered(template_source("mistral"), messages, **MISTRAL_TOKENS) == prompt + f" {A2}</s>"


GLM_TOKENS = {"eos_token": "<|endoftext|>"}


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_glm4_renders_like_the_published_template(messages):
    ours = rendered(template_source("glm4"), messages, add_generation_prompt=messages[-1]["role"] == "user",
                    **GLM_TOKENS)
    theirs = rendered(published("glm4.jinja"), messages, add_generation_prompt=messages[-1]["role"] == "user",
                      **GLM_TOKENS)
    # Prompts alike; a full conversation gets eos after its final reply (GLM-4's finetune.py).
    assert ours == theirs + ("<|endoftext|>" if messages[-1]["role"] == "assistant" else "")


@pytest.mark.parametrize(("fixture", "name", "tokens", "specials"), [
    ("llama3.1.jinja", "llama3", LLAMA_TOKENS, ["<|start_header_id|>", "<|end_header_id|>"]),
    ("phi4.jinja", "phi4", {"eos_token": "<|im_end|>"}, ["<|im_start|>", "<|im_sep|>"]),
    ("gemma3.jinja", "gemma", GEMMA_TOKENS, ["<start_of_turn>", "<end_of_turn>"]),
])
def test_auto_uses_new_builtins(tiny_dir, tmp_path, caplog, fixture, name, tokens, specials):
    from transformers import AutoTokenizer

    from medtune.data.tokenize.examples import encode_conversation
    from medtune.models.load import load_tokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.add_special_tokens({**tokens, "additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tok.chat_template = published(fixture)
    tok.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="medtune.models.load"):
        loaded = load_tokenizer(str(tmp_path))
    assert loaded.chat_template == template_source(name)
    assert f"has the chat template of built-in '{name}'" in caplog.text
    messages = [{"role": "system", "content": SYSTEM}] + TWO_TURNS
    ids, labels = encode_conversation(loaded, messages)
    end = {"llama3": "<|eot_id|>", "phi4": "<|im_end|>", "gemma": "<end_of_turn>"}[name]
    assert learned_runs(loaded, ids, labels) == [A1 + end, A2 + end]
    assert loaded.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
