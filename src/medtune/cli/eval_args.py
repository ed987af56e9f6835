"""Arguments of ``medtune eval gen|choice|ppl|judge|report`` (one function per subcommand).

Example::

    medtune eval choice --model runs/sft --data apollo/test/zh.json --limit 200 --output runs/eval/choice
"""

from __future__ import annotations

from medtune.inference.settings import add_generation_args


def _common(p) -> None:
    p.add_argument("--output", required=True, help="output dir (metrics.json; gen, choice and judge add a per-item JSONL)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items (quick runs)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward / generate (default 16)")


def add_gen_args(p, add_model_args) -> None:
    """``eval gen``: generate on a dataset, or score ``--predictions``."""
    add_model_args(p)
    p.set_defaults(model=None)
    for action in p._actions:  # --model is optional here: --predictions needs no model
        if action.dest == "model":
            action.required = False
    p.add_argument("--data", help="dataset with references (any format medtune data reads); 'safety': the "
                                  "bundled safety set, scored by refusal rate ('safety:FILE': your own set)")
    p.add_argument("--predictions", help="JSONL with 'prediction' and 'reference' per line: score only")
    add_generation_args(p, ("max_new_tokens", "enable_thinking", "thinking_budget"))
    p.add_argument("--system", help="system prompt for generation")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad record / predictions line (default: skip and count it)")
    _common(p)


def add_choice_args(p, add_model_args) -> None:
    """``eval choice``: multiple-choice benchmarks, log-likelihood or generation."""
    add_model_args(p)
    p.add_argument("--data", required=True, nargs="+", help="benchmark files in their native layouts")
    p.add_argument("--method", default="loglik", choices=("loglik", "generate"),
                   help="loglik: score the answer letter; generate: answer freely, extract the letter")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples from --dev (default 0)")
    p.add_argument("--dev", nargs="+", help="dev files for few-shot examples (default: the sibling dev split if found)")
    add_generation_args(p, ("max_new_tokens", "enable_thinking", "thinking_budget"), defaults={"max_new_tokens": 64},  # one letter, a short reason
                        helps={"max_new_tokens": "for --method generate"})
    _common(p)


def add_ppl_args(p, add_model_args) -> None:
    """``eval ppl``: sliding-window perplexity."""
    add_model_args(p)
    p.add_argument("--data", required=True, nargs="+", help="held-out text (.txt, or any text/messages format)")
    p.add_argument("--window", type=int, default=1024, help="tokens per forward (default 1024)")
    p.add_argument("--stride", type=int, default=512, help="new tokens scored per window (default 512)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record (default: skip and count it)")
    _common(p)


def add_judge_args(p) -> None:
    """``eval judge``: LLM-as-judge through an OpenAI-compatible endpoint."""
    p.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", required=True, help="model name the endpoint serves")
    p.add_argument("--api-key", help="bearer key (default: $OPENAI_API_KEY if set)")
    p.add_argument("--answers", required=True, nargs="+",
                   help="one JSONL per system: id, prompt (or question), answer (or prediction/response)")
    p.add_argument("--rubric", default="dreamer", choices=("dreamer", "sus", "cmb-clin"))
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--retries", type=int, default=3, help="re-asks when a reply cannot be parsed (default 3)")
    p.add_argument("--seed", type=int, default=0, help="answer-order shuffling seed")
    p.add_argument("--output", required=True, help="output dir (metrics.json, judgments.jsonl)")
    p.add_argument("--limit", type=int, help="judge only the first N prompts")
    p.add_argument("--references", help="reference answers by id (cmb-clin): CMB-Clin's CMB-test-qa.json "
                   "or JSONL with id + reference; default: each row's reference field")
    p.add_argument("--cache", help="reply cache dir, shared by reruns (default: OUTPUT/cache)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds per judge request (default 120; judging several answers takes a while)")


def add_report_args(p) -> None:
    """``eval report``: compare runs / eval dirs in one markdown + HTML report."""
    p.add_argument("runs", nargs="+", help="training run dirs and/or eval output dirs")
    p.add_argument("--output", required=True, help="output dir (report.md, report.html, PNGs)")
    p.add_argument("--samples", type=int, default=5, help="sample answers shown side by side (default 5)")


def thinking_settings(args) -> dict:
    """The reasoning settings an eval command was given (none for ``eval ppl``)."""
    return {k: getattr(args, k, None) for k in ("enable_thinking", "thinking_budget")}


def guard_eval_output(output, files, **inputs) -> None:
    """Refuse an ``--output`` dir whose ``files`` would replace an input or land inside one
    (``inputs``: flag name -> path(s), e.g. ``model=args.model``)."""
    from pathlib import Path

    from medtune.files import guard_outputs

    guard_outputs({"--output": [Path(output) / name for name in files]},
                  {f"--{k.replace('_', '-')}": v for k, v in inputs.items()})
