"""Batch inference over a JSONL file: length-sorted batches, resumable output, recorded settings.

Example::

    medtune infer --model runs/sft --input questions.jsonl --output answers.jsonl --batch-size 16

Input rows carry ``messages`` (ending with a user turn), or ``prompt``, or ``instruction`` (+
``input``), and an optional ``id`` (default: the line number). Every output row is the input row
plus ``id``, ``response``, ``finish_reason``, ``prompt_tokens`` and ``completion_tokens`` (and, with
``--rag``, ``citations``: the numbered passages the answer was given), written
(and flushed) batch by batch; ``OUT.meta.json`` records the model, template, sampling parameters and
throughput. Re-running the same command continues an interrupted run: rows already in the output
are kept and not generated again; a half-written last line is dropped and redone. A finished row
is recognised by its ``row_key``, a hash of its id, its rendered prompt and the settings: a row
whose prompt changed under the same id is generated again, and answers to rows no longer in the
input are dropped from the output.

With a safety policy (``--policy``, off by default here: batch output is often training data), a
row the policy acts on gets a ``policy`` list of ``{category, rule, action}``; a row it answers
(``fixed`` / ``refuse``) is not generated and has ``finish_reason: "policy"``; the policy's file and
hash join the settings in ``OUT.meta.json``, so a changed policy is refused unless ``--overwrite``.
``--audit-log`` appends one record per generated row (latency: the row's batch's).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medtune.data.readers.records import parse_object_line
from medtune.errors import MedtuneError
from medtune.files import atomic_output, atomic_write_text
from medtune.inference.chat import with_system


@dataclass
class InferRow:
    id: str | int
    messages: list
    source: dict  # the input row, copied to the output
    key: str = ""  # row_key(): set once the prompt is rendered
    prepared: object = None  # the ReplyService's Prepared: policy actions, the messages the model sees
    citations: list | None = None  # with --rag: the passages put into the prompt


@dataclass
class InferSummary:
    rows: int = 0
    done_before: int = 0
    generated: int = 0
    skipped: dict = field(default_factory=dict)
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def row_messages(row: dict, where: str, system: str | None = None) -> list:
    """Return the chat messages a row asks to answer; raise naming ``where`` when it has none."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
                ("system", "user", "assistant") for m in messages):
            raise MedtuneError(f'{where}: field "messages" must be a list of {{role, content}} messages')
        if messages[-1]["role"] != "user":
            raise MedtuneError(f'{where}: field "messages" must end with a user turn')
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    elif isinstance(row.get("instruction"), str):
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise MedtuneError(f'{where}: field "input" must be a string')
        messages = [{"role": "user", "content": row["instruction"] + ("\n" + extra if extra else "")}]
    else:
        raise MedtuneError(f'{where}: no "messages", "prompt" or "instruction" field')
    return with_system(messages, system)


