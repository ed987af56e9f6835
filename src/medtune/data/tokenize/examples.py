"""Tokenization for training: prompt masking, overlength handling, packing, batch collation.

Labels are ``-100`` wherever no loss is taken. A conversation is rendered with the tokenizer's chat
template (the one saved with every checkpoint); the learned spans (each reply and its end-of-turn
marker) come from the template's ``{% generation %}`` blocks or, for any other template, from its
serving prompts (:mod:`medtune.data.tokenize.spans`), and are verified for every example. Packed rows restart ``position_ids`` at every sample, which
transformers turns into a block-diagonal causal mask (only when no ``attention_mask`` and no KV
cache are given: run packed forward passes with ``use_cache=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medtune.data.tokenize.packing import first_fit_bins, join_examples
from medtune.data.tokenize.spans import IGNORE, encode_batch


@dataclass
class TokenStats:
    """What tokenization did, reported in the run's lineage."""

    examples: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    real_tokens: int = 0  # tokens that carry a label
    verified: int = 0  # conversations whose learned tokens were checked against their replies
    rows: int = 0  # rows after packing / splitting
    from_cache: bool = False  # True when a previous run's tokenization was reused

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def merge(self, other: TokenStats) -> None:
        """Add the counts of ``other`` (one shard of the same data)."""
        self.merge_dict({"examples": other.examples, "truncated": other.truncated,
                         "skipped": other.skipped, "real_tokens": other.real_tokens,
                         "rows": other.rows, "verified": other.verified})

    def merge_dict(self, counts: dict) -> None:
        """Add counts saved as a dict (``dataclasses.asdict`` of another TokenStats)."""
        self.examples += counts.get("examples", 0)
        self.truncated += counts.get("truncated", 0)
        self.real_tokens += counts.get("real_tokens", 0)
        self.rows += counts.get("rows", 0)
        self.verified += counts.get("verified", 0)
        for reason, n in counts.get("skipped", {}).items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def apply_template(tokenizer, messages, **kwargs):
    """Return ``tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)``.

    A tokenizer without a bos/eos token renders those template variables as "" instead of failing;
    template errors become one-line MedtuneErrors.
    """
    return _call_template(tokenizer, messages, tokenize=True, return_dict=True, **kwargs)


def render_chat(tokenizer, messages, **kwargs) -> str:
    """Return the chat template's text for ``messages`` (same error handling as apply_template)."""
    return _call_template(tokenizer, messages, tokenize=False, **kwargs)


def _call_template(tokenizer, messages, **kwargs):
    from jinja2 import TemplateError

    from medtune.errors import MedtuneError

    tokens = {k: getattr(tokenizer, k) or "" for k in ("bos_token", "eos_token")}
    try:
        return tokenizer.apply_chat_template(messages, **tokens, **kwargs)
    except TemplateError as exc:
        raise MedtuneError(f"chat template failed to render: {exc}") from None


def encode_conversation(tokenizer, messages, train_on_prompt: bool = False, reasoning: str = "learn"):
    """Return ``(input_ids, labels)`` for one conversation rendered with the tokenizer's template.

    The learned tokens are each reply and its end-of-turn marker, found for any template and
    verified (see :mod:`medtune.data.tokenize.spans`); a conversation that cannot be split exactly
    raises a one-line MedtuneError.
    """
    return encode_batch(tokenizer, [messages], reasoning=reasoning, train_on_prompt=train_on_prompt)[0]


TEMPLATE_BATCH = 256  # conversations rendered and tokenized per call (the Rust tokenizer batches)


def _encoded(tokenizer, conversations, train_on_prompt: bool, reasoning: str = "learn"):
    """``(input_ids, labels)`` per conversation, as :func:`encode_conversation` gives them, a batch
    of conversations at a time (one batched tokenizer call per batch)."""
    conversations = list(conversations)
    for start in range(0, len(conversations), TEMPLATE_BATCH):
        batch = conversations[start:start + TEMPLATE_BATCH]
        yield from encode_batch(tokenizer, batch, reasoning=reasoning, train_on_prompt=train_on_prompt,
                                offset=start)


