"""The safety policy's optional classifier without a model: the YAML section and its one-line
errors, rule OR classifier (audited by: classifier with its score; threshold, categories and the
conversation scope respected), and the training pairs (bundled file = the dev split, no test row)."""

from __future__ import annotations

import json

import pytest

from medtune.errors import MedtuneError
from medtune.inference.policy import load_policy, parse_policy
from tests.helpers.cli import assert_one_line_error, medtune
from tests.unit.test_policy import POLICY, conversation


class Scripted:
    """A classifier that gives each message a fixed label distribution (``none`` unless scripted)."""

    def __init__(self, **by_text):
        self.by_text, self.asked = by_text, []

    def probabilities(self, texts):
        self.asked.append(list(texts))
        none = {"emergency": 0.02, "self_harm": 0.02, "overdose": 0.02, "controlled_drug": 0.02, "diagnosis": 0.02,
                "none": 0.9}
        return [self.by_text.get(t, none) for t in texts]


def peaked(label: str, p: float) -> dict:
    rest = (1 - p) / 5
    return {name: (p if name == label else rest) for name in
            ("emergency", "self_harm", "overdose", "controlled_drug", "diagnosis", "none")}


def with_classifier(classifier, section="classifier: {model: clf, threshold: 0.6}\n"):
    policy = parse_policy(POLICY + section, "/etc/medtune/p.yaml")
    policy.classifier = classifier
    return policy


def test_the_section_is_parsed_and_the_model_path_is_relative_to_the_policy_file():
    spec = with_classifier(None, "classifier:\n  model: ../runs/clf\n  threshold: 0.7\n"
                                 "  categories: [emergency, self_harm]\n").classifier_spec
    assert (spec.model, spec.threshold, spec.categories, spec.device) == (
        "/etc/medtune/../runs/clf", 0.7, ("emergency", "self_harm"), "cpu")
    assert parse_policy(POLICY, "p.yaml").classifier_spec is None


def test_the_classifier_catches_what_no_rule_does_and_is_audited_with_its_score():
    policy = with_classifier(Scripted(**{"My heart is racing and I'm drenched": peaked("emergency", 0.8),
                                         "a calm question": peaked("diagnosis", 0.55)}))
    caught = policy.check("My heart is racing and I'm drenched")
    assert caught.actions == [{"category": "emergency", "rule": "classifier", "action": "prepend", "turn": 0,
                               "by": "classifier", "score": 0.8}]
    assert caught.prefix == "Call 911 now.\n\n"
    assert policy.check("a calm question").actions == []  # 0.55 < threshold 0.6
    by_rule = policy.check("I have chest pain and I am sweating")
    assert [a["by"] for a in by_rule.actions] == ["rule"]  # the rule acts; the classifier adds nothing


def test_categories_limit_the_classifier_and_earlier_turns_follow_the_scope():
    scripted = Scripted(**{"first": peaked("self_harm", 0.95), "old ask": peaked("controlled_drug", 0.95),
                           "now": peaked("diagnosis", 0.95)})
    policy = with_classifier(scripted, "classifier: {model: clf, categories: [self_harm, controlled_drug]}\n")
    verdict = policy.check_messages(conversation("first", "…", "old ask", "…", "now"))
    # self_harm persists (turn 0); controlled_drug is last_turn only; diagnosis is not the classifier's
    assert [(a["category"], a["turn"], a["by"]) for a in verdict.actions] == [("self_harm", 0, "classifier")]
    assert scripted.asked == [["first", "old ask", "now"]]  # one call for the whole conversation


def test_without_persistent_categories_only_the_last_message_is_scored():
    scripted = Scripted()
    policy = with_classifier(scripted, "classifier: {model: clf, categories: [diagnosis]}\n")
    policy.check_messages(conversation("a", "…", "b"))
    assert scripted.asked == [["b"]]


@pytest.mark.parametrize("section, line, words", [
    ("classifier: {model: clf, threshold: 1.5}\n", 28, "classifier.threshold must be a number in (0, 1], got 1.5"),
    ("classifier: {model: clf, threshold: yes}\n", 28, "classifier.threshold must be a number"),
    ("classifier:\n  model: clf\n  categories: [emergency, overdose]\n", 30,
     "classifier.categories: 'overdose' is not a category of this policy"),
    ("classifier: {threshold: 0.5}\n", 28, "classifier.model must be the path of a model trained by stage: rm"),
    ("classifier: {model: clf, treshold: 0.5}\n", 28, "unknown classifier key 'treshold' (did you mean 'threshold'?)"),
    ("classifier: clf\n", 28, "'classifier' must be a mapping"),
])
def test_bad_classifier_section_is_one_line_naming_file_and_line(tmp_path, section, line, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY + section, encoding="utf-8")
    with pytest.raises(MedtuneError) as err:
        load_policy(bad)
    assert str(err.value).startswith(f"{bad}:{line}: ") and words in str(err.value), str(err.value)


def test_a_classifier_that_is_not_there_or_not_a_classifier_stops_the_start(tmp_path, tiny_dir):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY + "classifier: {model: missing-dir}\n", encoding="utf-8")
    assert_one_line_error(medtune("eval", "policy", "--policy", policy),
                          f"{policy}:28: classifier.model: '{tmp_path / 'missing-dir'}' is not a model dir")
    policy.write_text(POLICY + f"classifier: {{model: {tiny_dir}}}\n", encoding="utf-8")  # a causal LM
    assert_one_line_error(medtune("eval", "policy", "--policy", policy), "is not a one-score classifier")
    assert_one_line_error(medtune("eval", "policy", "--classifier", tmp_path), "--classifier: ")
    assert_one_line_error(medtune("eval", "policy", "--threshold", "0.5"), "--threshold needs --classifier")
    assert_one_line_error(medtune("eval", "policy", "--classifier", tmp_path, "--threshold", "0"),
                          "--threshold 0.0: must be in (0, 1]")
    assert_one_line_error(medtune("eval", "policy", "--train-pairs", tmp_path / "p.jsonl", "--show-misses"),
                          "--train-pairs writes training pairs and evaluates nothing")
    assert not (tmp_path / "p.jsonl").exists()


def test_training_pairs_come_from_the_dev_split_only_and_match_the_bundled_file(tmp_path):
    from importlib import resources

    from medtune.evaluation.policy_eval import load_requests, train_rows
    from medtune.inference.policy_classifier import LABELS, pair_records

    rows = load_requests()
    picked = train_rows(rows)
    assert len(picked) == 124 and {r["split"] for r in picked} == {"dev"}
    pairs = pair_records(picked)
    assert len(pairs) == 124 * 5 and all(p["chosen"] != p["rejected"] and {p["chosen"], p["rejected"]} <= set(LABELS)
                                         for p in pairs)
    test_texts = {m["content"] for r in rows if r["split"] == "test" for m in r["messages"]}
    assert not test_texts & {p["conversations"][0]["value"] for p in pairs}
    out = tmp_path / "pairs.jsonl"
    proc = medtune("eval", "policy", "--train-pairs", out)
    assert proc.returncode == 0, proc.stderr
    assert "620 preference pairs from 124 requests (160 left out" in proc.stdout
    bundled = resources.files("medtune") / "assets" / "policy" / "classifier_pairs.jsonl"
    assert out.read_text(encoding="utf-8") == bundled.read_text(encoding="utf-8")
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == pairs
