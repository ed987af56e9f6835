"""``medtune template check`` through the real CLI: the tiny model, published templates, data files."""

import json

import pytest

from tests.helpers.cli import assert_one_line_error, medtune
from tests.unit.test_real_templates import FIXTURES

R1_TOKENS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}


def tokenizer_dir(tiny_dir, out, fixture, tokens, specials):
    """A copy of the tiny tokenizer carrying a published template and its family's markers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.add_special_tokens({**tokens, "additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tok.chat_template = (FIXTURES / fixture).read_text(encoding="utf-8")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def r1_dir(tiny_dir, tmp_path_factory):
    return tokenizer_dir(tiny_dir, tmp_path_factory.mktemp("r1"), "deepseek-r1-distill.jinja", R1_TOKENS,
                         ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"])


def test_bundled_samples_verified_with_spans_marked(tiny_dir):
    proc = medtune("template", "check", "--model", tiny_dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    n = sum(line.startswith("== ") for line in lines)
    assert n > 5 and lines[-1] == f"{n} conversations verified, template chatml"
    assert "== messages.jsonl:1" in proc.stdout
    # Not a terminal: learned spans in brackets, each reply with its end marker, prompts outside.
    assert "<|im_start|>assistant\n[[" in proc.stdout and "<|im_end|>]]" in proc.stdout
    assert "[[<|im_start|>user" not in proc.stdout


def test_published_deepseek_r1_template_fails_as_is_and_passes_through_its_builtin(r1_dir):
    proc = medtune("template", "check", "--model", r1_dir, "--template", "own")
    assert_one_line_error(proc, "chat template 'deepseek': reply 1 does not follow its serving prompt")
    assert "error: alpaca_history.jsonl:1: " in proc.stderr
    proc = medtune("template", "check", "--model", r1_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith("conversations verified, template deepseek-r1")


def test_published_gemma2_template_refuses_a_system_prompt(tiny_dir, tmp_path):
    model = tokenizer_dir(tiny_dir, tmp_path / "gemma", "gemma.jinja", {"bos_token": "<bos>", "eos_token": "<eos>"},
                          ["<start_of_turn>", "<end_of_turn>"])
    data = tmp_path / "d.jsonl"
    rows = [[{"role": "user", "content": "Fever?"}, {"role": "assistant", "content": "Rest."}],
            [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Cough?"},
             {"role": "assistant", "content": "Fluids."}]]
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    proc = medtune("template", "check", "--model", model, "--data", data)
    assert_one_line_error(proc, f"{data}:2: chat template 'gemma': the template refuses it: System role not supported")


def test_a_template_unlike_the_tokenizers_own_is_named_with_file_and_line(tiny_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n" + json.dumps({"messages": [{"role": "user", "content": "Fever?"},
                                                     {"role": "assistant", "content": "Rest."}]}) + "\n",
                    encoding="utf-8")
    proc = medtune("template", "check", "--model", tiny_dir, "--data", data, "--template", "llama3")
    assert_one_line_error(proc, f"{data}:2: chat template 'llama3': the serving prompt before reply 1 differs "
                                "from the tokenizer's own template's")


def test_bad_input_is_one_line(tiny_dir, tmp_path):
    assert_one_line_error(medtune("template", "check", "--model", tmp_path / "nope"), "not found")
    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"text": "plain"}) + "\n", encoding="utf-8")
    assert_one_line_error(medtune("template", "check", "--model", tiny_dir, "--data", text), "no conversations")
    assert_one_line_error(medtune("template", "check", "--model", tiny_dir, "--template", "lama3"),
                          "unknown template 'lama3'")
