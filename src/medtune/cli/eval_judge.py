"""``medtune eval judge``: several systems' answers to the same prompts, scored by an LLM judge.

Examples::

    # two systems' answers to the same prompts (e.g. from ``medtune infer``), DreamerGPT-style
    medtune eval judge --endpoint http://127.0.0.1:8000/v1 --judge-model qwen \\
        --answers runs/base.jsonl runs/sft.jsonl --rubric dreamer --output runs/eval/judge

    # HuaTuo's SUS (safety, usability, smoothness), with a key from $OPENAI_API_KEY
    medtune eval judge --endpoint https://api.openai.com/v1 --judge-model gpt-4o \\
        --answers runs/base.jsonl runs/sft.jsonl --rubric sus --output runs/eval/sus

    # CMB-Clin: prompts from the benchmark, answered by each model, judged against its solutions
    python -c "import json, sys; from medtune.evaluation.answer_files import read_cmb_clin; \\
        [print(json.dumps(r, ensure_ascii=False)) for r in read_cmb_clin(sys.argv[1])]" \\
        CMB-test-qa.json > cmb_clin.jsonl
    medtune infer --model runs/sft --input cmb_clin.jsonl --output runs/sft-cmb.jsonl
    medtune eval judge --endpoint http://127.0.0.1:8000/v1 --judge-model qwen \\
        --answers runs/sft-cmb.jsonl runs/base-cmb.jsonl --rubric cmb-clin --output runs/eval/cmb

Writes ``OUTPUT/judgments.jsonl`` (per prompt: the order answers were shown in, the judge's raw
reply, scores and reasons per system, or why it failed) and ``OUTPUT/metrics.json`` (mean scores
per system overall and per category, rank and wins, failures). Replies are cached in
``OUTPUT/cache`` (or ``--cache``): a rerun pays only for what is missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.files import atomic_write_text


def _check_args(args) -> None:
    for name in ("concurrency", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise MedtuneError(f"--{name} must be at least 1, got {value}")
    if args.timeout <= 0:
        raise MedtuneError(f"--timeout must be positive, got {args.timeout}")


def _load(args):
    """``(systems, items)`` with references attached and checked for the rubric."""
    from medtune.evaluation.answer_files import (
        attach_references,
        load_items,
        read_references,
        require_references,
    )

    systems, items = load_items(args.answers, limit=args.limit)
    if args.references:
        attach_references(items, read_references(args.references), args.references)
    if args.rubric == "cmb-clin":
        require_references(items, args.answers[0])
    return systems, items


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _settings(args, systems: list[str], usage: dict) -> dict:
    from medtune.evaluation.judge import JUDGE_PROMPT_VERSION, JUDGE_TEMPERATURE, RETRY_TEMPERATURE

    return {"rubric": args.rubric, "judge_model": args.judge_model, "endpoint": args.endpoint,
            "systems": dict(zip(systems, args.answers)), "references": args.references,
            "seed": args.seed, "retries": args.retries, "limit": args.limit,
            "temperature": JUDGE_TEMPERATURE, "retry_temperature": RETRY_TEMPERATURE,
            "prompt_version": JUDGE_PROMPT_VERSION, "usage": usage}


def _report(usage: dict, rows: list[dict], out: Path, quiet: bool) -> None:
    """Print the cost line and the first failures; no judgment at all is an error."""
    failed = [r for r in rows if r["status"] != "ok"]
    if not quiet:
        print(f"{len(rows):,} prompts: {usage['requests']:,} requests, {usage['cache_hits']:,} "
              f"from cache, {len(failed):,} failed; tokens: {usage['prompt_tokens']:,} prompt + "
              f"{usage['completion_tokens']:,} completion paid, {usage['saved_tokens']:,} saved")
        for row in failed[:3]:
            print(f"    failed: id {row['id']}: {row['error']}")
    if rows and len(failed) == len(rows):
        raise MedtuneError(f"no judge reply could be parsed ({failed[0]['error']}); "
                           f"see the replies in {out / 'judgments.jsonl'}")


def cmd_eval_judge(args) -> int:
    from medtune.cli.data import progress_bar
    from medtune.cli.eval_args import guard_eval_output
    from medtune.evaluation.judge import Judge, judge_client, judge_result
    from medtune.evaluation.results import write_result

    _check_args(args)
    guard_eval_output(args.output, ("metrics.json", "judgments.jsonl", args.cache or "cache"),
                      answers=args.answers, references=args.references)
    systems, items = _load(args)
    out = Path(args.output)
    client = judge_client(args.endpoint, args.judge_model,
                          api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                          retries=args.retries, timeout=args.timeout,
                          cache_dir=Path(args.cache) if args.cache else out / "cache")
    judge = Judge(client, args.rubric, seed=args.seed, concurrency=args.concurrency)
    start = time.monotonic()
    with progress_bar(len(items), args.quiet, unit="prompt", desc="judge") as advance:
        rows = list(judge.run(items, progress=lambda _id: advance(1)))
    _write_jsonl(out / "judgments.jsonl", rows)
    data = [*args.answers, *([args.references] if args.references else [])]
    result = judge_result(rows, systems, args.rubric, data=data,
                          settings=_settings(args, systems, client.usage),
                          seconds=round(time.monotonic() - start, 2))
    write_result(result, out, quiet=args.quiet)
    _report(client.usage, rows, out, args.quiet)
    return 0
