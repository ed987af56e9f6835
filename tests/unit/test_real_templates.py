"""Learned spans under the real chat templates published with public model families.

Each template in tests/fixtures/chat_templates/ is transcribed from a model repository's
tokenizer_config.json (cited at its top). A tiny tokenizer trained while the tests run gets the
family's special tokens and the template, as ``template: auto`` would use it. For every family:
the learned tokens decode to exactly each reply and its end-of-turn marker, the tokens before the
final reply are exactly what the server encodes for its prompt, and the template's own refusals
become one-line errors naming the conversation.
"""

from pathlib import Path

import pytest

from medtune.data.tokenize.examples import (
    IGNORE,
    TokenStats,
    encode_conversation,
    encode_conversations,
)
from medtune.errors import MedtuneError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"

# family -> (fixture file, bos, eos, marker strings the family's tokenizer holds as special tokens)
FAMILIES = {
    "qwen2.5": ("qwen2.5.jinja", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "qwen3": ("qwen3.jinja", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]),
    "llama3.1": ("llama3.1.jinja", "<|begin_of_text|>", "<|eot_id|>",
                 ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "deepseek-r1": ("deepseek-r1-distill.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                    ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]),
    "phi3": ("phi3.jinja", "<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "zephyr": ("zephyr.jinja", "<s>", "</s>", []),  # zephyr's role markers are plain text
    "gemma": ("gemma.jinja", "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"]),
    "mistral": ("mistral.jinja", "<s>", "</s>", ["[INST]", "[/INST]"]),
    "llama2": ("llama2.jinja", "<s>", "</s>", []),  # [INST] is plain text in Llama 2's tokenizer
    "gemma3": ("gemma3.jinja", "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"]),
    "phi4": ("phi4.jinja", None, "<|im_end|>", ["<|im_start|>", "<|im_sep|>", "<|im_end|>"]),
    "yi": ("yi.jinja", "<|startoftext|>", "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "glm4": ("glm4.jinja", None, "<|endoftext|>", ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]),
}

SYSTEM = "You are a medical assistant."
Q1, A1 = "What is a normal resting heart rate?", "For adults, 60 to 100 beats per minute."
Q2, A2 = "Is 55 too low?", "Not for a fit adult without symptoms."
TWO_TURNS = [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1},
             {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]
WITH_SYSTEM = [{"role": "system", "content": SYSTEM}] + TWO_TURNS[:2]

# What each family learns in TWO_TURNS (each reply with its end-of-turn marker).
LEARNED = {
    "qwen2.5": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    # Qwen3 writes an (empty) think block before the reply after the last user turn only.
    "qwen3": [A1 + "<|im_end|>", "<think>\n\n</think>\n\n" + A2 + "<|im_end|>"],
    "llama3.1": [A1 + "<|eot_id|>", A2 + "<|eot_id|>"],
    "phi3": [A1 + "<|end|>", A2 + "<|end|>"],
    "zephyr": [A1 + "</s>", A2 + "</s>"],
    "gemma": [A1 + "<end_of_turn>", A2 + "<end_of_turn>"],
    "mistral": [" " + A1 + "</s>", " " + A2 + "</s>"],
    "llama2": [" " + A1 + " </s>", " " + A2 + " </s>"],
    "gemma3": [A1 + "<end_of_turn>", A2 + "<end_of_turn>"],
    "phi4": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
    "yi": [A1 + "<|im_end|>", A2 + "<|im_end|>"],
}


@pytest.fixture(scope="module")
def family_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    made = {}

    def make(family):
        if family not in made:
            path, bos, eos, specials = FAMILIES[family]
            tok = AutoTokenizer.from_pretrained(str(tiny_dir))
            extra = {"eos_token": eos, "additional_special_tokens": specials}
            if bos:
                extra["bos_token"] = bos
            tok.add_special_tokens(extra, replace_extra_special_tokens=False)
            tok.chat_template = (FIXTURES / path).read_text(encoding="utf-8")
            made[family] = tok
        return made[family]

    return make


def learned_runs(tok, ids, labels):
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(run, clean_up_tokenization_spaces=False) for run in runs]


def serving_ids(tok, messages):
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True, bos_token=tok.bos_token or "")["input_ids"])


