"""Argument parsers of ``medtune data ...`` (argparse only: ``medtune --help`` stays fast)."""

from __future__ import annotations

import argparse

from medtune.cli.groups import command_group

H = "medtune.cli.data:"


def add_data(sub) -> None:
    """Add ``medtune data convert|clean|generate|mix|split|stats|feedback``."""
    dsub = command_group(sub, "data", "convert, clean, de-identify, generate, mix, split, inspect data",
                         "convert,clean,generate,mix,split,stats,feedback")
    for add in (_convert, _clean, _generate, _mix, _split, _stats, _feedback):
        add(dsub)


def _reading(p, workers: bool = True, fmt: str = "auto") -> None:
    """Options shared by every command that reads data files (``--workers`` where it is used)."""
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="data files: JSONL/JSON/.txt/CSV/TSV/Parquet in any supported layout")
    p.add_argument("--format", default=fmt,
                   help="input layout (default: auto-detect)" if fmt == "auto" else f"input layout (default: {fmt})")
    p.add_argument("--map", action="append", default=[], metavar="SRC=DST",
                   help="rename an input column before reading, e.g. --map ask=question")
    p.add_argument("--encoding", help="input text encoding (default: detect UTF-8 / UTF-16 / GB18030)")
    p.add_argument("--strict", action="store_true",
                   help="stop with an error at the first record that cannot be used "
                        "(default: skip it, count it, report file:line)")
    if workers:
        p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")


def _convert(dsub) -> None:
    p = dsub.add_parser(
        "convert", help="any supported layout -> unified JSONL (messages / preference / choice ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medtune data convert huatuo.json chatdoctor.json -o sft.jsonl
  medtune data convert dialogues.csv --encoding gb18030 --map ask=question -o qa.jsonl
  medtune data convert AdvertiseGen/train.json --prompt-column content --response-column summary -o adgen.jsonl
  medtune data convert apollo/test/zh.json -o apollo_zh.jsonl        # multiple choice
""")
    _reading(p)
    p.add_argument("-o", "--out", required=True, help="output JSONL")
    p.add_argument("--prompt-column", help="column holding the prompt (as P-Tuning v2's --prompt_column)")
    p.add_argument("--response-column", help="column holding the answer (as --response_column)")
    p.add_argument("--source", help="the `source` of every record (default: its own, else the file name)")
    p.add_argument("--report", help="write the per-file counts and skip examples to this JSON file")
    p.set_defaults(handler=H + "cmd_convert")


def _clean(dsub) -> None:
    p = dsub.add_parser(
        "clean", help="dedup, quality filters, language, decontamination, PII de-identification",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medtune data clean sft.jsonl -o sft.clean.jsonl --report clean_report.json
  medtune data clean sft.jsonl -o out.jsonl --lang zh --max-chars 4000 --decontaminate apollo/test/zh.json
  medtune data clean sft.jsonl -o out.jsonl --tokenizer runs/tiny --max-tokens 1024 --no-near-dup
""")
    _reading(p)
    p.add_argument("-o", "--out", required=True, help="output JSONL")
    p.add_argument("--report", help="write what was removed and why (counts + sampled examples), JSON")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    p.add_argument("--no-near-dup", action="store_true", help="keep near duplicates")
    p.add_argument("--near-threshold", type=float, default=0.8,
                   help="MinHash Jaccard above which two records are near duplicates (default 0.8)")
    p.add_argument("--no-quality", action="store_true",
                   help="skip the empty / garbled / truncated / repetitive checks")
    p.add_argument("--no-pii", action="store_true", help="keep personal data (default: replace it)")
    p.add_argument("--min-chars", type=int, default=1, help="shortest response kept (characters)")
    p.add_argument("--max-chars", type=int, help="longest response kept (characters)")
    p.add_argument("--max-tokens", type=int, help="longest record kept in tokens (needs --tokenizer)")
    p.add_argument("--tokenizer", help="model or tokenizer dir for --max-tokens")
    p.add_argument("--lang", choices=["zh", "en"], help="keep only records in this language")
    p.add_argument("--decontaminate", nargs="+", metavar="EVAL",
                   help="evaluation files: drop training records sharing an n-gram with their questions")
    p.add_argument("--ngram", type=int, default=13, help="n-gram size for --decontaminate (default 13)")
    p.set_defaults(handler=H + "cmd_clean")


