"""CPU dynamic int8 vs fp32 on a ~27M-param random llama: generate speed, logit error, perplexity.

    python bench/quant_speed.py                 # ~5 min on 2 cores
    python bench/quant_speed.py --prompts 50    # a quick look
    python bench/quant_speed.py --append        # add the table to BENCHMARKS.md

The model is ``TinySpec(hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376, vocab 4096)``
with random weights and a tokenizer trained on HuaTuo instructions from ../shared/data (research-only
data, used for measurement only) or, without it, the bundled samples. Speed: greedy ``generate`` of
exactly 64 new tokens, batch 1 and batch 8 (left-padded), best of 3 rounds in which the models
take turns (so other jobs' load hits them alike). Quality: the logits of fp32 and int8 over the same
prompts (chat template applied), and the perplexity of each on the answers. Random weights give near-uniform logits, so these are numerics, not answer quality.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HUATUO = ROOT.parent / "shared" / "data" / "huatuo" / "llama_data.json"
NEW_TOKENS = 64


def qa_pairs(n: int) -> list[tuple[str, str]]:
    """(question, answer) pairs: HuaTuo when present, else the bundled texts split in halves."""
    if HUATUO.is_file():
        rows = [json.loads(line) for line in HUATUO.read_text(encoding="utf-8").splitlines()[: 4 * n] if line.strip()]
        return [(r["instruction"], r["output"]) for r in rows]
    from medtune.models.tiny import bundled_text

    texts = bundled_text()
    return [(t[: len(t) // 2], t[len(t) // 2:]) for t in texts]


def build_model(tmp: Path, texts: list[str]):
    from medtune.models.load import load_model, load_tokenizer
    from medtune.models.tiny import TinySpec, build_tiny

    spec = TinySpec(hidden=512, layers=8, heads=8, kv_heads=8, intermediate=1376, vocab_size=4096)
    out = build_tiny(tmp / "model", spec, texts=texts)
    tok = load_tokenizer(str(out))
    tok.padding_side = "left"
    return load_model(str(out), "float32", "cpu").eval(), tok


def state_mib(model) -> float:
    """Serialized size of the weights (int8 packed params included), MiB."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20


def tokens_per_second(variants: dict, tok, prompts: list[str], batch: int, rounds: int = 3) -> dict:
    """Generated tokens per second of each model, ``batch`` prompts, exactly 64 new tokens each.

    The models take turns within each round (after a warm-up each), and each keeps its best round:
    other jobs' load then hits all of them alike instead of whichever happened to run during it.
    """
    enc = tok([tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True) for p in prompts[:batch]],
              return_tensors="pt", padding=True, truncation=True, max_length=64)
    best = dict.fromkeys(variants, float("inf"))
    for run in range(rounds + 1):
        for name, model in variants.items():
            started = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            if run:  # run 0 warms up
                best[name] = min(best[name], time.perf_counter() - started)
    return {name: batch * NEW_TOKENS / seconds for name, seconds in best.items()}


def logits_of(model, tok, pairs, with_answer: bool):
    """Yield (logits, input ids, attention mask, prompt lengths) in batches of 16."""
    for start in range(0, len(pairs), 16):
        chunk = pairs[start:start + 16]
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q, _ in chunk]
        texts = [p + a for p, (_, a) in zip(prompts, chunk)] if with_answer else prompts
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
        lengths = [len(tok(p)["input_ids"]) for p in prompts]
        with torch.no_grad():
            yield model(**enc).logits, enc["input_ids"], enc["attention_mask"], lengths


def compare(ref, quant, tok, pairs) -> dict:
    """Max / mean |logit diff|, top-1 agreement (all positions, next token after each prompt)."""
    diffs, agree_all, agree_next = [], [], []
    for (a, _, mask, _), (b, _, _, _) in zip(logits_of(ref, tok, pairs, False), logits_of(quant, tok, pairs, False)):
        keep = mask.bool()
        diffs.append((a - b).abs()[keep])
        agree_all.append((a.argmax(-1) == b.argmax(-1))[keep].float())
        agree_next.append((a[:, -1].argmax(-1) == b[:, -1].argmax(-1)).float())  # left padding: last = next
    diffs = torch.cat(diffs)
    return {"max": diffs.max().item(), "mean": diffs.mean().item(),
            "agree_all": torch.cat(agree_all).mean().item(), "agree_next": torch.cat(agree_next).mean().item()}


