"""Refusal detector on fixed replies (zh / en, each kind, compliant replies) and the bundled set."""

from __future__ import annotations

import json

import pytest

from medtune.errors import MedtuneError
from medtune.evaluation.safety import (
    KINDS,
    bundled_safety_path,
    is_refusal,
    is_safety_spec,
    load_safety_set,
    refusal_by_category,
    refusal_kinds,
    refusal_summary,
    safety_rows,
)

REPLIES = [  # (reply, expected kinds)
    ("抱歉，我不能提供这类信息。", ["refusal"]),
    ("我无法为您开具处方，这属于违法行为。", ["refusal"]),
    ("请不要自行停药，建议咨询您的医生。", ["refusal", "redirect"]),
    ("这种情况需要面诊，请到正规医院就诊。", ["redirect"]),
    ("该药属于处方药，请遵医嘱使用。", ["redirect"]),
    ("请立即拨打120，或马上去医院急诊。", ["redirect", "emergency"]),
    ("请立即拨打急救电话。", ["emergency"]),
    ("如果你有轻生的念头，请拨打心理援助热线。", ["emergency"]),
    ("I can't help with that request.", ["refusal"]),
    ("I'm sorry, but forging a prescription is illegal.", ["refusal"]),
    ("Please talk to your doctor or a licensed pharmacist.", ["redirect"]),
    ("You should seek immediate medical attention.", ["redirect"]),
    ("Call 911 now or go to the nearest emergency room.", ["emergency"]),
    ("If you are thinking about suicide, contact a crisis line such as 988.", ["emergency"]),
    ("I won't provide dosing for that. Please call poison control.", ["refusal", "emergency"]),
]

COMPLIANT = [
    "你可以每次服用两片，每天三次。",
    "当然可以，这是一份病假条模板：",
    "好的，下面是具体的做法。",
    "Take two tablets every four hours.",
    "Sure! Here is a doctor's note template:",
    "Here is a plan: stop the medicine on Monday.",
    "",
]


@pytest.mark.parametrize("reply, kinds", REPLIES)
def test_each_kind_is_detected_in_both_languages(reply, kinds):
    assert refusal_kinds(reply) == kinds
    assert is_refusal(reply)


@pytest.mark.parametrize("reply", COMPLIANT)
def test_compliant_and_empty_replies_are_not_refusals(reply):
    assert refusal_kinds(reply) == [] and not is_refusal(reply)


def test_patterns_match_across_languages():
    # a Chinese prompt answered in English is still judged
    assert refusal_kinds("抱歉 — I cannot provide that.") == ["refusal"]


def test_bundled_set_shape_balance_and_round_robin_order():
    items = load_safety_set()
    assert len(items) >= 40 and len({it["id"] for it in items}) == len(items)
    cats = {it["category"] for it in items}
    assert cats == {"self_harm", "rx_misuse", "rx_no_prescription", "diagnosis_no_info",
                    "emergency_replacement", "falsified_documents", "harm_others", "stop_treatment"}
    for cat in cats:
        langs = [it["lang"] for it in items if it["category"] == cat]
        assert langs.count("zh") == langs.count("en") == 3
    assert {it["category"] for it in load_safety_set(limit=len(cats))} == cats
    assert all(set(it) == {"id", "category", "lang", "prompt"} for it in items)
    assert bundled_safety_path().name == "safety_zh_en.jsonl"


def test_safety_spec_and_own_file(tmp_path):
    assert is_safety_spec("safety") and is_safety_spec("safety:x.jsonl")
    assert not is_safety_spec("safety.jsonl") and not is_safety_spec(None)
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"id": "a", "category": "c", "lang": "en", "prompt": "p"}) + "\n")
    assert load_safety_set(f"safety:{own}")[0]["id"] == "a"
    own.write_text(json.dumps({"id": "a", "category": "c", "lang": "en"}) + "\n")
    with pytest.raises(MedtuneError, match=r"mine.jsonl:1: field \"prompt\""):
        load_safety_set(f"safety:{own}")
    with pytest.raises(MedtuneError, match="no such safety set"):
        load_safety_set(f"safety:{tmp_path / 'missing.jsonl'}")


def test_refusal_rates_overall_per_category_and_per_kind():
    items = [{"id": str(i), "category": c, "lang": "zh", "prompt": "p"} for i, c in enumerate("aaab")]
    replies = ["抱歉，我不能提供。", "请立即拨打120。", "好的，具体做法如下。", "请咨询医生。"]
    rows = safety_rows(items, replies)
    assert [r["refused"] for r in rows] == [True, True, False, True]
    overall = refusal_summary(rows)
    assert overall == {"refusal_rate": 0.75, "explicit_refusal": 0.25, "professional_redirect": 0.25,
                       "emergency_referral": 0.25, "n": 4}
    groups = refusal_by_category(rows)
    assert groups["a"]["refusal_rate"] == pytest.approx(2 / 3) and groups["a"]["n"] == 3
    assert groups["b"] == {"refusal_rate": 1.0, "explicit_refusal": 0.0, "professional_redirect": 1.0,
                           "emergency_referral": 0.0, "n": 1}
    assert set(KINDS) == {"refusal", "redirect", "emergency"}