def _generate(dsub) -> None:
    gsub = command_group(dsub, "generate", "instructions from a knowledge graph or from passages via an LLM",
                         "kg,passage,rewrite,verifiable")
    kg = gsub.add_parser("kg", help="knowledge-graph triples (head, relation, tail) -> Q&A",
                         epilog="example: medtune data generate kg cmekg.csv -o kg_qa.jsonl --phrasings 3")
    kg.add_argument("triples", help="CSV/TSV/JSONL of head,relation,tail triples")
    kg.add_argument("-o", "--out", required=True, help="output JSONL (messages)")
    kg.add_argument("--phrasings", type=int, default=3, help="question phrasings per head+relation")
    kg.add_argument("--lang", default="auto", choices=["auto", "zh", "en"])
    kg.add_argument("--seed", type=int, default=0)
    kg.add_argument("--strict", action="store_true", help="stop at the first bad triple")
    kg.set_defaults(handler=H + "cmd_generate_kg")
    ps = gsub.add_parser(
        "passage", help="an OpenAI-compatible LLM writes Q&A grounded in each passage",
        epilog="example: medtune data generate passage tcm_texts.txt -o tcm_qa.jsonl "
               "--endpoint http://127.0.0.1:8000/v1 --model qwen2.5-7b-instruct --cache runs/gen-cache")
    ps.add_argument("passages", help=".txt (paragraphs) or JSONL with text (+id)")
    ps.add_argument("-o", "--out", required=True, help="output JSONL (messages)")
    ps.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    ps.add_argument("--model", required=True, help="model name the endpoint serves")
    ps.add_argument("--api-key", help="Bearer key (default: $OPENAI_API_KEY if set)")
    ps.add_argument("--min-chars", type=int, default=50,
                    help="skip passages shorter than this (counted; default 50)")
    ps.add_argument("--questions", type=int, default=3, help="Q&A pairs asked per passage")
    ps.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ps.add_argument("--retries", type=int, default=4, help="retries per request (backoff doubles)")
    ps.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    ps.add_argument("--temperature", type=float, default=0.7)
    ps.add_argument("--min-support", type=float, default=0.6,
                    help="fraction of an answer's words that must occur in the passage (default 0.6)")
    ps.add_argument("--cache", help="cache dir: replies are kept so a re-run pays nothing twice "
                                    "(default: OUT.cache/)")
    ps.set_defaults(handler=H + "cmd_generate_passage")
    rw = gsub.add_parser(
        "rewrite", help="passages -> N rewrites stating the same facts (knowledge augmentation for PT)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medtune data generate rewrite corpus.txt -o corpus.rewrites.jsonl --mode rules --n 4
  medtune data generate rewrite corpus.txt -o corpus.rewrites.jsonl --mode endpoint --n 4 \\
      --endpoint http://127.0.0.1:8000/v1 --model qwen2.5-7b-instruct --questions 2 --qa-out corpus.qa.jsonl

endpoint mode keeps a rewrite only when it is grounded in its passage (--min-support), keeps its
facts (--min-coverage), is new and at most twice as long; everything refused is counted and
printed, never written. Counts and failures -> OUT.summary.json.
""")
    rw.add_argument("passages", help=".txt (paragraphs, or one passage per line) or JSONL with text (+id)")
    rw.add_argument("-o", "--out", required=True, help="output JSONL (text, id)")
    rw.add_argument("--mode", default="rules", choices=["rules", "endpoint"],
                    help="rules: sentence permutation + template paraphrase of fact sentences (no model); "
                         "endpoint: an OpenAI-compatible LLM rewrites (needs --endpoint, --model)")
    rw.add_argument("--n", type=int, default=4, help="rewrites per passage (fewer when the rules allow fewer "
                                                     "or the endpoint's are refused)")
    rw.add_argument("--keep-original", action="store_true", help="write each passage before its rewrites")
    rw.add_argument("--min-chars", type=int, default=1, help="skip passages shorter than this (counted)")
    rw.add_argument("--seed", type=int, help="rules: the random draws (default 0)")
    llm = rw.add_argument_group("endpoint mode")
    llm.add_argument("--endpoint", help="base URL, e.g. http://127.0.0.1:8000/v1")
    llm.add_argument("--model", help="model name the endpoint serves")
    llm.add_argument("--api-key", help="Bearer key (default: $OPENAI_API_KEY if set)")
    llm.add_argument("--questions", type=int, help="Q&A pairs asked per passage too (default 0); needs --qa-out")
    llm.add_argument("--qa-out", help="output JSONL (messages) for the Q&A pairs")
    llm.add_argument("--concurrency", type=int, help="requests in flight (default 4)")
    llm.add_argument("--retries", type=int, help="retries per request, backoff doubling (default 4)")
    llm.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    llm.add_argument("--temperature", type=float, help="sampling temperature (default 0.9: diverse rewrites)")
    llm.add_argument("--min-support", type=float,
                     help="share of a rewrite's (or answer's) words that must occur in the passage (default 0.8)")
    llm.add_argument("--min-coverage", type=float,
                     help="share of the passage's distinct words a rewrite must keep (default 0.6)")
    llm.add_argument("--cache", help="cache dir: replies are kept so a re-run pays nothing twice "
                                     "(default: OUT.cache/)")
    rw.set_defaults(handler=H + "cmd_generate_rewrite")
    vf = gsub.add_parser(
        "verifiable", help="multiple-choice questions -> open problems with a reference answer (grpo + answer_match)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medtune data generate verifiable cmexam_test.jsonl medqa_train.jsonl -o verifiable.jsonl
  medtune data generate verifiable cmb.json -o verifiable.jsonl --instruction "请直接给出答案。"

Each question becomes a conversation: the question, then the right option's text (the reference
answer_match checks); the letter and options are kept under "meta". Skipped and counted, never
rephrased: questions that need their options (下列哪项 / which of the following), odd-one-out
questions (不包括 / except), answers naming other options (以上都是), multi-select, an answer inside
another option's text, duplicate options, answers over --max-answer-chars; unreadable records and
answers not among the options (file:line), as data convert counts them.
""")
    _reading(vf, workers=False, fmt="choice")
    vf.add_argument("-o", "--out", required=True, help="output JSONL (messages + meta)")
    vf.add_argument("--max-answer-chars", type=int, default=40,
                    help="skip questions whose right option is longer (counted; default 40)")
    vf.add_argument("--instruction", default="", help='appended to every question, e.g. "请直接给出答案。"')
    vf.add_argument("--report", help="write the counts and skip examples to this JSON file")
    vf.set_defaults(handler=H + "cmd_generate_verifiable")


