"""``medtune data ...``: convert, clean, generate, mix, split and inspect training data.

Examples::

    medtune data convert huatuo.json chatdoctor.json -o sft.jsonl
    medtune data clean sft.jsonl -o sft.clean.jsonl --report clean.json
    medtune data generate kg cmekg.csv -o kg_qa.jsonl
    medtune data generate rewrite corpus.txt -o corpus.rewrites.jsonl --n 4
    medtune data generate rewrite corpus.txt -o rw.jsonl --mode endpoint --endpoint URL --model qwen
    medtune data generate verifiable cmexam.jsonl -o verifiable.jsonl
    medtune data mix sft.clean.jsonl:0.8 general.jsonl:0.2 --total 20000 -o mix.jsonl
    medtune data split mix.jsonl --val 0.05 -o data/
    medtune data stats data/train.jsonl --tokenizer runs/tiny --plot lengths.png
    medtune data feedback export --db runs/sft/feedback.db -o pairs.jsonl --kto kto.jsonl
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.files import atomic_output, atomic_write_text, guard_outputs

SHOWN_EXAMPLES = 3
UPSAMPLE_WARN = 10  # data mix warns when a source is repeated more than this many times


# ---------------------------------------------------------------------------------------------
# shared pieces


def parse_map(pairs: list[str]) -> dict[str, str]:
    """``["ask=question"]`` -> ``{"ask": "question"}``; a malformed pair is a one-line error."""
    out = {}
    for pair in pairs:
        src, sep, dst = pair.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise MedtuneError(f"--map {pair!r}: expected SRC=DST, e.g. --map ask=question")
        out[src.strip()] = dst.strip()
    return out


def read_options(args, **extra):
    """The ReadOptions of a command's reading flags (``--format --map --encoding --strict``)."""
    from medtune.data.readers.formats import format_name
    from medtune.data.readers.stream import ReadOptions

    if args.encoding:
        import codecs

        try:
            codecs.lookup(args.encoding)
        except LookupError:
            raise MedtuneError(f"--encoding '{args.encoding}': unknown encoding "
                               "(e.g. utf-8, utf-16, utf-32, gb18030)") from None
    columns = parse_map(getattr(args, "map", []))
    if getattr(args, "prompt_column", None):
        columns[args.prompt_column] = "prompt"
    if getattr(args, "response_column", None):
        columns[args.response_column] = "response"
    return ReadOptions(format=format_name(args.format), on_error="raise" if args.strict else "count",
                       encoding=args.encoding, columns=columns, keep_meta=True, **extra)


