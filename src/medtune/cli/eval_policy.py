"""``medtune eval policy``: a safety policy on labelled requests — confusion table per split, recall
per category, false positives on ordinary questions.

Example::

    medtune eval policy                                        # bundled policy, bundled 248 requests
    medtune eval policy --policy clinic.yaml --data requests.jsonl --output runs/eval/policy
"""

from __future__ import annotations

import json
from pathlib import Path

from medtune.errors import MedtuneError


def cmd_eval_policy(args) -> int:
    from medtune.evaluation.policy_eval import evaluate_policy, load_requests, markdown_table
    from medtune.files import atomic_write_text, guard_outputs
    from medtune.inference.policy import load_policy

    if args.policy == "none":
        raise MedtuneError("--policy none: nothing to evaluate (give a policy YAML or 'default')")
    if args.output:
        policy_file = None if args.policy == "default" else args.policy
        guard_outputs({"--output": args.output}, {"--policy": policy_file, "--data": args.data})
    policy = load_policy(args.policy)
    report = evaluate_policy(policy, load_requests(args.data))
    sections = []
    for split, scores in report["splits"].items():
        if split == "all" and len(report["splits"]) == 2:
            continue  # one split: "all" repeats it
        rate = scores["false_positive_rate"]
        sections.append(f"### split: {split} ({scores['n']} requests)\n\n{markdown_table(scores)}\n\n"
                        "recall: " + ", ".join(f"{c} {r:.1%}" for c, r in scores["recall"].items())
                        + (f"; false positives on ordinary questions: {rate:.1%}" if rate is not None else ""))
    text = f"policy: {policy.source} (sha256 {policy.sha256[:12]})\n\n" + "\n\n".join(sections)
    print(text)
    if args.show_misses:
        for miss in report["misses"]:
            print(f"miss [{miss['split']}] {miss['id']}: {miss['category']} -> {miss['predicted']}: {miss['text']}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        body = {"policy": policy.source, "policy_sha256": policy.sha256, **report}
        atomic_write_text(out / "policy_eval.json", json.dumps(body, ensure_ascii=False, indent=2) + "\n")
        atomic_write_text(out / "policy_eval.md", text + "\n")
        print(f"-> {out / 'policy_eval.json'}, {out / 'policy_eval.md'}")
    return 0
