"""Vocabulary expansion: old ids kept, new rows = mean of old rows, outputs on old tokens unchanged,
the domain corpus tokenizes shorter, the CLI works end to end, and a pt stage trains the new rows."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from medtune.cli.main import main
from medtune.config import stage_from_dict
from medtune.errors import MedtuneError
from medtune.models.vocab import (
    CJK_RUN,
    REPORT,
    extend_vocabulary,
    learn_domain_tokens,
    select_tokens,
)
from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, write_jsonl
from tests.helpers.cli import medtune

pytestmark = pytest.mark.slow

TCM = [
    "中医认为气血不足会导致面色苍白、乏力和头晕，可用黄芪、当归补气养血。",
    "脾胃虚弱的病人常见食欲不振、腹胀便溏，治疗以健脾益气为主，可用四君子汤。",
    "肝气郁结表现为情志抑郁、胸胁胀痛，常用柴胡疏肝散疏肝理气。",
    "阴虚火旺可见五心烦热、盗汗、口干，治疗宜滋阴降火，方用知柏地黄丸。",
    "风寒感冒表现为恶寒重、发热轻、无汗、鼻塞流清涕，治疗宜辛温解表。",
    "风热感冒表现为发热重、微恶风、咽喉肿痛，治疗宜辛凉解表，可用银翘散。",
    "针灸治疗失眠常取神门、三阴交、百会等穴位，配合中药调理效果更好。",
    "黄芪味甘性微温，归脾经和肺经，能补气升阳、固表止汗。",
    "当归味甘辛性温，归肝经、心经和脾经，能补血活血、调经止痛。",
    "高血压病人宜低盐饮食，中医辨证多属肝阳上亢，可用天麻钩藤饮。",
]
CORPUS_TEXT = "\n".join(TCM * 4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tcm.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def extended(tiny_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ext") / "model"
    return out, extend_vocabulary(tiny_dir, [corpus], add=60, out=out, min_freq=4, max_chars=4)


def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def n_tokens(tok, texts):
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def test_select_tokens_golden():
    freqs = {"高血压": 20, "高血": 22, "血压": 25, "高": 22, "血": 25, "压": 25, "高血压病": 6, "病": 6,
             "肝": 10, "甲": 5, "乙": 5}
    base_len = dict.fromkeys(freqs, 1) | {"高血压": 3, "高血": 2, "血压": 2, "高血压病": 4, "肝": 2, "甲": 2, "乙": 2}
    picks = select_tokens(freqs, base_len, add=10)
    # 高血压 consumes 20 occurrences of 高血 / 血压 (left: 2 / 5); 高血压病 then costs 高血压 + 病 =
    # 2 tokens and does not consume 血压 again (already counted inside 高血压); ties go to the
    # smaller string (乙 U+4E59 < 甲 U+7532 < 血 U+8840).
    assert [(p["token"], p["saved"]) for p in picks] == [
        ("高血压", 40), ("肝", 10), ("高血压病", 6), ("乙", 5), ("甲", 5), ("血压", 5), ("高血", 2)]
    assert [p["token"] for p in select_tokens(freqs, base_len, add=2)] == ["高血压", "肝"]


def test_old_ids_kept_and_new_tokens_added(tiny_dir, extended):
    out, report = extended
    base, ext = tokenizer(tiny_dir), tokenizer(out)
    assert all(ext.convert_ids_to_tokens(i) == t for t, i in base.get_vocab().items())
    added = [a["token"] for a in report["added"]]
    sizes = report["vocab_size"]
    assert len(added) == 60 == len(ext) - len(base) == sizes["after"] - sizes["before"]
    new_ids = list(range(len(base), len(ext)))
    assert ext.convert_tokens_to_ids(added) == [a["id"] for a in report["added"]] == new_ids
    assert all(len(base(t, add_special_tokens=False)["input_ids"]) > 1 for t in added)
    assert all(len(ext(t, add_special_tokens=False)["input_ids"]) == 1 for t in added)
    assert all(ext.decode(ext(t, add_special_tokens=False)["input_ids"]) == t for t in TCM)
    assert "黄芪" in added and not any(ch.isascii() for t in added for ch in t)
    assert ext.chat_template == base.chat_template and ext.chat_template


def test_new_rows_are_the_mean_and_old_outputs_unchanged(tiny_dir, extended):
    out, report = extended
    old_n = report["vocab_size"]["before"]
    base, ext = model(tiny_dir), model(out)
    old_emb, new_emb = base.get_input_embeddings().weight, ext.get_input_embeddings().weight
    assert new_emb.shape[0] == report["vocab_size"]["after"] == ext.config.vocab_size
    assert torch.equal(new_emb[:old_n], old_emb)
    assert torch.allclose(new_emb[old_n:], old_emb.mean(0).expand(60, -1), atol=1e-7)
    assert torch.equal(ext.get_output_embeddings().weight, new_emb)  # tied head: same matrix
    ids = tokenizer(tiny_dir)(TCM[0] + " fever and cough", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before, after = base(input_ids=ids).logits, ext(input_ids=ids).logits
    assert torch.allclose(after[..., :old_n], before, atol=1e-6)


def test_untied_bf16_head_gets_the_mean_of_its_own_rows(tiny_dir, corpus, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(tiny_dir)
    cfg.tie_word_embeddings = False
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "untied")
    tokenizer(tiny_dir).save_pretrained(tmp_path / "untied")
    report = extend_vocabulary(tmp_path / "untied", [corpus], add=10, out=tmp_path / "ext", min_freq=4)
    tensors = load_file(str(tmp_path / "ext" / "model.safetensors"))
    assert {v.dtype for v in tensors.values()} == {torch.bfloat16}  # the base's dtype, not fp32
    base, ext = model(tmp_path / "untied"), model(tmp_path / "ext")
    old_n = report["vocab_size"]["before"]
    head, new_head = base.get_output_embeddings().weight, ext.get_output_embeddings().weight
    assert new_head.data_ptr() != ext.get_input_embeddings().weight.data_ptr()
    def as_saved(row):
        return row.to(torch.bfloat16).float().expand(10, -1)

    emb_mean = base.get_input_embeddings().weight.mean(0)
    assert torch.equal(new_head[old_n:], as_saved(head.mean(0)))
    assert torch.equal(ext.get_input_embeddings().weight[old_n:], as_saved(emb_mean))
    assert not torch.allclose(head.mean(0), emb_mean)
    ids = tokenizer(tiny_dir)(TCM[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(ext(input_ids=ids).logits[..., :old_n], base(input_ids=ids).logits, atol=1e-6)


def test_report_counts_match_the_tokenizers(tiny_dir, extended):
    out, report = extended
    saved = json.loads((out / REPORT).read_text(encoding="utf-8"))
    assert saved == report
    before, after = n_tokens(tokenizer(tiny_dir), TCM * 4), n_tokens(tokenizer(out), TCM * 4)
    assert report["corpus_tokens"] == {"before": before, "after": after, "ratio": round(after / before, 4)}
    assert report["corpus_tokens"]["ratio"] < 0.8
    chars = len(CORPUS_TEXT.replace("\n", ""))
    assert report["chars_per_token"]["after"] == round(chars / after, 4) > report["chars_per_token"]["before"]
    for a in report["added"]:  # occurrences, overlapping ones included
        assert a["freq"] == len(re.findall(f"(?={a['token']})", CORPUS_TEXT)) >= 4
    first = report["examples"][0]
    assert "".join(first["pieces"]) == first["text"] and first["tokens_after"] < first["tokens_before"]


def test_options_change_the_tokens(tiny_dir):
    tok = tokenizer(tiny_dir)
    texts = TCM * 4
    def tokens(**options):
        return [p["token"] for p in learn_domain_tokens(tok, texts, **{"add": 200, "min_freq": 4} | options)]

    picks = tokens()
    assert tokens() == picks  # deterministic
    assert tokens(add=5) == picks[:5]
    assert max(map(len, picks)) == 4
    assert set(map(len, tokens(max_chars=1))) == {1}
    assert max(map(len, tokens(max_chars=2))) == 2
    more = texts + ["少阳病寒热往来。"] * 2
    rare, common = (learn_domain_tokens(tok, more, add=300, min_freq=f) for f in (2, 4))
    assert any("少阳" in p["token"] for p in rare) and not any("少" in p["token"] for p in common)
    assert min(p["freq"] for p in rare) == 2 and min(p["freq"] for p in common) >= 4
    with pytest.raises(MedtuneError, match=r"the most frequent occurs 24 times\); lower --min-freq"):
        learn_domain_tokens(tok, texts, add=10, min_freq=25)
    chars = learn_domain_tokens(tok, texts, add=100, min_freq=20, max_chars=1)
    split = {ch for ch in set(CORPUS_TEXT) if CJK_RUN.fullmatch(ch) and CORPUS_TEXT.count(ch) >= 20
             and len(tok.tokenize(ch)) > 1}
    assert {p["token"] for p in chars} == split and "气" in split  # single characters: nothing to consume
    tok.add_tokens([p["token"] for p in chars])
    with pytest.raises(MedtuneError, match="already single tokens; lower --min-freq or raise --max-chars"):
        learn_domain_tokens(tok, texts, add=100, min_freq=20, max_chars=1)




def test_cli_end_to_end(tiny_dir, corpus, tmp_path):
    proc = medtune("-q", "tokenizer", "extend", "--base", tiny_dir, "--corpus", corpus, "--add", 20,
                   "--min-freq", 4, "-o", tmp_path / "ext")
    assert proc.returncode == 0, proc.stderr
    summary = r"^added 20 tokens; domain corpus: ([\d,]+) -> ([\d,]+) tokens \((0\.\d\d)x\)$"
    m = re.search(summary, proc.stdout, re.MULTILINE)
    report = json.loads((tmp_path / "ext" / REPORT).read_text(encoding="utf-8"))
    assert m and int(m[2].replace(",", "")) == report["corpus_tokens"]["after"]
    assert float(m[3]) == round(report["corpus_tokens"]["ratio"], 2)
    again = medtune("-q", "tokenizer", "extend", "--base", tiny_dir, "--corpus", corpus, "--add", 20,
                    "--min-freq", 4, "-o", tmp_path / "ext")
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: --out '{tmp_path / 'ext'}' is not empty; choose an empty dir or pass --overwrite"]
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CONVERSATIONS])
    assert main(["-q", "tokenizer", "extend", "--base", str(tiny_dir), "--corpus", str(corpus), str(chats),
                 "--add", "7", "--min-freq", "4", "-o", str(tmp_path / "ext"), "--overwrite"]) == 0
    report = json.loads((tmp_path / "ext" / REPORT).read_text(encoding="utf-8"))
    assert len(report["added"]) == 7 and report["documents"] == 40 + sum(map(len, CONVERSATIONS))
    assert len(tokenizer(tmp_path / "ext")) == report["vocab_size"]["before"] + 7


@pytest.mark.parametrize(("change", "message"), [
    ({"--base": "nowhere"}, "--base 'nowhere' is not a model dir"),
    ({"--corpus": "missing.txt"}, "missing.txt: no such file"),
    ({"--corpus": "empty.txt"}, "empty.txt: empty (no records)"),
    ({"--corpus": "english.txt"}, "no Chinese (CJK) characters"),
    ({"--add": "0"}, "--add must be at least 1, got 0"),
    ({"--max-chars": "0"}, "--max-chars must be at least 1"),
    ({"--min-freq": "1000"}, "lower --min-freq"),
    ({"-o": "<parent of base>"}, "contains the input --base"),
])
def test_bad_inputs_exit_2_with_one_line(tiny_dir, corpus, tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "english.txt").write_text("fever and cough\n" * 10, encoding="utf-8")
    args = {"--base": str(tiny_dir), "--corpus": str(corpus), "--add": "5", "-o": "out"} | change
    args = {k: str(tiny_dir.parent) if v == "<parent of base>" else v for k, v in args.items()}
    assert main(["-q", "tokenizer", "extend", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def pt_config(model_dir, corpus, out, adapter):
    return stage_from_dict({
        "stage": "pt", "model": {"path": str(model_dir), "device": "cpu"},
        "data": {"train": [str(corpus)], "max_length": 64}, "adapter": adapter,
        "train": {"max_steps": 2, "learning_rate": 1e-2, "batch_size": 4, "logging_steps": 1},
        "output": str(out)}, "test.yaml")


def test_pt_full_trains_the_new_rows(extended, corpus, tmp_path):
    out, report = extended
    old_n = report["vocab_size"]["before"]
    result = run_stage(pt_config(out, corpus, tmp_path / "pt", {"method": "full"}), quiet=True)
    key = "model.embed_tokens.weight"
    before = load_file(str(out / "model.safetensors"))[key]
    after = load_file(str(result.output / "model.safetensors"))[key]
    assert after.shape == before.shape
    changed = (after[old_n:] - before[old_n:]).abs().amax(dim=1) > 1e-4
    assert changed.all()
    assert len(tokenizer(result.output)) == report["vocab_size"]["after"]
    lineage = json.loads((result.output / "lineage.json").read_text(encoding="utf-8"))
    assert lineage["tokenization"]["label_tokens"] == report["corpus_tokens"]["after"]  # pt sees the new tokens


def test_pt_lora_modules_to_save_trains_and_saves_the_new_rows(extended, corpus, tmp_path):
    out, report = extended
    old_n = report["vocab_size"]["before"]
    adapter = {"method": "lora", "rank": 4, "alpha": 8, "modules_to_save": ["embed_tokens", "lm_head"]}
    result = run_stage(pt_config(out, corpus, tmp_path / "pt", adapter), quiet=True)
    saved = load_file(str(result.output / "adapter_model.safetensors"))
    rows = [v for k, v in saved.items() if "embed_tokens" in k]
    heads = [v for k, v in saved.items() if "lm_head" in k]
    assert len(rows) == len(heads) == 1 and rows[0].shape[0] == report["vocab_size"]["after"]
    assert torch.equal(heads[0], rows[0])  # the tiny model's head is tied and stays tied
    before = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    assert ((rows[0][old_n:] - before[old_n:]).abs().amax(dim=1) > 1e-4).all()
    from medtune.models.load import load_model

    merged = load_model(str(result.output), dtype="float32", device="cpu")
    assert torch.equal(merged.get_input_embeddings().weight, rows[0])
