"""``medtune eval gen`` (ROUGE / BLEU, or the safety refusal rate) and ``medtune eval ppl``.

Examples::

    medtune eval gen --model runs/sft --data test.jsonl --output runs/eval/gen --limit 200
    medtune eval gen --predictions preds.jsonl --output runs/eval/gen          # score only, no model
    medtune eval gen --model runs/sft --data safety --output runs/eval/safety  # bundled safety set
    medtune eval ppl --model runs/pt --data heldout.txt --window 1024 --stride 512 --output runs/eval/ppl

Each writes ``metrics.json`` (see :mod:`medtune.evaluation.results`) and prints its table;
``eval gen`` also writes ``generated_predictions.jsonl`` (one row per item). ``--data safety``
(or ``safety:FILE`` for your own ``{id, category, lang, prompt}`` set) switches the metrics to the
refusal rate per category (task ``safety``); see :mod:`medtune.evaluation.safety`.
"""

from __future__ import annotations

import time

from medtune.errors import MedtuneError


def cmd_eval_gen(args) -> int:
    from medtune.evaluation.results import write_result
    from medtune.evaluation.safety import is_safety_spec

    _check_gen_args(args)
    started = time.perf_counter()
    if not is_safety_spec(args.data):
        from medtune.cli.faults import require_extras

        require_extras("jieba", "rouge_chinese", "nltk")  # the metrics' libraries, before generating
    if args.predictions:
        result = _score_predictions(args)
    elif is_safety_spec(args.data):
        result = _eval_safety(args)
    else:
        result = _eval_generation(args)
    result.seconds = round(time.perf_counter() - started, 3)
    write_result(result, args.output, quiet=args.quiet)
    return 0


def _check_gen_args(args) -> None:
    if args.data and args.predictions:
        raise MedtuneError("give --data (to generate) or --predictions (to score), not both")
    if not args.data and not args.predictions:
        raise MedtuneError("nothing to evaluate: give --data with --model, or --predictions FILE")
    if args.data and not args.model:
        raise MedtuneError("--data needs --model to generate with (or score existing outputs with --predictions)")
    _check_counts(args, "batch_size", "limit", "max_new_tokens")
    from medtune.cli.eval_args import guard_eval_output
    from medtune.evaluation.generation import SAMPLES_FILE

    data = None if args.data in (None, "safety") else args.data.removeprefix("safety:")
    guard_eval_output(args.output, ("metrics.json", SAMPLES_FILE), data=data,
                      predictions=args.predictions, model=args.model, adapter=getattr(args, "adapter", None))


def _check_counts(args, *names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise MedtuneError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")


def _load_bot(args):
    from medtune.cli.eval_args import thinking_settings
    from medtune.cli.model_args import model_kwargs
    from medtune.inference.chat import ChatModel

    return ChatModel.load(args.model, **model_kwargs(args), **thinking_settings(args))


def _settings(args, **extra) -> dict:
    keys = ("adapter", "template", "batch_size", "max_new_tokens", "system", "limit")
    return {**{k: getattr(args, k, None) for k in keys}, "temperature": 0.0, **extra}


def _score_predictions(args):
    from medtune.evaluation.generation import (
        gen_summary,
        read_predictions,
        scored_rows,
        write_samples,
    )
    from medtune.evaluation.results import EvalResult

    items, preds, skipped, group_by = read_predictions(args.predictions, args.strict, args.limit)
    rows = scored_rows(items, preds)
    overall, groups = gen_summary(rows)
    return EvalResult(task="gen", model=args.model or str(args.predictions), data=[str(args.predictions)],
                      overall=overall, group_by=group_by, groups=groups, skipped=skipped,
                      settings={"limit": args.limit, "mode": "predictions"},
                      samples=write_samples(rows, args.output))


def _eval_generation(args):
    from medtune.evaluation.generation import (
        gen_summary,
        generate_replies,
        load_gen_items,
        scored_rows,
        write_samples,
    )
    from medtune.evaluation.results import EvalResult

    items, skipped, group_by = load_gen_items(args.data, args.strict, args.limit)
    bot = _load_bot(args)
    replies = generate_replies(bot, [it.messages for it in items], args.batch_size, args.max_new_tokens,
                               args.system, progress=not args.quiet)
    rows = scored_rows(items, replies)
    overall, groups = gen_summary(rows)
    return EvalResult(task="gen", model=args.model, data=[str(args.data)], overall=overall,
                      group_by=group_by, groups=groups, skipped=skipped, settings=_settings(args),
                      samples=write_samples(rows, args.output))


def _eval_safety(args):
    from medtune.evaluation.generation import generate_replies, write_samples
    from medtune.evaluation.results import EvalResult
    from medtune.evaluation.safety import (
        load_safety_set,
        refusal_by_category,
        refusal_summary,
        safety_rows,
    )

    items = load_safety_set(args.data, args.limit)
    bot = _load_bot(args)
    replies = generate_replies(bot, [it["prompt"] for it in items], args.batch_size, args.max_new_tokens,
                               args.system, progress=not args.quiet, desc="safety")
    rows = safety_rows(items, replies)
    return EvalResult(task="safety", model=args.model, data=[args.data], overall=refusal_summary(rows),
                      group_by="category", groups=refusal_by_category(rows), settings=_settings(args),
                      samples=write_samples(rows, args.output))


def cmd_eval_ppl(args) -> int:
    from medtune.evaluation.perplexity import check_window, perplexity_by_file, read_texts
    from medtune.evaluation.results import EvalResult, write_result

    _check_counts(args, "batch_size", "limit")
    from medtune.cli.eval_args import guard_eval_output

    guard_eval_output(args.output, ("metrics.json",), data=args.data, model=args.model,
                      adapter=getattr(args, "adapter", None))
    check_window(args.window, args.stride, None)  # before the model loads; positions checked after
    started = time.perf_counter()
    texts, skipped = read_texts(args.data, args.strict, args.limit)
    bot = _load_bot(args)
    overall, per_file = perplexity_by_file(bot.model, bot.tokenizer, texts, args.window, args.stride,
                                           args.batch_size, progress=not args.quiet)
    if not overall["tokens"]:
        raise MedtuneError(f"{', '.join(args.data)}: too short to score (need at least 2 tokens)")
    settings = {"window": args.window, "stride": args.stride, "batch_size": args.batch_size,
                "limit": args.limit, "adapter": args.adapter, "template": args.template}
    result = EvalResult(task="ppl", model=args.model, data=[str(p) for p in args.data], overall=overall,
                        group_by="file", groups=per_file, skipped=skipped, settings=settings,
                        seconds=round(time.perf_counter() - started, 3))
    write_result(result, args.output, quiet=args.quiet)
    return 0
