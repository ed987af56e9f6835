"""``medtune data ...``: convert, clean, generate, mix, split and inspect training data.

Examples::

    medtune data convert huatuo.json chatdoctor.json -o sft.jsonl
    medtune data clean sft.jsonl -o sft.clean.jsonl --report clean.json
    medtune data generate kg cmekg.csv -o kg_qa.jsonl
    medtune data mix sft.clean.jsonl:0.8 general.jsonl:0.2 --total 20000 -o mix.jsonl
    medtune data split mix.jsonl --val 0.05 -o data/
    medtune data stats data/train.jsonl --tokenizer runs/tiny --plot lengths.png
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from medtune.errors import MedtuneError

SHOWN_EXAMPLES = 3


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
    from medtune.data.formats import format_name
    from medtune.data.stream import ReadOptions

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


def _check_out(inputs, out) -> Path:
    out = Path(out)
    if any(Path(i).resolve() == out.resolve() for i in inputs):
        raise MedtuneError(f"{out}: the output is also an input; write to another file")
    return out


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
    Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", "utf-8")


# ---------------------------------------------------------------------------------------------
# convert


def cmd_convert(args) -> int:
    from medtune.data.convert import ConvertOptions, convert_files

    out = _check_out(args.inputs, args.out)
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
        raise MedtuneError(f"{out}: no records written (every input record was skipped)")
    return 0
