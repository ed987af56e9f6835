"""A tiny model scripted to generate a fixed token sequence: reasoning tests know the trace and the
answer exactly. Example::

    bot = Scripted(tiny_dir, "qwen3")
    bot.script = bot.ids("<think>\\n", [bot.fever] * 3, "\\n</think>\\n\\n", [bot.rest])
    bot.engine.generate(...)   # <think>, fever x3, </think>, then rest forever
"""

from __future__ import annotations


class Scripted:
    """The tiny model with ``template`` and <think>/</think> as added (non-special) tokens, as in
    Qwen3's and DeepSeek-R1's tokenizers, generating ``self.script`` (token ids) step by step."""

    def __init__(self, tiny_dir, template: str):
        from transformers import AutoModelForCausalLM

        from medtune.inference.engines import HFEngine
        from medtune.models.load import load_tokenizer

        self.tok = tok = load_tokenizer(str(tiny_dir), template)
        tok.add_tokens(["<think>", "</think>"])
        model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
        model.resize_token_embeddings(len(tok))
        self.script, step, forward = [], [0], model.forward

        def scripted(*args, **kwargs):
            out = forward(*args, **kwargs)
            step[0] = 0 if out.logits.shape[1] > 1 else step[0] + 1  # the first step reads the prompt
            out.logits[:, -1, :] = 0.0
            out.logits[:, -1, self.script[min(step[0], len(self.script) - 1)]] = 10.0
            return out

        model.forward = scripted
        self.engine = HFEngine(model, tok, name="tiny")
        self.fever, self.rest = (tok(w, add_special_tokens=False)["input_ids"][-1] for w in ("fever", "rest"))

    def ids(self, *parts) -> list[int]:
        """Token ids of ``parts``: strings are tokenized one by one (a tag cut into pieces stays cut)."""
        out = []
        for part in parts:
            out += self.tok(part, add_special_tokens=False)["input_ids"] if isinstance(part, str) else part
        return out

    def text(self, ids) -> str:
        return self.tok.decode(ids)
