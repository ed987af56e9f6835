"""``medtune rag index``, ``medtune eval rag``, and the ``--rag`` / ``--rag-k`` flags of chat, infer
and serve.

Example::

    medtune rag index kb/ faq.jsonl -o runs/kb-index
    medtune serve api --model runs/sft --rag runs/kb-index --rag-k 3
    medtune eval rag --index runs/kb-index --data questions.jsonl --model runs/sft --output runs/eval/rag
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medtune.cli.groups import command_group
from medtune.cli.model_args import RAG_EXTRAS
from medtune.errors import MedtuneError


def add_rag(sub) -> None:
    """Add ``medtune rag index``."""
    rsub = command_group(sub, "rag", "retrieval: index documents for --rag on chat / infer / serve", "index")
    p = rsub.add_parser(
        "index", help="index documents (txt, md, jsonl with a 'text' field) with BM25 for --rag",
        epilog="example: medtune rag index kb/ faq.jsonl -o runs/kb-index\n"
               "directories and globs expand to their .txt / .md / .jsonl files; jsonl rows may carry\n"
               "'id', 'title' and 'source' besides 'text'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("docs", nargs="+", help="document files, directories or globs")
    p.add_argument("-o", "--out", required=True, help="index directory to write")
    p.add_argument("--lang", default="auto", choices=("auto", "zh", "en"),
                   help="zh: jieba words + character bigrams; en: stemmed words (default auto: from the text)")
    p.add_argument("--chunk-chars", type=int, default=400,
                   help="passage size in characters (default 400): smaller ranks more precisely, larger "
                        "gives the model more context per source")
    p.add_argument("--embed", metavar="MODEL_DIR",
                   help="also rank by meaning: mean-pooled hidden states of this local model, hybrid with BM25 "
                        "(the model is needed again wherever the index is used)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    p.set_defaults(handler="medtune.cli.rag:cmd_rag_index")


def add_rag_args(p) -> None:
    """Add ``--rag INDEX`` and ``--rag-k N`` (chat, infer, serve api, serve web)."""
    p.add_argument("--rag", metavar="INDEX", help="answer with passages retrieved from this index "
                                                   "(medtune rag index); replies carry numbered citations")
    p.add_argument("--rag-k", type=int, default=3, metavar="N", help="passages per question (default 3)")


def cmd_rag_index(args) -> int:
    from medtune.cli.faults import require_extras
    from medtune.files import guard_outputs

    require_extras(*RAG_EXTRAS)
    from medtune.inference.rag import build_index, expand_inputs

    files = expand_inputs(args.docs)
    guard_outputs({"-o": args.out}, {"DOCS": [str(f) for f in files], "--embed": args.embed})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"-o {out}: is a file; give a directory for the index")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise MedtuneError(f"-o {out}: already holds files; pass --overwrite to replace it")
    manifest = build_index(files, out, args.lang, args.chunk_chars, embed=args.embed)
    counts = manifest["counts"]
    skipped = sum(counts["skipped"].values())
    print(f"rag index: {counts['documents']} documents from {counts['files']} files -> {counts['passages']} "
          f"passages ({manifest['language']}, {manifest['analyzer']['segmenter']}"
          f"{', hybrid with ' + args.embed + ' embeddings' if args.embed else ''})"
          f"{f', {skipped} empty documents skipped' if skipped else ''} -> {out}")
    return 0


def add_eval_rag_args(p, add_model_args) -> None:
    """``medtune eval rag``: retrieval hit@k, and answer accuracy with and without retrieval."""
    from medtune.inference.settings import add_generation_args

    add_model_args(p)
    p.set_defaults(model=None)
    for action in p._actions:  # --model is optional: retrieval alone needs none
        if action.dest == "model":
            action.required = False
    p.add_argument("--index", required=True, help="index dir (medtune rag index)")
    p.add_argument("--data", required=True, help="JSONL: question, doc_id (or doc_ids) and, with --model, answer")
    p.add_argument("--k", type=int, default=3, help="passages retrieved per question (default 3)")
    add_generation_args(p, ("max_new_tokens",), defaults={"max_new_tokens": 48})
    p.add_argument("--output", required=True, help="output dir (metrics.json, predictions.jsonl)")
    p.add_argument("--batch-size", type=int, default=16, help="questions per generate call (default 16)")
    p.set_defaults(handler="medtune.cli.rag:cmd_eval_rag")


def cmd_eval_rag(args) -> int:
    import json
    import time

    from medtune.cli.eval_args import guard_eval_output
    from medtune.cli.faults import require_extras
    from medtune.evaluation.rag_eval import evaluate_rag, read_questions
    from medtune.evaluation.results import EvalResult, write_result
    from medtune.files import atomic_write_text

    for flag in ("k", "batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise MedtuneError(f"--{flag.replace('_', '-')} must be at least 1")
    require_extras(*RAG_EXTRAS)
    from medtune.inference.rag import Retriever

    guard_eval_output(args.output, ["metrics.json", "predictions.jsonl"], data=args.data, index=args.index,
                      model=args.model)
    started = time.perf_counter()
    retriever = Retriever.load(args.index, k=args.k)
    rows = read_questions(args.data, need_answers=args.model is not None)
    bot = None
    if args.model:
        from medtune.cli.model_args import model_kwargs
        from medtune.inference.chat import ChatModel

        bot = ChatModel.load(args.model, **model_kwargs(args))
    result = evaluate_rag(retriever, rows, bot, args.k, args.max_new_tokens, args.batch_size)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.output) / "predictions.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["rows"]))
    write_result(EvalResult(task="rag", model=args.model or "(retrieval only)", data=[args.data],
                            overall=result["scores"], samples="predictions.jsonl",
                            settings={"index": args.index, "k": args.k, "max_new_tokens": args.max_new_tokens,
                                      "index_language": retriever.language},
                            seconds=round(time.perf_counter() - started, 3)),
                 args.output, quiet=args.quiet)
    return 0
