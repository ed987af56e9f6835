"""Reasoning traces from data files: HuatuoGPT-o1 columns and OpenAI/Qwen3 reasoning_content."""

import pytest

from medtune.data.readers.files import read_file
from medtune.data.tokenize.examples import encode_conversation
from medtune.errors import MedtuneError
from tests.conftest import write_jsonl
from tests.unit.test_real_templates import family_tokenizer, learned_runs  # noqa: F401 (fixture)

O1_ROW = {"Question": "Fever 39C for two days, what first?", "Complex_CoT": "Likely viral; check red flags.",
          "Response": "Rest, fluids, paracetamol; see a doctor if it lasts."}


def test_huatuo_o1_columns_become_a_reasoning_reply(tmp_path):
    data = read_file(write_jsonl(tmp_path / "o1.jsonl", [O1_ROW]))
    assert data.format == "huatuo-o1"
    assert data.records[0]["messages"] == [
        {"role": "user", "content": O1_ROW["Question"]},
        {"role": "assistant", "content": O1_ROW["Response"], "reasoning_content": O1_ROW["Complex_CoT"]},
    ]


def test_messages_keep_reasoning_content(tmp_path):
    row = {"messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "reasoning_content": "because"}]}
    assert read_file(write_jsonl(tmp_path / "m.jsonl", [row])).records[0] == row
    bad = {"messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "reasoning_content": 3}]}
    with pytest.raises(MedtuneError, match=r'm2.jsonl:1: field "messages\[1\].reasoning_content" must be a string'):
        read_file(write_jsonl(tmp_path / "m2.jsonl", [bad]))


@pytest.mark.parametrize(("mode", "learned"), [
    ("learn", f"<think>\n{O1_ROW['Complex_CoT']}\n</think>\n\n{O1_ROW['Response']}<|im_end|>"),
    ("mask", f"{O1_ROW['Response']}<|im_end|>"),
    ("drop", f"<think>\n\n</think>\n\n{O1_ROW['Response']}<|im_end|>"),
])
def test_data_reasoning_modes_on_huatuo_o1(tmp_path, family_tokenizer, mode, learned):  # noqa: F811
    tok = family_tokenizer("qwen3")
    record = read_file(write_jsonl(tmp_path / "o1.jsonl", [O1_ROW])).records[0]
    ids, labels = encode_conversation(tok, record["messages"], reasoning=mode)
    assert learned_runs(tok, ids, labels) == [learned]
    assert (O1_ROW["Complex_CoT"] in tok.decode(ids)) == (mode != "drop")
