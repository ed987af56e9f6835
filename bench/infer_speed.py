"""Batch inference and API serving speed: medtune vs a one-prompt-at-a-time generate loop.

    python bench/infer_speed.py                 # 200 prompts, API at 1 / 8 / 64 clients (~10 min, 2 cores)
    python bench/infer_speed.py --prompts 40 --api-requests 16    # a quick look
    python bench/infer_speed.py --append        # add the table to BENCHMARKS.md

Prompts: the first instructions of ../shared/data/huatuo/llama_data.json (research-only data, used
for measurement only), or the bundled samples without it. Model: a random ~20M-parameter Llama
built locally (hidden 512, 4 layers) with its chat template; every reply is greedy, ``--max-new``
tokens at most, stopping at the template's end-of-turn tokens as usual.

1. Batch inference, same loaded model: the loop the seeds' scripts run (``apply_chat_template`` ->
   ``model.generate`` -> ``decode``, one prompt at a time) vs ``medtune.inference.batch.run_infer``
   (length-sorted batches). Also reports how many replies are identical between the two.
2. API: ``medtune serve api`` in its own process, N concurrent clients (httpx, async) each sending
   chat requests back to back; requests/s and p50 / p95 latency, with request batching
   (``--max-batch 16``) and without (``--max-batch 1``: one request per generate call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def prompts(n: int) -> list[str]:
    """Return ``n`` questions (shared HuaTuo instructions if present, else bundled samples)."""
    from medtune.data.readers.files import read_file

    path = SHARED / "huatuo/llama_data.json"
    if not path.is_file():
        path = ROOT / "src/medtune/assets/sample/alpaca.json"
    qs = [r["messages"][0]["content"] for r in read_file(str(path)).records if r.get("messages")]
    return [qs[i % len(qs)] for i in range(n)]


def build_model(out: Path) -> Path:
    from medtune.models.tiny import TinySpec, build_tiny

    return build_tiny(out, TinySpec(hidden=512, layers=4, heads=8, kv_heads=8, vocab_size=4000))


def seed_loop(model_dir: Path, questions, max_new: int) -> tuple[float, list[str]]:
    """The seeds' way: one ``generate`` per prompt. Returns (seconds, replies)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    stop = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    replies, started = [], time.perf_counter()
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
        replies.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return time.perf_counter() - started, replies


def medtune_batch(model_dir: Path, questions, max_new: int, batch: int, tmp: Path):
    """``run_infer`` over the same prompts. Returns (seconds, replies in input order, summary)."""
    from medtune.inference.batch import run_infer
    from medtune.inference.engines import HFEngine, SamplingParams

    engine = HFEngine.load(model_dir, device="cpu")
    src, out = tmp / "in.jsonl", tmp / f"out-{batch}.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": q}, ensure_ascii=False) + "\n"
                           for i, q in enumerate(questions)), encoding="utf-8")
    started = time.perf_counter()
    summary = run_infer(engine, src, out, SamplingParams(max_tokens=max_new), batch_size=batch, progress=False)
    seconds = time.perf_counter() - started
    rows = {r["id"]: r["response"] for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    return seconds, [rows[i] for i in range(len(questions))], summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, max_batch: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medtune", "-q", "serve", "api", "--model", str(model_dir),
                             "--port", str(port), "--max-batch", str(max_batch), "--device", "cpu", "--name", "m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {proc.stderr.read()[-2000:]}")


async def load_test(url: str, questions, clients: int, requests: int, max_new: int):
    """Return (requests/s, p50 s, p95 s) of ``requests`` chat calls from ``clients`` workers."""
    import httpx

    latencies, todo = [], list(range(requests))

    async def worker(http):
        while todo:
            i = todo.pop()
            body = {"model": "m", "messages": [{"role": "user", "content": questions[i % len(questions)]}],
                    "max_tokens": max_new, "temperature": 0}
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/chat/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(worker(http) for _ in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()
    return requests / wall, statistics.median(latencies), latencies[max(0, int(0.95 * len(latencies)) - 1)]


def api_rows(model_dir: Path, questions, requests: int, max_new: int):
    rows = []
    for max_batch in (16, 1):
        proc, url = start_server(model_dir, max_batch)
        try:
            for clients in (1, 8, 64):
                n = min(requests, 16) if clients == 1 else requests
                rps, p50, p95 = asyncio.run(load_test(url, questions, clients, n, max_new))
                rows.append((max_batch, clients, n, rps, p50, p95))
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--api-requests", type=int, default=64, help="requests per API concurrency level")
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    qs = prompts(args.prompts)
    with tempfile.TemporaryDirectory(prefix="medtune-bench-") as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model")
        loop_s, loop_replies = seed_loop(model_dir, qs, args.max_new)
        print(f"one at a time: {loop_s:.1f}s", flush=True)
        ours_s, ours_replies, summary = medtune_batch(model_dir, qs, args.max_new, args.batch_size, tmp)
        print(f"medtune infer: {ours_s:.1f}s", flush=True)
        same = sum(a == b for a, b in zip(loop_replies, ours_replies))
        api = api_rows(model_dir, qs, args.api_requests, args.max_new)
    publish_table(args, loop_s, ours_s, same, summary, api)


def publish_table(args, loop_s, ours_s, same, summary, api) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from results import publish, section_header

    n = args.prompts
    lines = [section_header("infer_speed"), "",
             f"Random Llama (hidden 512, 4 layers, ~20M parameters), {n} HuaTuo prompts, greedy, "
             f"at most {args.max_new} new tokens ({summary.completion_tokens:,} generated by medtune).", "",
             "| batch inference | seconds | prompts/s | vs loop |", "|---|---:|---:|---:|",
             f"| one `generate` per prompt (seed scripts) | {loop_s:.1f} | {n / loop_s:.2f} | 1.00x |",
             f"| `medtune infer`, batch {args.batch_size}, length-sorted | {ours_s:.1f} | {n / ours_s:.2f} | "
             f"{loop_s / ours_s:.2f}x |", "",
             f"- identical replies between the two: {same}/{n} (greedy; batched fp32 matmuls can flip a "
             "near-tied argmax)", "",
             "| API (`medtune serve api`) | clients | requests | requests/s | p50 latency (s) | p95 latency (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for max_batch, clients, count, rps, p50, p95 in api:
        label = "batched (--max-batch 16)" if max_batch > 1 else "one request per generate (--max-batch 1)"
        lines.append(f"| {label} | {clients} | {count} | {rps:.2f} | {p50:.2f} | {p95:.2f} |")
    by = {(b, c): rps for b, c, _, rps, _, _ in api}
    lines += ["", "- requests/s, batched vs one per generate: " + ", ".join(
        f"{c} clients {by[(16, c)] / by[(1, c)]:.2f}x" for c in (1, 8, 64)), ""]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