@contextmanager
def progress_bar(total: int, quiet: bool, unit: str = "B", desc: str = ""):
    """Yield ``advance(n)``: a tqdm bar on stderr, or a no-op when ``quiet``."""
    if quiet:
        yield lambda n: None
        return
    from tqdm.auto import tqdm

    scale = unit == "B"
    with tqdm(total=total, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
              desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update


def _check_out(inputs, out, **others) -> Path:
    """Refuse an ``-o`` (or another output flag in ``others``) that is, holds or lies in an input."""
    guard_outputs({"-o": out, **{f"--{k}": v for k, v in others.items()}}, {"input": list(inputs)})
    return Path(out)


def print_tallies(tallies, out: Path, seconds: float) -> None:
    """Per-file read / written / skipped lines, each skip reason with file:line examples."""
    width = max(len(t.path) for t in tallies)
    for t in tallies:
        skipped = sum(t.skipped.values())
        print(f"{t.path:<{width}}  {t.format or '-':<10} {t.encoding or '-':<9} read {t.read:>9,}  "
              f"written {t.written:>9,}  skipped {skipped:>7,}")
        for reason, n in t.skipped.most_common():
            print(f"    {n:>8,}  {reason}")
            for example in t.examples.get(reason, [])[:SHOWN_EXAMPLES]:
                print(f"              e.g. {example}")
    read, written = sum(t.read for t in tallies), sum(t.written for t in tallies)
    rate = read / seconds if seconds > 0 else 0.0
    print(f"total: read {read:,}, written {written:,}, skipped {read - written:,} -> {out} "
          f"({seconds:.1f}s, {rate:,.0f} records/s)")


def write_json(path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# convert


def cmd_convert(args) -> int:
    from medtune.data.readers.convert import ConvertOptions, convert_files

    out = _check_out(args.inputs, args.out, report=args.report)
    options = ConvertOptions(read=read_options(args, source=args.source), workers=args.workers)
    started = time.perf_counter()
    total = sum(Path(p).stat().st_size for p in args.inputs if Path(p).is_file())
    with progress_bar(total, args.quiet, desc="convert") as advance:
        tallies = convert_files(args.inputs, out, options, progress=advance)
    seconds = time.perf_counter() - started
    print_tallies(tallies, out, seconds)
    if args.report:
        write_json(args.report, {"output": str(out), "seconds": round(seconds, 3),
                                 "files": [t.to_dict() for t in tallies]})
    if not any(t.written for t in tallies):
        kept = f"; the previous {out} is kept" if out.exists() else ""
        raise MedtuneError(f"{out}: no records written (every input record was skipped){kept}")
    return 0


# ---------------------------------------------------------------------------------------------
# clean


def cmd_clean(args) -> int:
    from medtune.data.clean.cleaner import CleanOptions, clean_files

    out = _check_out([*args.inputs, *(args.decontaminate or []), args.tokenizer], args.out,
                     report=args.report)
    if args.max_tokens and not args.tokenizer:
        raise MedtuneError("--max-tokens needs --tokenizer (a model or tokenizer dir)")
    if not 0.0 < args.near_threshold < 1.0:
        raise MedtuneError(f"--near-threshold must be between 0 and 1, got {args.near_threshold}")
    for path in args.decontaminate or []:
        if not Path(path).is_file():
            raise MedtuneError(f"--decontaminate {path}: no such file")
    options = CleanOptions(
        read=read_options(args), dedup=not args.no_dedup, near_dup=not args.no_near_dup,
        near_threshold=args.near_threshold, quality=not args.no_quality, pii=not args.no_pii,
        min_chars=args.min_chars, max_chars=args.max_chars, lang=args.lang,
        max_tokens=args.max_tokens, tokenizer=args.tokenizer,
        decontaminate=list(args.decontaminate or []), ngram=args.ngram, workers=args.workers)
    total = 2 * sum(Path(p).stat().st_size for p in args.inputs if Path(p).is_file())
    with progress_bar(total, args.quiet, desc="clean") as advance:
        report = clean_files(args.inputs, out, options, progress=advance)
    print_clean_report(report)
    if args.report:
        write_json(args.report, report)
        print(f"report -> {args.report}")
    if not report["kept"]:
        raise MedtuneError(f"{out}: no records kept (see the counts above)")
    return 0


def print_clean_report(report: dict) -> None:
    """Counts per removal reason with one example each, PII replacements per type."""
    print(f"read {report['read']:,} records ({report['unreadable']:,} unreadable), "
          f"kept {report['kept']:,}, removed {report['checked'] - report['kept']:,} "
          f"-> {report['output']} ({report['seconds']:.1f}s)")
    for skip in report["read_skips"]:
        for reason, n in skip["skipped"].items():
            print(f"    {n:>8,}  unreadable: {reason}   e.g. {skip['examples'][reason][0]}")
    for reason, n in report["removed"].items():
        example = report["examples"].get(reason, [{}])[0]
        note = f" ({example['note']})" if example.get("note") else ""
        print(f"    {n:>8,}  {reason}   e.g. {example.get('where', '')}{note}")
    if report["pii_replaced"] is not None:
        counts = ", ".join(f"{k} {v:,}" for k, v in report["pii_replaced"].items()) or "none found"
        print(f"personal data replaced: {counts}")


# ---------------------------------------------------------------------------------------------
# generate


def _write_records(records, out: Path) -> int:
    """Write records as JSONL atomically; return how many."""
    from medtune.data.readers.convert import dump_record

    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_output(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(dump_record(rec) + "\n")
            n += 1
    return n


def _skip_collector(path: str, strict: bool):
    """``(tally, on_skip)``: on_skip counts bad rows, or is None (raise) under ``--strict``."""
    from medtune.data.readers.stream import Tally

    tally = Tally(path)
    return tally, None if strict else (lambda line, reason: tally.skip(reason, line))


def cmd_generate_kg(args) -> int:
    from medtune.data.generate.kg import kg_to_qa, read_triples

    if args.phrasings < 1:
        raise MedtuneError(f"--phrasings must be at least 1, got {args.phrasings}")
    _check_out([args.triples], args.out)
    tally, on_skip = _skip_collector(args.triples, args.strict)
    triples = list(read_triples(args.triples, on_skip=on_skip))
    n = _write_records(kg_to_qa(triples, phrasings=args.phrasings, seed=args.seed, lang=args.lang),
                       Path(args.out))
    skipped = sum(tally.skipped.values())
    print(f"{args.triples}: {len(triples):,} triples ({skipped:,} bad rows skipped) -> "
          f"{n:,} Q&A records -> {args.out}")
    _print_skips(tally)
    if not n:
        raise MedtuneError(f"{args.triples}: no usable triples")
    return 0


def _print_skips(tally) -> None:
    for reason, count in tally.skipped.most_common():
        print(f"    {count:>8,}  {reason}   e.g. {tally.examples[reason][0]}")


def cmd_generate_passage(args) -> int:
    import os

    from medtune.data.generate.passage_qa import PassageQAGenerator, read_passages

    _check_out([args.passages], args.out, cache=args.cache or f"{args.out}.cache",
               summary=f"{args.out}.summary.json")
    tally, on_skip = _skip_collector(args.passages, False)
    passages = list(read_passages(args.passages, min_chars=args.min_chars, on_skip=on_skip))
    if not passages:
        _print_skips(tally)
        raise MedtuneError(f"{args.passages}: no passages (see the skips above)")
    gen = PassageQAGenerator(
        args.endpoint, args.model, api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
        questions_per_passage=args.questions, concurrency=args.concurrency, retries=args.retries,
        timeout=args.timeout, cache_dir=Path(args.cache or f"{args.out}.cache"),
        temperature=args.temperature, min_support=args.min_support)
    with progress_bar(len(passages), args.quiet, unit="passage", desc="generate") as advance:
        n = _write_records(gen.run(passages, progress=lambda _id: advance(1)), Path(args.out))
    s = gen.summary
    print(f"{s['passages']:,} passages: {s['requests']:,} requests, {s['cache_hits']:,} from cache, "
          f"{s['failed']:,} failed; {s['pairs_generated']:,} Q&A generated, {s['ungrounded']:,} "
          f"not grounded in the passage, {n:,} kept -> {args.out}")
    print(f"tokens: {s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} completion paid, "
          f"{s['saved_tokens']:,} saved by the cache")
    _print_skips(tally)
    for passage_id, reason in gen.failures[:SHOWN_EXAMPLES]:
        print(f"    failed: {passage_id}: {reason}")
    write_json(f"{args.out}.summary.json", {**s, "failures": gen.failures,
                                             "skipped_passages": tally.to_dict()})
    return 0


_ENDPOINT_FLAGS = {"endpoint": "--endpoint", "model": "--model", "api_key": "--api-key",
                   "questions": "--questions", "qa_out": "--qa-out", "concurrency": "--concurrency",
                   "retries": "--retries", "timeout": "--timeout", "temperature": "--temperature",
                   "min_support": "--min-support", "min_coverage": "--min-coverage", "cache": "--cache"}


def cmd_generate_rewrite(args) -> int:
    from medtune.data.generate.passage_qa import read_passages

    if args.n < 1:
        raise MedtuneError(f"--n must be at least 1, got {args.n}")
    if args.mode == "rules":
        given = [flag for name, flag in _ENDPOINT_FLAGS.items() if getattr(args, name) is not None]
        if given:
            raise MedtuneError(f"{given[0]} applies to --mode endpoint only (the rules use no model)")
    elif args.seed is not None:
        raise MedtuneError("--seed applies to --mode rules only (the endpoint samples; its replies are cached)")
    qa_out = getattr(args, "qa_out", None)
    _check_out([args.passages], args.out, **({"qa-out": qa_out} if qa_out else {}),
               **({"cache": args.cache or f"{args.out}.cache", "summary": f"{args.out}.summary.json"}
                  if args.mode == "endpoint" else {}))
    tally, on_skip = _skip_collector(args.passages, False)
    passages = list(read_passages(args.passages, min_chars=args.min_chars, on_skip=on_skip))
    if not passages:
        _print_skips(tally)
        raise MedtuneError(f"{args.passages}: no passages (see the skips above)")
    if args.mode == "endpoint":
        return _rewrite_by_endpoint(args, passages, tally)
    return _rewrite_by_rules(args, passages, tally)


def _rewrite_by_rules(args, passages, tally) -> int:
    from collections import Counter

    from medtune.data.generate.rewrite import rewrite_passages

    counts = Counter()
    n = _write_records(rewrite_passages(passages, args.n, seed=args.seed or 0, keep_original=args.keep_original,
                                        counts=counts), Path(args.out))
    print(f"{counts['passages']:,} passages -> {counts['rewrites']:,} rewrites ({counts['short']:,} passages "
          f"with fewer than {args.n}, {counts['unchanged']:,} no rule could rewrite); {n:,} records -> {args.out}")
    _print_skips(tally)
    if not counts["rewrites"]:
        raise MedtuneError(f"{args.passages}: no passage could be rewritten by the rules (one plain sentence "
                           "each? the rules permute sentences and re-phrase 'X的K是V。' / 'The K of X is V.')")
    return 0


def _rewrite_by_endpoint(args, passages, tally) -> int:
    import os

    from medtune.data.generate.rewrite_llm import PassageRewriter

    for flag, value in (("--endpoint", args.endpoint), ("--model", args.model)):
        if not value:
            raise MedtuneError(f"--mode endpoint needs {flag}")
    questions = args.questions or 0
    if bool(questions) != bool(args.qa_out):
        raise MedtuneError("--questions N (> 0) and --qa-out FILE go together: the Q&A pairs need their own file "
                           "(rewrites are text records, pairs are conversations)")
    gen = PassageRewriter(
        args.endpoint, args.model, api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), rewrites=args.n,
        questions=questions, concurrency=_given(args.concurrency, 4), retries=_given(args.retries, 4),
        timeout=_given(args.timeout, 120.0), cache_dir=Path(args.cache or f"{args.out}.cache"),
        temperature=_given(args.temperature, 0.9), min_support=_given(args.min_support, 0.8),
        min_coverage=_given(args.min_coverage, 0.6), keep_original=args.keep_original)
    with progress_bar(len(passages), args.quiet, unit="passage", desc="rewrite") as advance:
        written = _write_split(gen.run(passages, progress=lambda _id: advance(1)), Path(args.out),
                               Path(args.qa_out) if args.qa_out else None,
                               keep=lambda: gen.summary["rewrites_kept"] > 0)
    s = gen.summary
    unparsable = s["failed_reasons"].get("unparsable reply", 0)
    print(f"{s['passages']:,} passages: {s['requests']:,} requests, {s['cache_hits']:,} from cache, "
          f"{s['failed']:,} failed ({unparsable:,} unparsable replies)")
    print(f"rewrites: {s['rewrites_generated']:,} generated, {s['rewrites_kept']:,} kept; refused: "
          f"{s['ungrounded_rewrites']:,} not grounded in the passage, {s['incomplete_rewrites']:,} dropping its "
          f"facts, {s['duplicate_rewrites']:,} repeats, {s['long_rewrites']:,} too long, {s['surplus']:,} beyond "
          f"what was asked; {s['short']:,} passages with fewer than {args.n} -> {args.out}")
    if questions:
        print(f"Q&A: {s['pairs_generated']:,} generated, {s['pairs_kept']:,} kept, {s['ungrounded_pairs']:,} not "
              f"grounded -> {args.qa_out}")
    print(f"tokens: {s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} completion paid, "
          f"{s['saved_tokens']:,} saved by the cache")
    _print_skips(tally)
    for passage_id, reason in gen.failures[:SHOWN_EXAMPLES]:
        print(f"    failed: {passage_id}: {reason}")
    write_json(f"{args.out}.summary.json", {**s, "records_written": written, "failures": gen.failures,
                                             "skipped_passages": tally.to_dict()})
    if written is None:
        kept = f"; the previous {args.out} is kept" if Path(args.out).exists() else ""
        raise MedtuneError(f"{args.passages}: no rewrite kept, nothing written (see the counts above){kept}")
    return 0


def _given(value, default):
    return default if value is None else value


class _NothingKept(Exception):
    pass


def _write_split(records, out: Path, qa_out: Path | None, keep) -> dict | None:
    """Write text records to ``out`` and conversations to ``qa_out``, both atomically; return the
    number of records in each, or None (nothing replaced) when ``keep()`` says the result is
    not worth keeping."""
    counts = {str(out): 0, **({str(qa_out): 0} if qa_out else {})}
    try:
        _write_files(records, out, qa_out, keep, counts)
    except _NothingKept:
        return None
    return counts


def _write_files(records, out: Path, qa_out: Path | None, keep, counts: dict) -> None:
    from contextlib import ExitStack

    from medtune.data.readers.convert import dump_record

    with ExitStack() as stack:
        files = {}
        for path in filter(None, (out, qa_out)):
            path.parent.mkdir(parents=True, exist_ok=True)
            files[path] = stack.enter_context(open(stack.enter_context(atomic_output(path)), "w", encoding="utf-8"))
        for rec in records:
            path = qa_out if "messages" in rec else out
            files[path].write(dump_record(rec) + "\n")
            counts[str(path)] += 1
        if not keep():
            raise _NothingKept  # leaves the block by an exception: the outputs are not replaced


def cmd_generate_verifiable(args) -> int:
    from medtune.data.generate.verifiable import to_verifiable
    from medtune.data.readers.formats import SHAPES
    from medtune.data.readers.stream import Tally, iter_records
    from medtune.errors import where

    if args.max_answer_chars < 1:
        raise MedtuneError(f"--max-answer-chars must be at least 1, got {args.max_answer_chars}")
    out = _check_out(args.inputs, args.out, report=args.report)
    options, tallies, records = read_options(args), [], []
    started = time.perf_counter()
    for path in args.inputs:
        tally = Tally(str(path))
        tallies.append(tally)
        for line, rec in iter_records(path, options, tally, with_lines=True):
            if SHAPES.get(tally.format) != "choice":
                raise MedtuneError(f"{path}: format {tally.format} holds {SHAPES.get(tally.format)} records, "
                                   "not multiple-choice questions (pass --format choice or pubmedqa)")
            problem, why = to_verifiable(rec, args.max_answer_chars, args.instruction)
            if problem is None:
                tally.written -= 1
                tally.skip(why, line)
                if args.strict:
                    raise MedtuneError(f"{where(path, line)}: {why}")
            else:
                records.append(problem)
    seconds = time.perf_counter() - started
    print_tallies(tallies, out, seconds)
    if args.report:
        write_json(args.report, {"output": str(out), "seconds": round(seconds, 3),
                                 "files": [t.to_dict() for t in tallies]})
    if not records:
        kept = f"; the previous {out} is kept" if out.exists() else ""
        raise MedtuneError(f"{out}: no open problems written (every question was skipped){kept}")
    _write_records(records, out)
    return 0


# ---------------------------------------------------------------------------------------------
# mix, split, stats


def _is_unified_jsonl(path: Path) -> bool:
    """True when ``path`` is JSONL whose first record already has a unified shape."""
    from medtune.data.readers.records import record_shape

    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        record_shape(json.loads(first))
        return True
    except (ValueError, AttributeError, TypeError, json.JSONDecodeError):
        return False


def _unified(path: str, tmp: Path, quiet: bool) -> Path:
    """``path`` itself when it is unified JSONL, else a converted copy under ``tmp``."""
    from medtune.data.readers.convert import ConvertOptions, convert_files

    p = Path(path)
    if _is_unified_jsonl(p):
        return p
    out = tmp / f"{len(list(tmp.iterdir()))}-{p.stem}.jsonl"
    [tally] = convert_files([p], out, ConvertOptions())
    if not tally.written:
        raise MedtuneError(f"{p}: no records (every row was skipped); check it with medtune data convert")
    skipped = sum(tally.skipped.values())
    if not quiet:
        print(f"{p}: converted {tally.written:,} records ({skipped:,} skipped)")
    return out


def parse_sources(specs: list[str]) -> tuple[dict[str, str], dict[str, float] | None]:
    """``["a.jsonl:0.7", "b.jsonl:0.3"]`` -> names -> paths, names -> weights (None: no weights)."""
    paths, weights = {}, {}
    for spec in specs:
        path, sep, weight = spec.rpartition(":")
        if not sep or not _is_number(weight):
            path, weight = spec, None
        name = Path(path).stem
        if name in paths:
            raise MedtuneError(f"two sources are named {name!r}; rename one of the files")
        paths[name] = path
        if weight is not None:
            if float(weight) < 0:
                raise MedtuneError(f"{spec}: a weight must be >= 0")
            weights[name] = float(weight)
    if weights and len(weights) != len(paths):
        missing = ", ".join(n for n in paths if n not in weights)
        raise MedtuneError(f"give every source a weight or none (no weight: {missing})")
    return paths, weights or None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def cmd_mix(args) -> int:
    import tempfile

    from medtune.data.mixing import mix

    paths, weights = parse_sources(args.sources)
    out = _check_out(paths.values(), args.out, counts=f"{args.out}.mix.json")
    with tempfile.TemporaryDirectory(prefix="medtune-mix-") as tmp:
        unified = {name: _unified(p, Path(tmp), args.quiet) for name, p in paths.items()}
        summary = mix(unified, weights, args.total, args.seed, out, shuffle=not args.no_shuffle,
                      progress=not args.quiet)
    summary["files"] = paths
    write_json(f"{out}.mix.json", summary)
    for name, s in summary["sources"].items():
        note = "  (upsampled)" if s["upsampled"] else ""
        print(f"{name:<24} available {s['available']:>9,}  taken {s['taken']:>9,}{note}")
        if s["taken"] > UPSAMPLE_WARN * max(s["available"], 1):
            print(f"warning: {name} is repeated {s['taken'] / max(s['available'], 1):.0f}x "
                  f"({s['available']:,} records -> {s['taken']:,}); a model sees each of them that often "
                  "per epoch and may memorise them; lower its weight or --total", file=sys.stderr)
    print(f"total {summary['total']:,} records (seed {args.seed}) -> {out}; counts -> {out}.mix.json")
    return 0


def cmd_split(args) -> int:
    import tempfile

    from medtune.data.mixing import split

    try:
        val = int(args.val) if args.val.strip().isdigit() else float(args.val)
    except ValueError:
        raise MedtuneError(f"--val {args.val!r}: a fraction (0.05) or a record count (500)") from None
    stratify = None if args.stratify.lower() == "none" else args.stratify
    guard_outputs({"-o": [Path(args.out) / "train.jsonl", Path(args.out) / "validation.jsonl"]},
                  {"input": args.input})
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise MedtuneError(f"-o '{args.out}' is a file; split writes a directory (train.jsonl, validation.jsonl)")
    with tempfile.TemporaryDirectory(prefix="medtune-split-") as tmp:
        src = _unified(args.input, Path(tmp), args.quiet)
        result = split(src, args.out, val, args.seed, stratify=stratify, progress=not args.quiet)
    if result.get("duplicates"):
        print(f"{result['duplicates']:,} records repeat another's content (an upsampled mix?); "
              "each content went to one side only")
    for group, counts in result["groups"].items():
        print(f"{group!s:<24} train {counts['train']:>9,}  validation {counts['validation']:>7,}")
    print(f"train {result['train']:,}, validation {result['validation']:,} -> "
          f"{args.out}/train.jsonl, {args.out}/validation.jsonl")
    return 0


def cmd_stats(args) -> int:
    from medtune.data.readers.stream import Tally, iter_records
    from medtune.data.stats import compute_stats, format_stats, plot_lengths

    guard_outputs({"--plot": args.plot, "--json": args.json}, {"input": args.inputs, "--tokenizer": args.tokenizer})
    tokenizer = None
    if args.tokenizer:
        from medtune.models.load import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    options, tallies = read_options(args), []

    def records():
        for path in args.inputs:
            tallies.append(Tally(str(path)))
            yield from iter_records(path, options, tallies[-1])

    stats = compute_stats(records(), tokenizer=tokenizer, progress=not args.quiet)
    print(format_stats(stats))
    for tally in tallies:
        _print_skips(tally)
    if args.plot:
        plot_lengths(stats, args.plot)
        print(f"length histogram -> {args.plot}")
    if args.json:
        write_json(args.json, {**stats, "files": [t.to_dict() for t in tallies]})
    return 0


def cmd_feedback_export(args) -> int:
    """Write the preference pairs (and KTO records) of a serving database; print the counts."""
    from medtune.cli.faults import require_extras

    require_extras("sqlalchemy")
    from medtune.serving.feedback_export import export_feedback
    from medtune.serving.store import FeedbackStore, database_file

    if args.kto and Path(args.kto).resolve() == Path(args.out).resolve():
        raise MedtuneError(f"-o and --kto are the same file ({args.out}): give two paths")
    guard_outputs({"-o": args.out, "--kto": args.kto}, {"--db": database_file(args.db)})
    store = FeedbackStore.open(args.db, create=False)
    try:
        result = export_feedback(store.responses())
    finally:
        store.close()
    skipped = sum(result.skipped.values())
    reasons = "; ".join(f"{why}: {n}" for why, n in sorted(result.skipped.items()))
    print(f"feedback: {result.responses} responses -> {len(result.pairs)} pairs, {len(result.kto)} KTO records"
          f" | {skipped} skipped{' (' + reasons + ')' if skipped else ''}")
    if not result.pairs and not (args.kto and result.kto):
        raise MedtuneError(f"--db {store.shown}: no preference pair to export"
                           f"{' (' + reasons + ')' if reasons else ' (no responses stored)'}")
    _write_jsonl(args.out, result.pairs)
    if args.kto:
        _write_jsonl(args.kto, result.kto)
    print(f"wrote {args.out}" + (f" and {args.kto}" if args.kto else ""))
    return 0


def _write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
