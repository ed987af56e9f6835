"""Data toolkit throughput and memory on a generated file: convert, clean (near-dup on), tokenize.

    python bench/data_speed.py                        # 1,000,000 records (~30 min on 2 cores)
    python bench/data_speed.py --records 50000        # a quick look
    python bench/data_speed.py --append               # add the table to BENCHMARKS.md
    python bench/data_speed.py --no-clean --parallel-only --corpus-mb 1024   # issue 16's goals only

The input is alpaca JSONL built from sentences of ../shared/data (HuaTuo, ChatDoctor, the doctor
dialogues; research-only data, used here for measurement only) or, without it, of the bundled
samples: each record a random question and 2-5 random answer sentences, with 3% exact copies
(punctuation and spacing changed), 2% near copies (a few characters edited) and 0.5% phone numbers.

Every step runs as its own process tree; peak memory is the largest sum over the tree (main +
workers), sampled every 50 ms, as PSS (shared and file-mapped pages counted once) and as the plain
RSS sum (which counts pages shared by forked workers or memory-mapped Arrow shards in every process). Tokenization compares ``medtune``'s sharded, checkpointed tokenizer with a plain
``datasets.map`` over ``tokenizer.apply_chat_template`` (same template, same assistant masks); both
outputs are then counted (rows, tokens, labels) with plain reads, which add no mapped pages to the peak.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SENTENCE = re.compile(r"[^。！？!?.\n]+[。！？!?.]?")


def sentences(shared: Path = SHARED) -> list[str]:
    """A pool of answer sentences (shared data if present, else the bundled samples)."""
    files = [shared / "huatuo/llama_data.json", shared / "chatdoctor/chatdoctor5k.json",
             shared / "chinese-medical-dialogue-data/internal_medicine_5000-6000.csv"]
    if not shared.is_dir():
        files = sorted((ROOT / "src/medtune/assets/sample").rglob("*.jsonl"))
    from medtune.data.readers.records import full_text
    from medtune.data.readers.stream import ReadOptions, iter_records

    pool = []
    for path in files:
        for rec in iter_records(path, ReadOptions(on_error="count")):
            pool += [s.strip() for s in SENTENCE.findall(full_text(rec)) if len(s.strip()) >= 8]
    return pool


def generate(path: Path, n: int, seed: int = 0, shared: Path = SHARED) -> None:
    """Write ``n`` alpaca records (see the module docstring for the planted duplicates)."""
    rng, pool, kept = random.Random(seed), sentences(shared), []
    with open(path, "w", encoding="utf-8") as f:
        for _i in range(n):
            roll = rng.random()
            if kept and roll < 0.03:
                rec = dict(rng.choice(kept))
                rec["instruction"] = rec["instruction"].replace("，", ", ") + " "
            elif kept and roll < 0.05:
                rec = dict(rng.choice(kept))
                out = rec["output"]
                at = rng.randrange(len(out))
                rec["output"] = out[:at] + "的" + out[at + 1:]
            else:
                rec = {"instruction": rng.choice(pool),
                       "output": "".join(rng.choice(pool) for _ in range(rng.randint(2, 5)))}
                if roll > 0.995:
                    rec["instruction"] += f" 我的电话是138{rng.randrange(10**8):08d}"
            if len(kept) < 20000:
                kept.append(rec)
            elif rng.random() < 0.01:
                kept[rng.randrange(len(kept))] = rec
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def measure(cmd: list[str], env=None) -> tuple[float, float, str, float, float]:
    """(wall seconds, peak PSS of the process tree in MiB, stdout, peak RSS sum in MiB, CPU
    seconds of the tree: user + system of every process in it, from getrusage of the children).

    PSS counts a page shared by forked workers (or mapped from the same file) once across the
    tree; the plain RSS sum counts it in every process that touches it, so it overstates.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # stderr to a file: a pipe read only at the end blocks the command once 64 KiB of progress bars fill it
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, env=env)
        root, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            try:
                mem = [p.memory_full_info() for p in [root, *root.children(recursive=True)] if p.is_running()]
                peak_pss = max(peak_pss, sum(m.pss for m in mem))
                peak_rss = max(peak_rss, sum(m.rss for m in mem))
            except psutil.Error:
                pass
            time.sleep(0.05)
        out, _ = proc.communicate()
        err_file.seek(0)
        err = err_file.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - started, peak_pss / 2**20, out, peak_rss / 2**20, cpu


# Rows, tokens and learned labels of a tokenized dataset: both sides are compared on them. The
# dataset's Arrow files are read a batch at a time with plain reads: iterating the memory-mapped
# dataset would leave every page of it mapped in the process, so the check itself would add the
# whole output's size to the peak being measured (for both sides alike).
COUNT = """
def count(ds):
    import pyarrow as pa
    import pyarrow.compute as pc
    rows = tokens = labels = 0
    for file in ds.cache_files:
        with pa.OSFile(file["filename"]) as f:
            for b in pa.ipc.open_stream(f):
                ids, lab = pc.list_flatten(b["input_ids"]), pc.list_flatten(b["labels"])
                rows, tokens = rows + b.num_rows, tokens + len(ids)
                labels += pc.sum(pc.not_equal(lab, -100)).as_py() or 0
    assert rows == len(ds), (rows, len(ds))
    return {"rows": rows, "tokens": tokens, "labels": labels}
"""


