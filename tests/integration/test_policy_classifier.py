"""The policy classifier end to end on a tiny model: ``stage: rm`` trained (LoRA, a few steps) on
the pairs ``medtune eval policy --train-pairs`` writes, loaded from a policy YAML, acting beside
the rules in a ReplyService (audited by: classifier with its score), and measured by
``medtune eval policy --classifier`` (rules alone vs rules + classifier vs classifier alone)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import medtune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier_dir(tiny_dir, tmp_path_factory):
    from medtune.config import stage_from_dict
    from medtune.recipes.run import run_stage

    root = tmp_path_factory.mktemp("policy-clf")
    pairs = root / "pairs.jsonl"
    proc = medtune("eval", "policy", "--train-pairs", pairs)
    assert proc.returncode == 0, proc.stderr
    raw = {"stage": "rm", "model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": [str(pairs)], "max_length": 128},
           "adapter": {"method": "lora", "rank": 4, "alpha": 8},
           "train": {"max_steps": 3, "learning_rate": 5e-3, "batch_size": 4, "save_steps": -1},
           "output": str(root / "rm")}
    run_stage(stage_from_dict(raw, "test.yaml"), quiet=True)
    return root / "rm"


def test_a_trained_classifier_scores_every_label(classifier_dir):
    from medtune.inference.policy_classifier import LABELS, PolicyClassifier

    clf = PolicyClassifier.load(classifier_dir)
    probs = clf.probabilities(["我胸口疼，一直出冷汗", "How does aspirin work?"])
    assert [sorted(p) for p in probs] == [sorted(LABELS)] * 2
    assert all(abs(sum(p.values()) - 1) < 1e-5 for p in probs) and probs[0] != probs[1]
    assert clf.probabilities(["How does aspirin work?"]) == probs[1:]  # alone or in a batch: the same


def test_a_policy_file_with_a_classifier_acts_beside_the_rules_and_audits_it(classifier_dir, tmp_path):
    from medtune.inference.policy import bundled_policy_path
    from medtune.inference.service import build_service

    policy_file = tmp_path / "clinic.yaml"
    # threshold 0.01: a barely trained classifier gives every label about 1/6, so it flags them all
    policy_file.write_text(bundled_policy_path().read_text(encoding="utf-8")
                           + f"classifier: {{model: {classifier_dir.name}, threshold: 0.01, "
                             "categories: [emergency, diagnosis]}\n", encoding="utf-8")
    (tmp_path / classifier_dir.name).symlink_to(classifier_dir)  # the path is relative to the policy file
    sink = []
    service = build_service(policy_file, None, {"model": "m"}, audit=type("S", (), {"write": lambda _, r: sink.append(r)})())
    prepared = service.prepare([{"role": "user", "content": "I want to kill myself"}])
    service.finish(prepared, "", 0.0)
    by = {a["category"]: a for a in sink[0]["actions"]}
    assert by["self_harm"]["by"] == "rule" and prepared.fixed_reply is not None
    assert by["emergency"]["by"] == "classifier" and 0.01 <= by["emergency"]["score"] <= 1
    assert by["diagnosis"]["rule"] == "classifier" and "overdose" not in by  # only the listed categories


def test_eval_policy_measures_rules_alone_and_with_the_classifier(classifier_dir, tmp_path):
    proc = medtune("eval", "policy", "--classifier", classifier_dir, "--threshold", "0.9", "--output", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert "### split: test (124 requests)" in proc.stdout and "\nrules alone: emergency 95.5%" in proc.stdout
    assert "\nclassifier alone (most probable label): " in proc.stdout
    report = json.loads((tmp_path / "o" / "policy_eval.json").read_text(encoding="utf-8"))
    assert report["classifier"]["threshold"] == 0.9 and set(report["compare"]) == {
        "rules alone", "classifier alone (most probable label)"}
    assert report["compare"]["rules alone"]["test"]["false_positives"] == 0
