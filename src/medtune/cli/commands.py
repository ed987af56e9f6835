"""Command handlers behind ``medtune``; each validates input, calls the library, prints a summary.

Example::

    medtune train examples/sft_lora.yaml output=runs/sft
"""

from __future__ import annotations

import logging
import os
import sys


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Set medtune's log level and silence library chatter unless ``verbose``; under torchrun only
    rank 0 reports (the other ranks log errors only)."""
    from medtune.recipes.run_dir import is_main_process

    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO, format="%(message)s")
    if not is_main_process():
        logging.getLogger("medtune").setLevel(logging.ERROR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if not verbose:
        import warnings

        # Library deprecation chatter (e.g. peft calling renamed transformers APIs) is not actionable.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        for name in ("transformers", "datasets", "peft", "accelerate", "torch", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if quiet:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' load/save bars


def _print_result(name: str, result) -> None:
    """Print a stage's outcome in one line, from rank 0 only (every rank of a torchrun launch
    returns a result; only rank 0's is the one saved)."""
    from medtune.recipes.run_dir import is_main_process

    if not is_main_process():
        return
    m = result.metrics
    if result.skipped:
        print(f"[{name}] {result.output} already holds this finished run; skipped")
        return
    eval_part = f", eval loss {m['eval_loss']:.4f}" if "eval_loss" in m else ""
    print(f"[{name}] done -> {result.output}  (train loss {m['train_loss']:.4f}{eval_part}, "
          f"{m['global_steps']} steps, {m['train_runtime_s']:.1f}s)")


def _quiet_datasets(quiet: bool) -> None:
    if quiet:  # the env var only works if set before datasets is first imported
        import datasets

        datasets.disable_progress_bars()


def cmd_train(args) -> int:
    from medtune.config import load_stage_config
    from medtune.recipes.run import run_stage

    cfg = load_stage_config(args.config, args.overrides)
    _quiet_datasets(args.quiet)
    _print_result(cfg.stage, run_stage(cfg, overwrite=args.overwrite, quiet=args.quiet))
    return 0


def cmd_pipeline(args) -> int:
    from medtune.config import load_pipeline_config
    from medtune.recipes.pipeline import run_pipeline
    from medtune.recipes.run_dir import is_main_process

    stages = load_pipeline_config(args.config, args.overrides)
    _quiet_datasets(args.quiet)
    silent = args.quiet or not is_main_process()
    results = run_pipeline(stages, overwrite=args.overwrite, quiet=args.quiet,
                           report=(lambda line: None) if silent else print)
    for cfg, result in zip(stages, results):
        _print_result(cfg.name, result)
    return 0


def cmd_model_tiny(args) -> int:
    from pathlib import Path

    from medtune.errors import MedtuneError
    from medtune.files import guard_outputs
    from medtune.models.tiny import TinySpec, build_tiny

    guard_outputs({"-o": args.out}, {"--text": args.text})
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise MedtuneError(f"-o '{args.out}' is a file; give a directory for the model")
    texts = None
    if args.text:
        texts = []
        for path in args.text:
            if not Path(path).is_file():
                raise MedtuneError(f"{path}: no such text file")
            texts += [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not texts:
            raise MedtuneError(f"{', '.join(args.text)}: empty (no text to train the tokenizer on)")
    spec = TinySpec(arch=args.arch, hidden=args.hidden, layers=args.layers, heads=args.heads,
                    kv_heads=args.heads, vocab_size=args.vocab_size, template=args.template, seed=args.seed,
                    segment=args.segment)
    out = build_tiny(args.out, spec, texts)
    print(f"tiny {args.arch} model -> {out}")
    return 0


def cmd_demo(args) -> int:
    from medtune.demo.run import run_demo

    report = run_demo(args.out, overwrite=args.overwrite, quiet=args.quiet, seed=args.seed)
    acc = report["heldout_accuracy"]
    print("held-out fact accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    print(f"report -> {args.out}/report/report.html (and .md), {args.out}/report.json, "
          f"loss curve -> {args.out}/loss.png")
    return 0


def cmd_chat(args) -> int:
    from medtune.cli.model_args import model_kwargs, service_from_args
    from medtune.data.tokenize.templates import template_name
    from medtune.inference.chat import ChatModel

    info = {"model": args.model, "adapter": args.adapter}
    service = service_from_args(args, info, {"--model": args.model, "--adapter": args.adapter})
    bot = ChatModel.load(args.model, **model_kwargs(args),
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         enable_thinking=args.enable_thinking, thinking_budget=args.thinking_budget)
    service.info["template"] = template_name(bot.tokenizer.chat_template)
    chat_loop(bot, args.system, sys.stdin, sys.stdout, service)
    return 0


def chat_loop(bot, system, stdin, stdout, service=None) -> None:
    """Read queries from ``stdin`` until ``stop``/``exit``/EOF; stream replies to ``stdout`` through
    ``service`` (a ReplyService: the policy's prefix, the reply, its suffix; a fixed reply alone).

    With retrieval (``--rag``), the model answers from the retrieved passages and the sources are
    printed, numbered, under the reply; the history keeps the question as typed."""
    from medtune.inference.chat import with_system
    from medtune.inference.service import ReplyService

    service = service or ReplyService()
    interactive = stdin.isatty()
    if interactive:
        print("medtune chat — 'clear' resets the history, 'stop' or 'exit' quits", file=stdout)
    history: list = []
    while True:
        if interactive:
            print("\nUser: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        query = line.strip()
        if query in ("stop", "exit"):
            break
        if query == "clear":
            history = []
            print("(history cleared)", file=stdout, flush=True)
            continue
        if not query:
            continue
        print("Assistant: ", end="", file=stdout, flush=True)
        prepared = service.prepare(with_system(history, system) + [{"role": "user", "content": query}])
        pieces = None if prepared.fixed_reply is not None else bot.stream_messages(prepared.messages)
        citations = prepared.citations
        shown = []
        for piece in service.stream(prepared, pieces, surface="chat"):
            shown.append(piece)
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)
        if citations:
            from medtune.inference.rag import format_citations

            print("Sources:\n" + format_citations(citations), file=stdout, flush=True)
        history = history + [{"role": "user", "content": query},
                             {"role": "assistant", "content": "".join(shown).strip()}]
