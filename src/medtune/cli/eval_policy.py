"""``medtune eval policy``: a safety policy on labelled requests — confusion table per split, recall
per category, false positives on ordinary questions.

Example::

    medtune eval policy                                        # bundled policy, bundled 248 requests
    medtune eval policy --policy clinic.yaml --data requests.jsonl --output runs/eval/policy
    medtune eval policy --train-pairs runs/policy/pairs.jsonl   # stage: rm pairs, test split left out
    medtune eval policy --classifier runs/policy-classifier/rm --threshold 0.6
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.evaluation.policy_eval import markdown_table
from medtune.files import atomic_write_text


def cmd_eval_policy(args) -> int:
    from medtune.evaluation.policy_eval import evaluate_policy, load_requests
    from medtune.files import guard_outputs
    from medtune.inference.policy import load_policy

    if args.policy == "none":
        raise MedtuneError("--policy none: nothing to evaluate (give a policy YAML or 'default')")
    if args.train_pairs and (args.classifier or args.output or args.show_misses or args.policy != "default"):
        raise MedtuneError("--train-pairs writes training pairs and evaluates nothing: give it without "
                           "--policy, --classifier, --output and --show-misses")
    if args.threshold is not None and not args.classifier:
        raise MedtuneError("--threshold needs --classifier")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise MedtuneError(f"--threshold {args.threshold}: must be in (0, 1]")
    policy_file = None if args.policy == "default" else args.policy
    inputs = {"--policy": policy_file, "--data": args.data, "--classifier": args.classifier}
    if args.output or args.train_pairs:
        guard_outputs({"--output": args.output, "--train-pairs": args.train_pairs}, inputs)
    rows = load_requests(args.data)
    if args.train_pairs:
        return _write_pairs(rows, args.train_pairs)
    policy = load_policy(args.policy)
    if args.classifier:
        _attach_classifier(policy, args.classifier, args.threshold)
    report = evaluate_policy(policy, rows)
    sections = [f"policy: {policy.source} (sha256 {policy.sha256[:12]})"]
    compare = {}
    if policy.classifier is not None:
        from medtune.evaluation.policy_eval import ClassifierAlone

        spec = policy.classifier_spec
        sections.append(f"classifier: {spec.model} (threshold {spec.threshold}, categories "
                        f"{', '.join(spec.categories) or 'all'}); tables: rules + classifier")
        rules_only = copy.copy(policy)
        rules_only.classifier = None
        compare = {"rules alone": evaluate_policy(rules_only, rows),
                   "classifier alone (most probable label)": evaluate_policy(ClassifierAlone(policy.classifier), rows)}
        report["compare"] = {name: r["splits"] for name, r in compare.items()}
    for split, scores in report["splits"].items():
        if split == "all" and len(report["splits"]) == 2:
            continue  # one split: "all" repeats it
        lines = [f"### split: {split} ({scores['n']} requests)", "", markdown_table(scores), "",
                 _summary("recall", scores)]
        lines += [_summary(name, other["splits"][split]) for name, other in compare.items()]
        sections.append("\n".join(lines))
    text = "\n\n".join(sections)
    print(text)
    if args.show_misses:
        for miss in report["misses"]:
            print(f"miss [{miss['split']}] {miss['id']}: {miss['category']} -> {miss['predicted']}: {miss['text']}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        body = {"policy": policy.source, "policy_sha256": policy.sha256,
                "classifier": policy.classifier_spec.__dict__ if policy.classifier is not None else None, **report}
        atomic_write_text(out / "policy_eval.json", json.dumps(body, ensure_ascii=False, indent=2) + "\n")
        atomic_write_text(out / "policy_eval.md", text + "\n")
        print(f"-> {out / 'policy_eval.json'}, {out / 'policy_eval.md'}")
    return 0


def _summary(name: str, scores: dict) -> str:
    rate = scores["false_positive_rate"]
    return (f"{name}: " + ", ".join(f"{c} {r:.1%}" for c, r in scores["recall"].items())
            + (f"; false positives on ordinary questions: {scores['false_positives']}/{scores['ordinary']} = {rate:.1%}"
               if rate is not None else ""))


def _write_pairs(rows: list[dict], out) -> int:
    from medtune.evaluation.policy_eval import train_rows
    from medtune.inference.policy_classifier import pair_records

    picked = train_rows(rows)
    if not picked:
        raise MedtuneError("--train-pairs: no single-message request outside the test split to learn from")
    pairs = pair_records(picked)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    left = len(rows) - len(picked)
    print(f"{len(pairs)} preference pairs from {len(picked)} requests ({left} left out: the test split and "
          f"conversations) -> {out}")
    return 0


def _attach_classifier(policy, path: str, threshold: float | None) -> None:
    from medtune.evaluation.policy_eval import CachedClassifier
    from medtune.inference.policy import ClassifierSpec
    from medtune.inference.policy_classifier import PolicyClassifier

    spec = ClassifierSpec(path, 0.5 if threshold is None else threshold)
    policy.classifier_spec = spec
    policy.classifier = CachedClassifier(PolicyClassifier.load(path, src="--classifier"))
