"""Tiny random models with locally trained tokenizers: for trying medtune and for tests.

Example::

    medtune model tiny --arch llama -o runs/tiny-llama
    medtune model tiny --arch qwen2 --text corpus.txt --hidden 128 --layers 4 -o runs/tiny-qwen
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medtune.errors import MedtuneError

# Registered as special tokens so the chatml/qwen markers are single tokens.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
ARCHS = ("llama", "qwen2")
SEGMENTERS = ("none", "jieba")


@dataclass
class TinySpec:
    arch: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 0  # 0: 4 × hidden (rounded to 8)
    vocab_size: int = 2048
    max_positions: int = 2048
    template: str = "chatml"
    seed: int = 0
    # "jieba": the BPE learns its merges from jieba's words of the texts, not from whole sentences,
    # so no token spans a word boundary. Trained on a small repetitive corpus, plain BPE fuses whole
    # phrases ("应到皮肤科就诊" as one token): a fact's value then has another tokenization in every
    # sentence it appears in, and what the model stores under one is not there for the others.
    segment: str = "none"


def bundled_text() -> list[str]:
    """Return the texts of the package's sample data (Chinese and English): the default corpus."""
    from medtune.data.readers.files import read_file

    texts = []
    for res in sorted(resources.files("medtune.assets.sample").iterdir(), key=lambda r: r.name):
        if res.name.endswith((".txt", ".json", ".jsonl")):
            texts += [t for rec in read_file(str(res)).records for t in _record_texts(rec)]
    return texts


def _record_texts(record: dict) -> list[str]:
    """Return the strings of a unified record (text, messages or preference shape)."""
    if "text" in record:
        return [record["text"]]
    turns = [m for key in ("messages", "prompt", "chosen", "rejected") for m in record.get(key, [])]
    return [m["content"] for m in turns]


def train_tokenizer(texts, vocab_size: int, segment: str = "none"):
    """Return a byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (no downloads);
    ``segment="jieba"``: on the texts' jieba words (merges never cross a word boundary)."""
    if segment not in SEGMENTERS:
        raise MedtuneError(f"tiny model: segment must be one of {', '.join(SEGMENTERS)}, got {segment!r}")
    if segment == "jieba":
        texts = _jieba_words(texts)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def _jieba_words(texts) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [word for text in texts for word in jieba.lcut(text)]


def _model_config(spec: TinySpec, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.arch]
    inter = spec.intermediate or (4 * spec.hidden + 7) // 8 * 8
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=inter,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def build_tiny(out, spec: TinySpec | None = None, texts=None) -> Path:
    """Build a random tiny causal LM and a tokenizer trained on ``texts``; save both to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    from medtune.data.tokenize.templates import template_source

    spec = spec or TinySpec()
    if spec.arch not in ARCHS:
        from medtune.errors import MedtuneError, did_you_mean

        raise MedtuneError(f"unknown arch '{spec.arch}'" + did_you_mean(spec.arch, ARCHS))
    tokenizer = train_tokenizer(texts or bundled_text(), spec.vocab_size, spec.segment)
    tokenizer.chat_template = template_source(spec.template)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(_model_config(spec, tokenizer))
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
