"""Generation evaluation: answer a dataset's prompts, score each answer against the reference.

Example::

    medtune eval gen --model runs/sft --data test.jsonl --output runs/eval/gen --limit 200
    medtune eval gen --predictions runs/eval/gen/generated_predictions.jsonl --output runs/eval/rescore

    from medtune.evaluation.generation import generate_replies, load_gen_items, scored_rows
    items, skipped, group_by = load_gen_items("test.jsonl", limit=50)
    replies = generate_replies(bot, [it.messages for it in items], batch_size=8, max_new_tokens=256)
    rows = scored_rows(items, replies)        # id, prompt, prediction, reference, scores, group

Data: any file medtune reads whose records are dialogues (``messages`` shape: alpaca, sharegpt,
messages, ADGEN ``{content, summary}`` and the other prompt/response pairs, CMB-Clin ...). The
last assistant turn is the reference; everything before it is the prompt. Records are grouped by
``category`` when they carry one (Zhongjing ``cate1``, Toyhom ``department`` ...), otherwise by
``source`` when they name more than one.

Predictions (``--predictions``): JSONL, one ``{"prediction", "reference"}`` per line (``predict`` /
``labels`` — ChatGLM P-Tuning's ``generated_predictions.txt`` — and ``response`` are read too),
optional ``id``, ``prompt``, ``category`` / ``source``. An empty prediction is scored (0); a line
that cannot be scored is skipped and counted, or refused with ``file:line`` under ``strict``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.evaluation.metrics import average_scores, sample_scores

PREDICTION_KEYS = ("prediction", "predict", "response")
REFERENCE_KEYS = ("reference", "labels")
GROUP_KEYS = ("category", "source", "group")  # a predictions line's group: the first one present
SAMPLES_FILE = "generated_predictions.jsonl"
log = logging.getLogger("medtune")


@dataclass
class GenItem:
    """One prompt to answer: ``messages`` end with a user turn; ``reference`` is the gold answer."""

    id: str | int
    messages: list
    reference: str
    group: str | None = None


def load_gen_items(path, strict: bool = False, limit: int | None = None):
    """Return ``(items, skipped, group_by)`` for a dialogue dataset (see the module docstring)."""
    from medtune.data.readers.formats import SHAPES
    from medtune.data.readers.stream import ReadOptions, read_all

    records, tally = read_all(path, ReadOptions(on_error="raise" if strict else "count", keep_meta=True))
    if SHAPES[tally.format] != "messages":
        raise MedtuneError(f"{path}: format {tally.format} gives {SHAPES[tally.format]} records with no "
                           "reference answer; eval gen needs dialogues (alpaca, sharegpt, messages, "
                           "prompt/response pairs) — use `medtune infer` to only generate")
    records = records[:limit] if limit else records
    group_by = group_key(records)
    items = [GenItem(rec.get("id", n), rec["messages"][:-1], rec["messages"][-1]["content"],
                     str(rec.get(group_by, "other")) if group_by else None)
             for n, rec in enumerate(records, 1)]
    for reason, shown in tally.examples.items():
        log.warning("skipped %d record(s): %s (first: %s)", tally.skipped[reason], reason, shown[0])
    return items, dict(tally.skipped), group_by


def group_key(records: list[dict]) -> str | None:
    """Return ``category`` when records carry one, ``source`` when they name several, else None."""
    if any("category" in r for r in records):
        return "category"
    if len({r.get("source") for r in records}) > 1:
        return "source"
    return None


def generate_replies(bot, prompts: list, batch_size: int = 16, max_new_tokens: int = 256,
                     system: str | None = None, progress: bool = False, desc: str = "generate") -> list[str]:
    """Return ``bot``'s greedy reply to each prompt, ``batch_size`` prompts per generate call; a
    reasoning trace before the answer is dropped (the answer alone is scored)."""
    from tqdm import tqdm

    from medtune.inference.reasoning import split_trace

    replies: list[str] = []
    with tqdm(total=len(prompts), disable=not progress, unit="prompt", desc=desc) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            replies += [split_trace(r)[1].strip()
                        for r in bot.generate(chunk, system=system, max_new_tokens=max_new_tokens, temperature=0.0)]
            bar.update(len(chunk))
    return replies


def scored_rows(items: list[GenItem], predictions: list[str]) -> list[dict]:
    """Return one output row per item: id, prompt (last user turn), history (earlier turns, if any),
    prediction, reference, scores and group (if any)."""
    rows = []
    for item, pred in zip(items, predictions):
        row = {"id": item.id, "prompt": item.messages[-1]["content"]}
        if len(item.messages) > 1:
            row["history"] = item.messages[:-1]
        row.update(prediction=pred, reference=item.reference, scores=sample_scores(pred, item.reference))
        if item.group is not None:
            row["group"] = item.group
        rows.append(row)
    return rows


def read_predictions(path, strict: bool = False, limit: int | None = None):
    """Return ``(items, predictions, skipped, group_by)`` from a predictions JSONL file; ``limit``
    counts scorable lines."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneError(f"{path}: no such predictions file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise MedtuneError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    items, preds, skipped, keys = [], [], {}, set()
    for n, line in enumerate(lines, 1):
        if not line.strip() or (limit and len(items) >= limit):
            continue
        try:
            item, pred, key = _prediction_line(line, n)
        except MedtuneError as exc:
            if strict:
                raise MedtuneError(f"{path}:{n}: {exc}") from None
            skipped[str(exc)] = skipped.get(str(exc), 0) + 1
            if skipped[str(exc)] == 1:
                log.warning("skipped %s:%d: %s", path, n, exc)
            continue
        items.append(item)
        preds.append(pred)
        keys.add(key)
    if not items:
        raise MedtuneError(f"{path}: no scorable lines (skipped: {skipped or 'none'})")
    group_by = next((k for k in GROUP_KEYS if k in keys), None)
    return items, preds, skipped, group_by


def _prediction_line(line: str, n: int) -> tuple[GenItem, str, str | None]:
    """Parse one predictions line; raise ``MedtuneError(reason)`` (no location) when unusable."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise MedtuneError("not valid JSON") from None
    if not isinstance(row, dict):
        raise MedtuneError("a line must be a JSON object")
    pred, ref = _text_field(row, PREDICTION_KEYS), _text_field(row, REFERENCE_KEYS)
    if not ref.strip():
        raise MedtuneError("empty reference")
    key = next((k for k in GROUP_KEYS if row.get(k) is not None), None)
    prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else ""
    item = GenItem(row.get("id", n), [{"role": "user", "content": prompt}], ref,
                   None if key is None else str(row[key]))
    return item, pred, key


def _text_field(row: dict, keys: tuple) -> str:
    key = next((k for k in keys if k in row), None)
    if key is None:
        raise MedtuneError(f'field "{keys[0]}" missing')
    if not isinstance(row[key], str):
        raise MedtuneError(f'field "{key}" must be a string')
    return row[key]


def gen_summary(rows: list[dict]) -> tuple[dict, dict]:
    """Return ``(overall, {group: averages})`` of the rows' per-sample scores."""
    groups: dict = {}
    for r in rows:
        if "group" in r:
            groups.setdefault(r["group"], []).append(r["scores"])
    overall = average_scores([r["scores"] for r in rows])
    return overall, {name: average_scores(scores) for name, scores in groups.items()}


def write_samples(rows: list[dict], out_dir, name: str = SAMPLES_FILE) -> str:
    """Write ``rows`` as JSONL to ``out_dir/name``; return ``name`` (for ``EvalResult.samples``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / name, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return name