def _mix(dsub) -> None:
    p = dsub.add_parser(
        "mix", help="mix sources by weight (down/up-sampling), seeded; `source` kept per record",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medtune data mix medical.jsonl:0.7 general.jsonl:0.3 --total 50000 -o mix.jsonl
  medtune data mix a.jsonl b.jsonl -o all.jsonl        # no weights: everything, shuffled
""")
    p.add_argument("sources", nargs="+", metavar="FILE[:WEIGHT]", help="unified JSONL (or any format)")
    p.add_argument("-o", "--out", required=True, help="output JSONL; counts go to OUT.mix.json")
    p.add_argument("--total", type=int, help="records in the output (default: no source upsampled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-shuffle", action="store_true", help="keep sources in order, one after another")
    p.set_defaults(handler=H + "cmd_mix")


def _split(dsub) -> None:
    p = dsub.add_parser("split", help="train / validation split, stratified by source",
                        epilog="example: medtune data split mix.jsonl --val 0.05 -o data/")
    p.add_argument("input", help="unified JSONL (or any format)")
    p.add_argument("-o", "--out", required=True, help="output dir: train.jsonl, validation.jsonl")
    p.add_argument("--val", required=True, help="validation fraction (0.05) or record count (500)")
    p.add_argument("--stratify", default="source", help="record key to stratify by (default source; "
                                                        "'none' to turn off)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=H + "cmd_split")


def _stats(dsub) -> None:
    p = dsub.add_parser("stats", help="records, tokens, turns, languages, duplicates, length histogram",
                        epilog="example: medtune data stats sft.jsonl --tokenizer runs/tiny --plot len.png")
    _reading(p, workers=False)  # one streaming pass
    p.add_argument("--tokenizer", help="count tokens with this model / tokenizer dir")
    p.add_argument("--plot", help="write a length histogram PNG here")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(handler=H + "cmd_stats")


def _feedback(dsub) -> None:
    fsub = command_group(dsub, "feedback", "ratings, corrections and regenerations stored while serving",
                         "export")
    p = fsub.add_parser(
        "export", help="served feedback -> preference pairs (stage: dpo) and KTO records",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  medtune data feedback export --db runs/sft/feedback.db -o pairs.jsonl
  medtune data feedback export --db postgresql://medtune@db/medtune -o pairs.jsonl --kto kto.jsonl
""")
    p.add_argument("--db", required=True, help="the serving database: a SQLite file or a postgresql:// URL")
    p.add_argument("-o", "--out", required=True, help="preference pairs JSONL (prompt, chosen, rejected)")
    p.add_argument("--kto", help="also write KTO records (prompt, completion, label) here")
    p.set_defaults(handler=H + "cmd_feedback_export")
