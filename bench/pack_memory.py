"""Memory of the shuffle-and-pack write alone at pretraining-corpus scale, on synthetic token shards.

    python bench/pack_memory.py                    # the 1 GiB corpus's size: 605,158 documents, ~360M tokens
    python bench/pack_memory.py --documents 50000  # a quick look
    python bench/pack_memory.py --append           # add the result to BENCHMARKS.md

Tokenizing a 1 GiB corpus takes most of an hour on a shared 2-core machine; the part of the pt path
whose memory could grow with the corpus is the write after it (``cache._write_rows``: shuffled order,
first-fit decreasing over every example's length, rows joined a window at a time). This writes
shards shaped like the ones the workers write (20,000 documents each, 1,000 a record batch, int32
input_ids = labels, each document's tokens + eos split into <= 1024-token examples; document lengths
uniform in 109..1081 tokens, which gives the ~360M tokens the bench's 1 GiB corpus has) and measures
that write in its own process (peak PSS, sampled as bench/data_speed.py does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

WRITE = """
import json, sys, time
from pathlib import Path
import pyarrow as pa
from medtune.data.tokenize.cache import _shard_files, _write_rows, shuffled
parts, out = Path(sys.argv[1]), Path(sys.argv[2])
files = _shard_files(parts, "train0", int(sys.argv[3]))
n = sum(pa.ipc.open_file(pa.memory_map(str(f))).read_all().num_rows for f in files)  # mapped: metadata only
rows = _write_rows(out / "train.arrow", files, shuffled(n, 42), 1024)
print(json.dumps({"examples": n, "packed_rows": rows}))
"""


def write_shards(parts: Path, documents: int, seed: int = 0) -> int:
    """Write synthetic pt shards for ``documents`` documents under ``parts``; return the tokens."""
    import numpy as np
    import pyarrow as pa

    rng, tokens = np.random.default_rng(seed), 0
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    for k, start in enumerate(range(0, documents, 20_000)):
        n = min(20_000, documents - start)
        (parts / f"train0-{k}").mkdir(parents=True)
        with pa.OSFile(str(parts / f"train0-{k}" / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for b in range(0, n, 1000):
                lengths = rng.integers(3, 31, min(1000, n - b)) * 36 + 1
                pieces = np.concatenate([np.minimum(1024, n_ - np.arange(0, n_, 1024)) for n_ in lengths])
                offsets = np.concatenate([[0], np.cumsum(pieces)]).astype(np.int32)
                ids = pa.ListArray.from_arrays(pa.array(offsets),
                                               pa.array(rng.integers(0, 2048, offsets[-1], dtype=np.int32)))
                w.write_batch(pa.record_batch([ids, ids], schema=schema))
                tokens += int(offsets[-1])
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--documents", type=int, default=605_158)
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent
    sys.path.insert(0, str(root))
    from data_speed import measure
    from results import publish, section_header

    with tempfile.TemporaryDirectory(prefix="medtune-pack-") as tmp:
        tmp = Path(tmp)
        tokens = write_shards(tmp / "parts", args.documents)
        shards = sum(f.stat().st_size for f in (tmp / "parts").rglob("rows.arrow"))
        seconds, pss, out, rss = measure([sys.executable, "-c", WRITE, tmp / "parts", tmp, str(args.documents)])
        got = json.loads(out)
    lines = [section_header("pack_memory"), "",
             f"- {args.documents:,} synthetic documents, {tokens:,} tokens, {got['examples']:,} examples "
             f"({shards / 2**20:,.0f} MiB of shards) shuffled and packed into {got['packed_rows']:,} rows of "
             f"<= 1024 tokens in {seconds:.1f} s: peak PSS {pss:,.0f} MiB (RSS {rss:,.0f} MiB)", ""]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
