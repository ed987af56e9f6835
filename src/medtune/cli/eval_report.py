"""``medtune eval report``: training runs and eval results compared in report.md + report.html.

Example::

    medtune eval report runs/demo/sft runs/demo/grpo runs/eval/choice-sft --output runs/report
"""

from __future__ import annotations


def cmd_eval_report(args) -> int:
    from medtune.cli.eval_args import guard_eval_output
    from medtune.evaluation.report import write_report

    guard_eval_output(args.output, ("report.md", "report.html"), runs=args.runs)

    md, page = write_report(args.runs, args.output, n_samples=args.samples)
    print(f"report -> {md} and {page} (self-contained)")
    return 0
