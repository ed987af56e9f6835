"""`medtune train` and the chat template: refusals name the data file and line, the first
conversations get `medtune template check`'s serving-prompt check before training, and the lineage
counts the verified masks."""

from __future__ import annotations

import json
import shutil

import pytest

from medtune.errors import MedtuneError
from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, write_jsonl
from tests.helpers.stages import stage_config

pytestmark = pytest.mark.slow

# Generation blocks mark the replies, but a trained reply follows "assistant " where the server
# prompts with "assistant\n": every mask verifies, yet the model would learn a prompt it never sees.
SPACE_BEFORE_REPLY = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant "
    "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_lineage_counts_the_verified_masks(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 2)
    result = run_stage(stage_config(tiny_dir, data, tmp_path / "out", "sft", train={"max_steps": 1}), quiet=True)
    tokenization = json.loads((result.output / "lineage.json").read_text(encoding="utf-8"))["tokenization"]
    assert tokenization["masks_verified"] == tokenization["examples"] == 8


def test_a_refused_conversation_names_its_file_and_line(tiny_dir, tmp_path):
    bad = [{"role": "user", "content": "Fever?", "reasoning_content": "hmm"}, {"role": "assistant", "content": "Rest."}]
    rows = [{"messages": c} for c in CONVERSATIONS] * 2  # past the conversations checked before training
    data = write_jsonl(tmp_path / "sft.jsonl", rows[:6] + [{"messages": bad}] + rows[6:])
    with pytest.raises(MedtuneError) as err:
        run_stage(stage_config(tiny_dir, data, tmp_path / "out", "sft"), quiet=True)
    assert str(err.value) == (f"{data}:7: chat template 'chatml': a reasoning trace on a user turn "
                              "(only assistant turns reason)")
    assert not (tmp_path / "out").exists()


def test_the_first_conversations_get_the_serving_prompt_check(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from medtune.data.tokenize.examples import encode_conversations

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = SPACE_BEFORE_REPLY
    tok.save_pretrained(model)
    assert encode_conversations(tok, CONVERSATIONS, 256)  # the masks alone verify
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS])
    with pytest.raises(MedtuneError) as err:
        run_stage(stage_config(model, data, tmp_path / "out", "sft"), quiet=True)
    assert str(err.value) == (f"{data}:1: chat template 'chatml/qwen': the training tokens before the final reply "
                              "are not the serving prompt")
    assert not (tmp_path / "out").exists()