def test_every_fixture_cites_its_source():
    for path, *_ in FAMILIES.values():
        head = (FIXTURES / path).read_text(encoding="utf-8").split("-#}", 1)[0]
        assert head.startswith("{#- Source: ") and "tokenizer_config.json" in head


@pytest.mark.parametrize("family", sorted(LEARNED))
def test_multi_turn_learns_each_reply_and_the_serving_prompt_is_a_token_prefix(family_tokenizer, family):
    tok = family_tokenizer(family)
    ids, labels = encode_conversation(tok, TWO_TURNS)
    assert learned_runs(tok, ids, labels) == LEARNED[family]
    full = tok.apply_chat_template(TWO_TURNS, tokenize=False, bos_token=tok.bos_token or "")
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == full
    prompt = serving_ids(tok, TWO_TURNS[:3])
    assert ids[:len(prompt)] == prompt  # what the server encodes for the last turn
    assert labels[len(prompt) - 1] == IGNORE and labels[len(prompt)] != IGNORE  # the reply starts there


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3", "llama3.1", "phi3", "zephyr", "llama2", "gemma3", "phi4",
                                    "yi"])
def test_system_prompt_single_turn(family_tokenizer, family):
    tok = family_tokenizer(family)
    ids, labels = encode_conversation(tok, WITH_SYSTEM)
    assert learned_runs(tok, ids, labels) == [LEARNED[family][-1].replace(A2, A1)]
    prompt = serving_ids(tok, WITH_SYSTEM[:2])
    assert ids[:len(prompt)] == prompt and SYSTEM in tok.decode(prompt)


def test_gemma_refuses_a_system_role(family_tokenizer):
    with pytest.raises(MedtuneError, match=r"^conversation 1 \(user: 'What is a normal resting heart rate\?'\): "
                                           r"chat template 'gemma': the template refuses it: System role not supported$"):
        encode_conversation(family_tokenizer("gemma"), WITH_SYSTEM)