def read_rows(path, system=None, strict=False) -> tuple[list[InferRow], dict]:
    """Return the rows of a JSONL file and ``{reason: count}`` of skipped lines (``strict``: raise)."""
    rows, skipped, seen = [], {}, set()
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(_lines(f, path), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = parse_object_line(line, where)
                rid = row.get("id", n)
                if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                    raise MedtuneError(f'{where}: field "id" must be a string or an integer')
                if rid in seen:
                    raise MedtuneError(f'{where}: duplicate id ({rid!r})')
                rows.append(InferRow(rid, row_messages(row, where, system), row))
                seen.add(rid)
            except MedtuneError as exc:
                if strict:
                    raise
                reason = re.sub(r" \(.*\)$", "", str(exc).split(": ", 1)[1])  # counted without details
                skipped[reason] = skipped.get(reason, 0) + 1
                _warn_once(skipped, reason, str(exc))
    return rows, skipped


def _lines(f, path):
    try:
        yield from f
    except UnicodeDecodeError as exc:
        raise MedtuneError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _warn_once(skipped: dict, reason: str, message: str) -> None:
    import logging

    if skipped[reason] == 1:
        logging.getLogger("medtune").warning("skipped %s", message)


def row_key(row_id, prompt_ids, settings: str) -> str:
    """The content address of one answer: a hash of the row's id, its rendered prompt (token ids,
    template and system prompt included) and the generation settings."""
    body = json.dumps([row_id, list(prompt_ids), settings], ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def keep_finished(out: Path, keys: set) -> set:
    """Return the keys of ``keys`` already answered in ``out``; rewrite ``out`` without its other
    rows (answers to prompts that changed or left the input) and without a half-written last line."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8").splitlines(keepends=True)
    kept, done = [], set()
    for n, line in enumerate(lines, 1):
        try:
            key = json.loads(line).get("row_key")
        except (json.JSONDecodeError, AttributeError):
            raise MedtuneError(f"{out}:{n}: not a medtune infer row; use --overwrite to start over") from None
        if key in keys and key not in done:
            kept.append(line)
            done.add(key)
    if len(kept) != len(lines) or end != len(data):
        with atomic_output(out) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")
    return done


FINGERPRINT = ("model", "adapter", "template_sha256", "params", "system", "policy", "rag")


def _settings_fingerprint(meta: dict) -> str:
    return json.dumps({k: meta.get(k) for k in FINGERPRINT}, sort_keys=True)


def check_meta(meta_path: Path, meta: dict, overwrite: bool) -> None:
    """Refuse to continue an output made with other settings (unless ``overwrite``)."""
    if overwrite or not meta_path.exists():
        return
    old = json.loads(meta_path.read_text(encoding="utf-8"))
    if _settings_fingerprint(old) != _settings_fingerprint(meta):
        changed = [k for k in FINGERPRINT  # compared as JSON: a tuple read back is a list
                   if json.dumps(old.get(k), sort_keys=True) != json.dumps(meta.get(k), sort_keys=True)]
        raise MedtuneError(f"{meta_path.with_suffix('').with_suffix('')}: written with different "
                           f"{', '.join(changed)}; pass --overwrite to start over")


def run_infer(engine, input_path, output_path, params, batch_size=16, system=None, model_label="",
              adapter=None, overwrite=False, strict=False, progress=True, service=None) -> InferSummary:
    """Generate a response for every row of ``input_path`` not yet in ``output_path``, through
    ``service`` (a ReplyService: policy, retrieval, audit; None: the model alone)."""
    from tqdm import tqdm

    from medtune.inference.service import ReplyService

    if batch_size < 1:
        raise MedtuneError("--batch-size must be >= 1")
    service = service or ReplyService()
    out, meta_path = Path(output_path), meta_file(output_path)
    rows, skipped = read_rows(input_path, system, strict)
    meta = _meta(engine, input_path, params, system, model_label, adapter, batch_size)
    if service.policy is not None:  # only then: outputs from before policies existed still resume
        meta["policy"] = service.info.get("policy")
    if service.rag is not None:  # likewise
        meta["rag"] = {"index": service.rag.path, "manifest_sha256": service.rag.fingerprint, "k": service.rag.k}
    check_meta(meta_path, meta, overwrite)
    if overwrite and out.exists():
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings_fingerprint(meta)
    for r in rows:
        r.prepared = service.prepare(r.messages, request_id=str(r.id))
        r.citations = r.prepared.citations if service.rag is not None else None
    encoded = [(engine.encode_chat(r.prepared.messages, enable_thinking=params.enable_thinking), r) for r in rows]
    for ids, r in encoded:
        r.key = row_key(r.id, ids, settings)
    done = keep_finished(out, {r.key for r in rows})
    todo = [(ids, r) for ids, r in encoded if r.key not in done]
    fixed = [r for _, r in todo if r.prepared.fixed_reply is not None]  # the policy answers: no model
    todo = [(ids, r) for ids, r in todo if r.prepared.fixed_reply is None]
    summary = InferSummary(rows=len(rows), done_before=len(rows) - len(todo) - len(fixed), skipped=skipped)
    _write_meta(meta_path, meta, summary, "running")
    started = time.perf_counter()
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo) + len(fixed), disable=not progress,
                                                     unit="row", desc="infer") as bar:
        for row in fixed:
            service.finish(row.prepared, "", 0.0, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                           surface="infer")
            f.write(json.dumps(_fixed_row(row), ensure_ascii=False) + "\n")
        f.flush()
        summary.generated += len(fixed)
        bar.update(len(fixed))
        for batch, prompts in _length_sorted_batches(todo, batch_size):
            batch_started = time.perf_counter()
            answers = engine.generate(prompts, _batch_params(params, batch))
            took = time.perf_counter() - batch_started  # each row's latency: its batch's
            for row, got, prompt in zip(batch, _per_prompt(answers, params.n), prompts):
                record = _output_row(row, got, _opens_thinking(engine, prompt))
                usage = {"prompt_tokens": got[0].prompt_tokens, "completion_tokens": got[0].completion_tokens,
                         "total_tokens": got[0].prompt_tokens + got[0].completion_tokens}
                record["response"] = service.finish(row.prepared, record["response"], took, usage, surface="infer")
                if "responses" in record:
                    record["responses"] = [row.prepared.shown(r) for r in record["responses"]]
                if row.prepared.actions:
                    record["policy"] = row.prepared.actions
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                summary.completion_tokens += sum(c.completion_tokens for c in got)
            f.flush()
            summary.generated += len(batch)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - started
    _write_meta(meta_path, meta, summary, "finished")
    return summary


def meta_file(output_path) -> Path:
    out = Path(output_path)
    return out.with_name(out.name + ".meta.json")


def _length_sorted_batches(encoded, batch_size):
    """Yield ``(rows, prompt ids)`` batches of ``(prompt ids, row)`` pairs, longest prompts first
    (less padding, early OOM)."""
    encoded = sorted(encoded, key=lambda p: -len(p[0]))
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        yield [r for _, r in chunk], [ids for ids, _ in chunk]


def _batch_params(params, batch):
    """Sampling seeds follow the batch's first id, so a resumed run does not replay one seed."""
    if params.temperature == 0 or params.seed is None:
        return params
    from dataclasses import replace

    digest = hashlib.sha256(f"{params.seed}:{batch[0].id}".encode()).digest()
    return replace(params, seed=int.from_bytes(digest[:4], "little"))


def _per_prompt(completions, n):
    return [completions[i:i + n] for i in range(0, len(completions), n)]


def _opens_thinking(engine, prompt) -> bool:
    from medtune.inference.reasoning import opens_thinking

    return opens_thinking(engine.tokenizer().decode(prompt[-8:], skip_special_tokens=False))


def _output_row(row: InferRow, got, opened: bool = False) -> dict:
    """The output row: ``response`` is the answer; a reasoning trace goes to ``reasoning_content``."""
    from medtune.inference.reasoning import split_trace

    reasoning, answer = split_trace(got[0].text, opened)
    out = {**row.source, "id": row.id, "row_key": row.key, "response": answer.strip(),
           "finish_reason": got[0].finish_reason, "prompt_tokens": got[0].prompt_tokens,
           "completion_tokens": got[0].completion_tokens}
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    if row.citations is not None:
        out["citations"] = row.citations
    if len(got) > 1:
        out["responses"] = [split_trace(c.text, opened)[1].strip() for c in got]
    return out


def _fixed_row(row: InferRow) -> dict:
    """The output row of a request the policy answered without the model."""
    return {**row.source, "id": row.id, "row_key": row.key, "response": row.prepared.fixed_reply,
            "finish_reason": "policy", "prompt_tokens": 0, "completion_tokens": 0, "policy": row.prepared.actions}


def _meta(engine, input_path, params, system, model_label, adapter, batch_size) -> dict:
    from medtune.data.readers.files import file_sha256
    from medtune.data.tokenize.templates import template_name

    template = engine.template()
    return {"model": model_label, "adapter": adapter, "backend": engine.backend,
            "template": template_name(template), "chat_template": template,
            "template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "params": _params_record(params), "system": system, "batch_size": batch_size,
            "input": str(input_path), "input_sha256": file_sha256(input_path)}


def _params_record(params) -> dict:
    """``params`` as OUT.meta.json has always recorded them: ``max_new_tokens`` named ``max_tokens``;
    the thinking settings only when set (so runs from before they existed still resume)."""
    return {"max_tokens" if k == "max_new_tokens" else k: v for k, v in asdict(params).items()
            if v is not None or k not in ("enable_thinking", "thinking_budget")}


def _write_meta(path: Path, meta: dict, summary: InferSummary, status: str) -> None:
    record = {**meta, "status": status, "rows": summary.rows, "done_before": summary.done_before,
              "generated": summary.generated, "skipped": summary.skipped,
              "completion_tokens": summary.completion_tokens, "seconds": round(summary.seconds, 3),
              "rows_per_s": round(summary.rows_per_s, 3), "tokens_per_s": round(summary.tokens_per_s, 2)}
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