MEDTUNE_TOKENIZE = """
import json, sys
from medtune.config import stage_from_dict
from medtune.config.stages import packs_rows, stage_recipe
from medtune.data.readers.inputs import read_corpus
from medtune.data.tokenize.cache import tokenized_datasets
from medtune.models.load import load_tokenizer
from medtune.recipes.recipe import StageExamples
import datasets
datasets.disable_progress_bars()  # as the datasets.map row below
""" + COUNT + """
model, data, workers, stage = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cfg = stage_from_dict({"stage": stage, "model": {"path": model}, "data": {"train": [data],
                       "max_length": 1024, "workers": workers}, "output": "unused"}, "bench")
tok = load_tokenizer(model)
corpus = read_corpus(cfg.data.train, cfg.data.format)
train, _, stats = tokenized_datasets(cfg, StageExamples(stage_recipe(stage), cfg, tok), tok, corpus,
                                     pack=packs_rows(cfg))
print(json.dumps(count(train)))
"""

BASELINE_TOKENIZE = """
import json, sys
import datasets
from transformers import AutoTokenizer
datasets.disable_progress_bars()
""" + COUNT + """
model, data, num_proc, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
tok = AutoTokenizer.from_pretrained(model)
def encode(ex):
    enc = tok.apply_chat_template(ex["messages"], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, truncation=True, max_length=1024)
    ids = enc["input_ids"]
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, enc["assistant_masks"])]}
ds = datasets.load_dataset("json", data_files=data, split="train", cache_dir=cache)
ds = ds.map(encode, remove_columns=ds.column_names, num_proc=num_proc if num_proc > 1 else None)
print(json.dumps(count(ds)))
"""