@pytest.mark.parametrize("family", ["gemma", "mistral", "llama2"])
def test_roles_must_alternate(family_tokenizer, family):
    bad = [{"role": "user", "content": Q1}, {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]
    with pytest.raises(MedtuneError, match="the template refuses it: .*roles must alternate"):
        encode_conversations(family_tokenizer(family), [TWO_TURNS, bad], 512)


def test_error_names_the_failing_conversation_in_a_batch(family_tokenizer):
    bad = [{"role": "user", "content": "second"}, {"role": "user", "content": "x"},
           {"role": "assistant", "content": "y"}]
    with pytest.raises(MedtuneError, match=r"^conversation 3 \(user: 'second'\)"):
        encode_conversations(family_tokenizer("gemma"), [TWO_TURNS, TWO_TURNS, bad], 512)


@pytest.mark.parametrize("messages", [WITH_SYSTEM, [{"role": "system", "content": SYSTEM}] + TWO_TURNS])
def test_mistral_with_a_system_message_is_refused(family_tokenizer, messages):
    """Mistral v3 writes the system message into the final user turn of a prompt only: a rendered
    conversation (ending with a reply) has none, so the model would be trained on prompts it is
    never served. Refused instead of trained on silently."""
    with pytest.raises(MedtuneError, match="chat template 'mistral/llama2': reply 1 does not follow its serving prompt"):
        encode_conversation(family_tokenizer("mistral"), messages)


def test_deepseek_r1_generation_prompt_is_caught(family_tokenizer):
    """R1's serving prompt ends with '<think>\\n', which its own render of a reply lacks: the old
    prefix masking learned each reply from its last character; now it is refused."""
    with pytest.raises(MedtuneError, match=r"chat template 'deepseek': reply 1 does not follow its serving "
                                           r"prompt \(which ends '.*<｜Assistant｜><think>\\n'\)"):
        encode_conversation(family_tokenizer("deepseek-r1"), TWO_TURNS)


def test_qwen3_reasoning_learn_mask_drop(family_tokenizer):
    tok = family_tokenizer("qwen3")
    trace = "Resting rates below 60 are bradycardia; athletes often sit at 50."
    msgs = TWO_TURNS[:3] + [{"role": "assistant", "content": A2, "reasoning_content": trace}]
    ids, labels = encode_conversation(tok, msgs)
    assert learned_runs(tok, ids, labels) == [A1 + "<|im_end|>", f"<think>\n{trace}\n</think>\n\n{A2}<|im_end|>"]
    ids, labels = encode_conversation(tok, msgs, reasoning="mask")
    assert learned_runs(tok, ids, labels) == [A1 + "<|im_end|>", A2 + "<|im_end|>"]
    assert trace in tok.decode(ids)
    ids, labels = encode_conversation(tok, msgs, reasoning="drop")
    assert learned_runs(tok, ids, labels) == LEARNED["qwen3"]
    # The same trace written inline as a <think> block gives the same tokens.
    inline = TWO_TURNS[:3] + [{"role": "assistant", "content": f"<think>\n{trace}\n</think>\n\n{A2}"}]
    assert encode_conversation(tok, inline) == encode_conversation(tok, msgs)


def test_qwen3_drops_past_turns_reasoning_by_its_own_rule(family_tokenizer):
    tok = family_tokenizer("qwen3")
    msgs = [TWO_TURNS[0], {"role": "assistant", "content": A1, "reasoning_content": "old thoughts"}, *TWO_TURNS[2:]]
    ids, labels = encode_conversation(tok, msgs)
    assert learned_runs(tok, ids, labels) == LEARNED["qwen3"]
    assert "old thoughts" not in tok.decode(ids)


def test_inline_reasoning_for_a_template_without_a_reasoning_field(family_tokenizer):
    tok = family_tokenizer("qwen2.5")
    msgs = TWO_TURNS[:1] + [{"role": "assistant", "content": A1, "reasoning_content": "Think."}]
    ids, labels = encode_conversation(tok, msgs)
    assert learned_runs(tok, ids, labels) == [f"<think>\nThink.\n</think>\n\n{A1}<|im_end|>"]


@pytest.mark.parametrize(("message", "error"), [
    ({"role": "assistant", "content": "<think>never closed " + A1}, "a <think> block without its closing </think>"),
    ({"role": "user", "content": Q2, "reasoning_content": "?"}, "a reasoning trace on a user turn"),
])
def test_bad_reasoning_input_is_one_line_error(family_tokenizer, message, error):
    msgs = [{"role": "user", "content": Q1}, message] if message["role"] == "assistant" else [message]
    msgs = msgs + ([{"role": "assistant", "content": A2}] if message["role"] == "user" else [])
    with pytest.raises(MedtuneError, match=rf"^conversation 1 .*chat template 'chatml/qwen': {error}"):
        encode_conversation(family_tokenizer("qwen3"), msgs)


def test_a_template_that_raises_is_a_one_line_error(family_tokenizer, tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.chat_template = "{{ raise_exception('bad ' + messages[0]['content']) }}"
    with pytest.raises(MedtuneError, match=r"^conversation 1 \(user: 'q'\): chat template 'custom': "
                                           r"the template refuses it: bad q$"):
        encode_conversation(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_a_token_straddling_header_and_reply_is_split(tiny_dir):
    """A header ending in a space: byte-level BPE joins that space to the reply's first word. The
    reply is tokenized on its own, as the model generates it after the serving prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}"
                         "{% else %}{{ 'A: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}")
    msgs = [{"role": "user", "content": "Fever?"}, {"role": "assistant", "content": "the fever will pass."}]
    full = tok.apply_chat_template(msgs, tokenize=False)
    start = full.index("the fever")
    whole = tok(full, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert any(a < start < b for a, b in whole)  # the precondition: one token spans " the"
    ids, labels = encode_conversation(tok, msgs)
    assert learned_runs(tok, ids, labels) == ["the fever will pass.<|endoftext|>"]
    assert ids[:len(serving_ids(tok, msgs[:1]))] == serving_ids(tok, msgs[:1])


def test_stats_count_verified_examples(family_tokenizer):
    stats = TokenStats()
    encode_conversations(family_tokenizer("llama3.1"), [TWO_TURNS, WITH_SYSTEM], 512, stats=stats)
    assert stats.verified == 2 and stats.examples == 2