def encode_conversations(tokenizer, conversations, max_length: int, overlength: str = "truncate",
                         train_on_prompt: bool = False, stats: TokenStats | None = None,
                         reasoning: str = "learn") -> list[dict]:
    """Return training examples ``{input_ids, labels}``; overlength ones truncated or skipped.

    Every example's learned tokens are verified against its replies (counted in ``stats.verified``).
    ``reasoning`` (learn | mask | drop) decides whether reasoning traces are learned.
    """
    stats = stats or TokenStats()
    out, verified = [], 0
    conversations = _without_control_text(tokenizer, conversations, stats)
    for ids, labels in _encoded(tokenizer, conversations, train_on_prompt, reasoning):
        verified += 1
        if len(ids) > max_length:
            if overlength == "skip":
                stats.skip("overlength")
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            stats.truncated += 1
        if all(label == IGNORE for label in labels[1:]):
            stats.skip("no answer tokens within max_length")
            continue
        out.append({"input_ids": ids, "labels": labels})
    stats.verified += verified
    stats.examples += len(out)
    stats.rows += len(out)
    stats.real_tokens += sum(_count_labels(ex["labels"]) for ex in out)
    return out


CONTROL_TEXT = "content holds a control token's text (serving encodes it as plain text, not as the token)"


def _without_control_text(tokenizer, conversations, stats: TokenStats):
    """Yield the conversations whose contents hold no control token's text; skip and count the
    others, which training would encode as real control tokens where serving does not."""
    from medtune.data.tokenize.templates import control_pattern

    controls = control_pattern(tokenizer)
    for conv in conversations:
        messages = getattr(conv, "messages", conv)  # a spans.Conversation or a list of messages
        if controls and any(isinstance(m.get("content"), str) and controls.search(m["content"]) for m in messages):
            stats.skip(CONTROL_TEXT)
            continue
        yield conv


def encode_texts(tokenizer, texts, block_size: int, overlength: str = "truncate",
                 stats: TokenStats | None = None) -> list[dict]:
    """Return pretraining pieces: each text + eos, split into chunks of at most ``block_size``.

    ``overlength="skip"`` drops (and counts) documents longer than one block instead of splitting.
    """
    stats = stats or TokenStats()
    eos = tokenizer.eos_token_id
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        if len(ids) > block_size and overlength == "skip":
            stats.skip("overlength")
            continue
        stats.examples += 1
        for start in range(0, len(ids), block_size):
            chunk = ids[start : start + block_size]
            if len(chunk) > 1:
                out.append({"input_ids": chunk, "labels": list(chunk)})
    stats.real_tokens += sum(_count_labels(ex["labels"]) for ex in out)
    stats.rows += len(out)
    return out


def _count_labels(labels) -> int:
    """Return how many tokens of one example contribute to the loss (the first never does)."""
    return sum(1 for label in labels[1:] if label != IGNORE)


def pack_sequences(examples, max_length: int) -> list[dict]:
    """Return rows of up to ``max_length`` tokens, each holding whole examples (first-fit decreasing).

    Every row carries ``position_ids`` restarting at 0 for each example, and the first label of each
    example is masked, so a packed row gives exactly the loss of its examples run one by one.
    """
    bins = first_fit_bins([len(ex["input_ids"]) for ex in examples], max_length)
    return [join_examples([examples[i] for i in members]) for members in bins]


class Collator:
    """Pad a list of examples into a batch (right padding).

    Unpacked examples get an ``attention_mask``. Packed rows (with ``position_ids``) get none: the
    padding is appended as one more segment whose positions restart at 0, so it attends only to
    itself and carries no labels.

    ``flatten=True`` (flash attention) joins the whole batch into one row without padding, each
    example's positions restarting at 0 and its first label masked, plus the ``cu_seq_lens`` the
    varlen kernels read (so they need no device sync per layer): the same loss as padded rows.
    """

    def __init__(self, pad_token_id: int, flatten: bool = False):
        self.pad = pad_token_id
        self.flatten = flatten

    def __call__(self, features):
        import torch

        if self.flatten:
            return _flat_batch(features)
        width = max(len(f["input_ids"]) for f in features)
        packed = "position_ids" in features[0]
        batch = {"input_ids": [], "labels": []}
        if packed:
            batch["position_ids"] = []
        else:
            batch["attention_mask"] = []
        for f in features:
            n = len(f["input_ids"])
            gap = width - n
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad] * gap)
            batch["labels"].append(list(f["labels"]) + [IGNORE] * gap)
            if packed:
                batch["position_ids"].append(list(f["position_ids"]) + list(range(gap)))
            else:
                batch["attention_mask"].append([1] * n + [0] * gap)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _flat_batch(features) -> dict:
    """One padding-free row holding every example of ``features`` (see ``Collator``)."""
    import torch

    rows = [f if "position_ids" in f else join_examples([f]) for f in features]
    row = {key: [t for r in rows for t in r[key]] for key in ("input_ids", "labels", "position_ids")}
    batch = {k: torch.tensor([v], dtype=torch.long) for k, v in row.items()}
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([batch["position_ids"].shape[1]])]).to(torch.int32)
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
    batch["max_length_q"] = batch["max_length_k"] = int(cu_seq_lens.diff().max())
    return batch
