"""One-stage domain adaptation: text and conversations trained together by a schedule, packed or
not, with gradient accumulation; the lineage records the mixture the trainer actually saw."""

from __future__ import annotations

import json

import pytest

from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, write_jsonl
from tests.helpers.stages import stage_config

pytestmark = pytest.mark.slow

TEXTS = ["高血压的典型症状是头痛头晕。", "糖尿病的一线用药是二甲双胍。", "感冒应到呼吸内科就诊。",
         "偏头痛患者应避免熬夜。", "哮喘的常见表现是喘息。"]


def seen_rows(tiny_dir, tmp_path, name, **data):
    """Train a mixed stage; return (bucket of every sample the dataloader gave, labels of each, lineage)."""
    from transformers import TrainerCallback

    text = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS] * 4)  # 20 text records
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS] * 2)  # 8
    seen = {}

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen["buckets"] = list(train_dataloader.dataset["bucket"])
            columns = train_dataloader.dataset.column_names
            seen["starts"] = list(train_dataloader.dataset["position_ids"]) if "position_ids" in columns else None
            seen["labels"] = list(train_dataloader.dataset["labels"])
            seen["ids"] = list(train_dataloader.dataset["input_ids"])
            seen["batches"] = sum(1 for _ in train_dataloader)

    data = {"train": [str(text), str(chat)], **data}
    cfg = stage_config(tiny_dir, [text, chat], tmp_path / name, "sft", data=data,
                       train={"epochs": 2, "batch_size": 2, "grad_accum": 2})
    result = run_stage(cfg, quiet=True, callbacks=[Record()])
    lineage = json.loads((result.output / "lineage.json").read_text(encoding="utf-8"))
    return seen, lineage, result


@pytest.mark.parametrize("packing", ["false", "true"])
def test_anneal_mixture_trains_the_scheduled_samples_and_records_them(tiny_dir, tmp_path, packing):
    seen, lineage, result = seen_rows(tiny_dir, tmp_path, f"mix-{packing}", packing=packing, mixture="anneal",
                                      weights=[0.9, 0.1], final_weights=[0.1, 0.9], mixture_phases=2)
    mix = lineage["mixture"]
    rows = {s["entry"].rsplit("/", 1)[-1]: s["rows"] for s in mix["sources"]}
    n = sum(rows.values())
    assert mix["samples"] == len(seen["buckets"]) == 2 * n  # train.epochs x the rows of all sources
    first, last = mix["phases"]
    half = len(seen["buckets"]) // 2 + len(seen["buckets"]) % 2
    # the record is what the dataloader gave, phase by phase
    assert [seen["buckets"][:half].count(b) for b in (0, 1)] == list(first["counts"].values())
    assert [seen["buckets"][half:].count(b) for b in (0, 1)] == list(last["counts"].values())
    assert list(first["counts"].values())[0] / first["samples"] == pytest.approx(0.9, abs=1 / first["samples"])
    assert list(last["counts"].values())[1] / last["samples"] == pytest.approx(0.9, abs=1 / last["samples"])
    assert sum(sum(e.values()) for e in mix["epochs"]) == mix["samples"]
    assert list(mix["seen"].values()) == [seen["buckets"].count(0), seen["buckets"].count(1)]
    # gradient accumulation: one update per 2 batches of 2, over the whole schedule once
    assert result.metrics["global_steps"] == -(-mix["samples"] // 4)
    # loss: every text token; a conversation's assistant tokens only
    for i, (bucket, labels, ids) in enumerate(zip(seen["buckets"], seen["labels"], seen["ids"])):
        starts = {0} if seen["starts"] is None else {j for j, p in enumerate(seen["starts"][i]) if p == 0}
        learned = {j for j, label in enumerate(labels) if label != -100 and j > 0}  # label 0 is never used
        if bucket == 0:  # text: every token but each segment's first
            assert learned == set(range(1, len(ids))) - starts
            assert all(labels[j] == ids[j] for j in learned)
        else:  # a conversation: the prompt is masked
            assert 0 < len(learned) < len(ids) - 5
    if packing == "true":
        assert lineage["tokenization"]["rows"] < lineage["tokenization"]["examples"]


def test_constant_mixture_without_packing_keeps_the_weights(tiny_dir, tmp_path):
    seen, lineage, _ = seen_rows(tiny_dir, tmp_path, "const", mixture="constant", weights=[1, 3])
    total = len(seen["buckets"])
    assert lineage["mixture"]["phases"][0]["counts"] == {lineage["mixture"]["sources"][0]["entry"]: total // 4,
                                                         lineage["mixture"]["sources"][1]["entry"]: total - total // 4}
    assert seen["buckets"].count(1) == total - total // 4


def test_text_and_conversations_without_a_mixture_are_refused(tiny_dir, tmp_path):
    from medtune.errors import MedtuneError

    text = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS])
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": c} for c in CONVERSATIONS])
    cfg = stage_config(tiny_dir, [text, chat], tmp_path / "refused", "sft")
    with pytest.raises(MedtuneError, match="all files must have one shape"):
        run_stage(cfg, quiet=True)