def generate_corpus(path: Path, megabytes: int, seed: int = 0, shared: Path = SHARED) -> None:
    """Write a pretraining text corpus of about ``megabytes`` MiB: one document (3-30 random
    sentences) per line."""
    rng, pool, size = random.Random(seed), sentences(shared), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < megabytes << 20:
            line = "".join(rng.choice(pool) for _ in range(rng.randint(3, 30))) + "\n"
            size += len(line.encode("utf-8"))
            f.write(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-clean", action="store_true", help="tokenize the converted file (skip clean)")
    ap.add_argument("--corpus-mb", type=int, default=0, help="also tokenize + pack a text corpus (pt)")
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    ap.add_argument("--shared", type=Path, default=SHARED,
                    help=f"the research data to draw sentences from (default {SHARED}; absent: the bundled samples)")
    ap.add_argument("--parallel-only", action="store_true",
                    help="skip the 1-process convert and datasets.map rows (compare at --workers only)")
    ap.add_argument("--corpus-only", action="store_true",
                    help="only the --corpus-mb text corpus (tokenize + pack, stage pt), no SFT records")
    args = ap.parse_args()
    if args.corpus_only:
        return corpus_only(args)
    py, n, w = sys.executable, args.records, str(args.workers)
    with tempfile.TemporaryDirectory(prefix="medtune-bench-") as tmp:
        tmp = Path(tmp)
        raw, conv, clean = tmp / "raw.jsonl", tmp / "conv.jsonl", tmp / "clean.jsonl"
        t0 = time.perf_counter()
        generate(raw, n, shared=args.shared)
        print(f"generated {n:,} records ({raw.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        cli = [py, "-m", "medtune", "-q"]
        rows, removed, one, base1 = [], None, None, None
        if not args.parallel_only:
            one = measure(cli + ["data", "convert", raw, "-o", conv, "--workers", "1"])
            rows.append(("convert, 1 process", n, *one[:2], one[3], one[4]))
        both = measure(cli + ["data", "convert", raw, "-o", conv, "--workers", w])
        rows.append((f"convert, {w} processes", n, *both[:2], both[3], both[4]))
        print(rows[-2:], flush=True)
        kept = n
        if args.no_clean:
            clean = conv
        else:
            report = tmp / "clean.json"
            cl = measure(cli + ["data", "clean", conv, "-o", clean, "--workers", w, "--report", report])
            rows.append((f"clean (quality, exact + near dup, PII), {w} processes", n, *cl[:2], cl[3], cl[4]))
            removed = json.loads(report.read_text())
            kept = removed["kept"]
            print(rows[-1], removed["removed"], flush=True)
        measure(cli + ["model", "tiny", "-o", tmp / "tiny"])
        env = {**__import__("os").environ, "MEDTUNE_CACHE": str(tmp / "cache")}
        ours = measure([py, "-c", MEDTUNE_TOKENIZE, tmp / "tiny", clean, w, "sft"], env=env)
        rows.append((f"tokenize: medtune, {w} processes (datasets.map by shard, shuffled, cached)", kept,
                     *ours[:2], ours[3], ours[4]))
        print(rows[-1], flush=True)
        again = measure([py, "-c", MEDTUNE_TOKENIZE, tmp / "tiny", clean, w, "sft"], env=env)
        rows.append(("tokenize: medtune again (from the cache, memory-mapped)", kept, *again[:2], again[3], again[4]))
        if not args.parallel_only:
            base1 = measure([py, "-c", BASELINE_TOKENIZE, tmp / "tiny", clean, "1", tmp / "hf1"])
            rows.append(("tokenize: datasets.map(apply_chat_template), 1 process", kept, *base1[:2], base1[3], base1[4]))
        base2 = measure([py, "-c", BASELINE_TOKENIZE, tmp / "tiny", clean, w, tmp / "hf2"])
        rows.append((f"tokenize: datasets.map(apply_chat_template, num_proc={w})", kept, *base2[:2], base2[3], base2[4]))
        a, b = json.loads(ours[2]), json.loads((base1 or base2)[2])
        same = a == b
        print(rows[-2:], a, b, flush=True)
        corpus = None
        if args.corpus_mb:
            text = tmp / "corpus.txt"
            generate_corpus(text, args.corpus_mb, shared=args.shared)
            pt = measure([py, "-c", MEDTUNE_TOKENIZE, tmp / "tiny", text, w, "pt"], env=env)
            corpus = (args.corpus_mb, pt, json.loads(pt[2]))
            print(corpus, flush=True)
    publish_table(args, rows, removed, ours, base1, base2, both[0], one and one[0], same, corpus)


def corpus_only(args) -> None:
    """Measure a pt stage's tokenize + pack of a generated ``--corpus-mb`` text corpus alone."""
    if not args.corpus_mb:
        raise SystemExit("--corpus-only needs --corpus-mb")
    import os

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="medtune-bench-") as tmp:
        tmp = Path(tmp)
        text = tmp / "corpus.txt"
        generate_corpus(text, args.corpus_mb, shared=args.shared)
        print(f"generated {text.stat().st_size / 2**20:,.0f} MiB of text", flush=True)
        measure([py, "-m", "medtune", "-q", "model", "tiny", "-o", tmp / "tiny"])
        env = {**os.environ, "MEDTUNE_CACHE": str(tmp / "cache")}
        pt = measure([py, "-c", MEDTUNE_TOKENIZE, tmp / "tiny", text, str(args.workers), "pt"], env=env)
        got = json.loads(pt[2])
    sys.path.insert(0, str(ROOT / "bench"))
    from results import publish, section_header

    seconds, pss, _, rss, cpu = pt
    line = (f"- pretraining corpus: {args.corpus_mb} MiB of text (one document per line), stage pt, "
            f"{args.workers} processes, tokenized and packed into {got['rows']:,} rows of <= 1024 tokens "
            f"({got['tokens']:,} tokens) in {seconds:.1f} s ({cpu:.1f} CPU seconds), peak PSS {pss:,.0f} MiB "
            f"(process tree; RSS sum {rss:,.0f} MiB)")
    publish("\n".join([section_header("data_speed"), "", line, ""]) + "\n", args.append)


def publish_table(args, rows, removed, ours, base1, base2, conv2, conv1, same, corpus) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from results import publish, section_header

    lines = [section_header("data_speed"), "",
             "| step | records | seconds | records/s | CPU seconds (tree) | peak PSS (MiB, process tree) "
             "| peak RSS sum (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, count, seconds, pss, rss, cpu in rows:
        lines.append(f"| {name} | {count:,} | {seconds:.1f} | {count / seconds:,.0f} | {cpu:.1f} | {pss:,.0f} "
                     f"| {rss:,.0f} |")
    lines.append("")
    if removed:
        lines.append(f"- clean removed: {', '.join(f'{k} {v:,}' for k, v in removed['removed'].items())}; "
                     f"PII replaced: {removed['pii_replaced']}")
    if corpus:
        mb, (seconds, pss, _, rss, _), got = corpus
        lines.append(f"- pretraining corpus: {mb} MiB of text (one document per line), stage pt, tokenized "
                     f"and packed into {got['rows']:,} rows of <= 1024 tokens ({got['tokens']:,} tokens) "
                     f"in {seconds:.1f} s ({mb / seconds:.2f} MiB/s), peak PSS {pss:,.0f} MiB "
                     f"(RSS sum {rss:,.0f} MiB)")
    if conv1:
        lines.append(f"- convert {args.workers} processes vs 1: {conv1 / conv2:.2f}x")
    versus = f"plain datasets.map: {base1[0] / ours[0]:.2f}x; vs " if base1 else ""
    lines += [f"- tokenization speed, medtune vs {versus}datasets.map num_proc={args.workers}: "
              f"{base2[0] / ours[0]:.2f}x by wall time, {base2[4] / ours[4]:.2f}x by CPU seconds, peak PSS "
              f"{ours[1]:,.0f} vs {base2[1]:,.0f} MiB; same rows, token count and label count: {same}", ""]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
