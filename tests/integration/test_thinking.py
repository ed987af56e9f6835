"""Reasoning at inference on the tiny model with the qwen3 built-in: enable_thinking reaches the
template, and the thinking budget closes an open <think> block after exactly N tokens."""

import pytest

from medtune.inference.reasoning import split_trace
from medtune.inference.settings import GenerationSettings

QUESTION = [{"role": "user", "content": "Is 55 too low?"}]


@pytest.fixture(scope="module")
def qwen3_engine(tiny_dir):
    """The tiny model with the qwen3 template and <think>/</think> as (non-special) added tokens, as
    in Qwen3's tokenizer, scripted to open a think block and then repeat one word forever."""
    from transformers import AutoModelForCausalLM

    from medtune.inference.engines import HFEngine
    from medtune.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_dir), "qwen3")
    tok.add_tokens(["<think>", "</think>"])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    model.resize_token_embeddings(len(tok))
    think, word = tok.convert_tokens_to_ids("<think>"), tok("fever", add_special_tokens=False)["input_ids"][-1]
    forward = model.forward

    def scripted(*args, **kwargs):
        out = forward(*args, **kwargs)
        logits = out.logits
        prefill = logits.shape[1] > 1  # the first step reads the whole prompt: open the block
        logits[:, -1, :] = 0.0
        logits[:, -1, think if prefill else word] = 10.0
        return out

    model.forward = scripted
    return HFEngine(model, tok, name="tiny"), tok, word


def test_enable_thinking_reaches_the_template(qwen3_engine):
    engine, tok, _ = qwen3_engine
    off = tok.decode(engine.encode_chat(QUESTION, enable_thinking=False))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(engine.encode_chat(QUESTION)).endswith("<|im_start|>assistant\n")
    assert engine.encode_chat(QUESTION, enable_thinking=True) == engine.encode_chat(QUESTION)


@pytest.mark.parametrize("budget", [0, 3, 7])
def test_thinking_budget_closes_the_block_after_n_tokens(qwen3_engine, budget):
    engine, tok, word = qwen3_engine
    prompt = engine.encode_chat(QUESTION)
    settings = GenerationSettings(max_new_tokens=budget + 12, thinking_budget=budget)
    [done] = engine.generate([prompt, prompt], settings)[:1]
    # Generated: <think>, `budget` scripted tokens, the forced closing, then the answer goes on.
    closing = tok("\n</think>\n\n", add_special_tokens=False)["input_ids"]
    ids = tok(done.text, add_special_tokens=False)["input_ids"]
    at = ids.index(tok.convert_tokens_to_ids("</think>"))
    assert ids[1:at - 1] == [word] * budget
    assert done.text.startswith("<think>") and "\n</think>\n\n" in done.text
    reasoning, answer = split_trace(done.text)
    piece = tok.decode([word])
    assert reasoning == piece * budget and answer == piece * (12 - len(closing) - 1)
    assert len(closing) >= 2 and done.completion_tokens == budget + 12


def test_without_a_budget_the_block_stays_open(qwen3_engine):
    engine, tok, word = qwen3_engine
    [done] = engine.generate([engine.encode_chat(QUESTION)], GenerationSettings(max_new_tokens=12))
    assert split_trace(done.text) == (tok.decode([word]) * 11, "")


def test_split_trace():
    assert split_trace("<think>\nA\n</think>\n\nB") == ("A", "B")
    assert split_trace("plain answer") == (None, "plain answer")
    assert split_trace("A\n</think>\n\nB", opened=True) == ("A", "B")
    assert split_trace("<think>\nunfinished") == ("unfinished", "")


def test_split_trace_of_a_prompt_opened_block():
    assert split_trace("A\n</think>\n\nB") == ("A", "B")  # DeepSeek-R1: the prompt ends with <think>\n
    assert split_trace("Answer: <think> is a tag") == (None, "Answer: <think> is a tag")


def test_infer_writes_the_trace_as_its_own_field(qwen3_engine, tmp_path):
    import json

    from medtune.inference.batch import run_infer

    engine, tok, word = qwen3_engine
    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "Is 55 too low?"}) + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    run_infer(engine, src, out, GenerationSettings(max_new_tokens=12, thinking_budget=2), progress=False)
    row = json.loads(out.read_text(encoding="utf-8"))
    piece = tok.decode([word])
    assert row["reasoning_content"] == piece * 2 and row["response"] == piece * 5  # 12 = <think> + 2 + closing (4) + 5
    assert "think>" not in row["response"]
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["params"]["thinking_budget"] == 2 and "enable_thinking" not in meta["params"]


def test_eval_scores_the_answer_after_the_trace():
    from medtune.evaluation.extract import extract_answer

    options = {"A": "bradycardia", "B": "normal"}
    assert extract_answer("<think>\nA is tempting, but A fits athletes poorly\n</think>\n\n答案是B", options, False) == "B"
    assert extract_answer("A could be it ... still thinking", options, False) == "A"
    assert extract_answer("<think>\nA? A?", options, False) is None  # the trace never ended: no answer


@pytest.mark.parametrize("text,opened", [
    ("<think>\nA\n</think>\n\nB", False), ("  <think>\n\nA\n\nB\n\n</think>\n\n\nC\n\nD\n", False),
    ("plain answer", False), ("<thinking aloud", False), ("<", False), ("\n\n", False),
    ("<think>\nunfinished\n", False), ("A\n</think>\n\nB", True), ("", True),
])
def test_trace_stream_cut_anywhere_splits_like_the_whole_reply(text, opened):
    """However a reply is cut into stream deltas (a tag split in two, newlines before </think>), the
    pieces join to split_trace's reasoning and answer."""
    import itertools

    from medtune.inference.reasoning import TraceStream, split_reply

    assert split_reply(text, opened) == split_trace(text, opened)
    for cuts in itertools.chain.from_iterable(itertools.combinations(range(1, len(text)), k) for k in (1, 2)):
        stream, pieces = TraceStream(opened), []
        for a, b in itertools.pairwise((0, *cuts, len(text))):
            pieces += stream.feed(text[a:b])
        pieces += stream.finish()
        reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
        assert ((reasoning if stream.reasoned else None), "".join(t for kind, t in pieces if kind == "content")) \
            == split_trace(text, opened), cuts
        assert all(t for _, t in pieces) and not any(t.endswith(("<", "</th")) for kind, t in pieces if kind == "reasoning")
