"""``medtune eval choice``: multiple-choice medical benchmarks in their native files.

Examples::

    medtune eval choice --model runs/sft --data apollo/test/zh.json --shots 3 --limit 200 \\
        --output runs/eval/choice                   # dev shots from apollo/dev/zh.json (found)
    medtune eval choice --model runs/sft --data cmmlu/test/anatomy.csv cmmlu/test/virology.csv \\
        --shots 5 --dev cmmlu/dev/anatomy.csv cmmlu/dev/virology.csv --output runs/eval/cmmlu
    medtune eval choice --model runs/sft --data pubmedqa/ori_pqal.json pubmedqa/test_ground_truth.json \\
        --output runs/eval/pubmedqa                 # the official 500-question test split
    medtune eval choice --model runs/sft --data medagents/medqa/test.jsonl --method generate \\
        --output runs/eval/medqa-gen

Writes ``metrics.json`` (overall and per-subject accuracy; macro-F1 for PubMedQA) and
``predictions.jsonl`` (one line per question) to ``--output``. The prompt format, the multi-answer
rule and the answer extraction are described in :mod:`medtune.evaluation.choice`.
"""

from __future__ import annotations

from medtune.errors import MedtuneError


def cmd_eval_choice(args) -> int:
    """Load the model, evaluate it on ``--data``, write the results; return the exit code."""
    from medtune.cli.eval_args import guard_eval_output, thinking_settings
    from medtune.cli.model_args import model_kwargs
    from medtune.evaluation.choice import prepare_benchmark, run_benchmark
    from medtune.inference.chat import ChatModel

    guard_eval_output(args.output, ("metrics.json", "predictions.jsonl"), data=args.data, dev=args.dev,
                      model=args.model, adapter=getattr(args, "adapter", None))
    bench = prepare_benchmark(args.data, _settings(args))  # bad data fails before the model load
    bot = ChatModel.load(args.model, **model_kwargs(args), **thinking_settings(args))
    name = f"{args.model}+{args.adapter}" if getattr(args, "adapter", None) else args.model
    run_benchmark(bot, bench, args.output, model_name=name, quiet=args.quiet)
    return 0


def _settings(args):
    """Check the numeric flags before the (slow) model load."""
    from medtune.evaluation.choice import ChoiceSettings

    for flag, value, low in (("--shots", args.shots, 0), ("--batch-size", args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1), ("--limit", args.limit, 1)):
        if value is not None and value < low:
            raise MedtuneError(f"{flag} must be >= {low}, got {value}")
    return ChoiceSettings(method=args.method, shots=args.shots, batch_size=args.batch_size,
                          limit=args.limit, max_new_tokens=args.max_new_tokens, dev=list(args.dev or []))