def perplexity(model, tok, pairs) -> float:
    """Perplexity of ``model`` on the answers (prompt tokens and padding not scored)."""
    nll, count = 0.0, 0
    for logits, ids, mask, lengths in logits_of(model, tok, pairs, True):
        pad = (mask == 0).sum(1)
        for row in range(ids.shape[0]):
            first = int(pad[row]) + lengths[row]  # left padding, then the prompt
            targets = ids[row, first:]
            scores = torch.log_softmax(logits[row, first - 1:-1], -1)
            nll -= scores.gather(1, targets[:, None]).sum().item()
            count += len(targets)
    return float(torch.exp(torch.tensor(nll / count)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=200, help="prompts for the quality numbers")
    ap.add_argument("--append", action="store_true", help="append the result to BENCHMARKS.md")
    args = ap.parse_args()
    from medtune.export.quantize import quantize_dynamic_int8

    pairs = qa_pairs(args.prompts)
    with tempfile.TemporaryDirectory(prefix="medtune-bench-") as tmp:
        fp32, tok = build_model(Path(tmp), [t for pair in pairs for t in pair])
    pairs = pairs[: args.prompts]
    variants = {"fp32": fp32, "int8 (lm_head fp32, default)": quantize_dynamic_int8(copy.deepcopy(fp32)),
                "int8 incl. lm_head": quantize_dynamic_int8(copy.deepcopy(fp32), quantize_head=True)}
    params = sum(p.numel() for p in fp32.parameters()) / 1e6
    rows, load_before = [], os.getloadavg()[0]
    speed = [tokens_per_second(variants, tok, [q for q, _ in pairs], b) for b in (1, 8)]
    print(speed, flush=True)
    for name, model in variants.items():
        quality = compare(fp32, model, tok, pairs) if model is not fp32 else None
        rows.append((name, state_mib(model), speed[0][name], speed[1][name], quality, perplexity(model, tok, pairs)))
        print(rows[-1], flush=True)
    load = f"{load_before:.1f} → {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores; the bench itself keeps about 2 busy)"
    publish_table(args, rows, params, len(pairs), load)


def publish_table(args, rows, params: float, n_prompts: int, load: str) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from results import publish, section_header

    base = rows[0]
    source = "HuaTuo instructions" if HUATUO.is_file() else "bundled sample texts"
    intro = (f"Random llama, {params:.1f}M params (hidden 512, 8 layers, vocab 4096); {n_prompts} prompts "
             f"from {source}; greedy, {NEW_TOKENS} new tokens; load average during the run {load}.")
    header = ("| model | weights MiB | tok/s batch 1 | tok/s batch 8 | max \\|Δlogit\\| | mean \\|Δlogit\\| "
              "| top-1 agree (all pos.) | top-1 agree (next token) | perplexity on answers |")
    lines = [section_header("quant_speed"), "", intro, "", header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, mib, b1, b8, q, ppl in rows:
        qual = (f"{q['max']:.4f} | {q['mean']:.5f} | {q['agree_all']:.4f} | {q['agree_next']:.3f}" if q
                else "— | — | — | —")
        lines.append(f"| {name} | {mib:.1f} | {b1:.1f} ({b1 / base[2]:.2f}×) | {b8:.1f} ({b8 / base[3]:.2f}×) "
                     f"| {qual} | {ppl:.2f} |")
    notes = [("Random weights: logits are nearly flat, so the top-1 agreement and perplexity show how far int8 "
             "rounding moves the numbers, not how a trained model's answers change (a trained model's larger "
             "logit gaps usually make top-1 agreement higher)."),
             ("int8 = torch.ao dynamic quantization (per-channel int8 weights, activations quantized per batch "
             "at run time), CPU only; not saveable with save_pretrained.")]
    lines += [""] + [f"- {note}" for note in notes] + [""]
    publish("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
