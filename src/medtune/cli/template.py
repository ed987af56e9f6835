"""``medtune template check``: does a checkpoint's chat template train what it serves?

Example::

    medtune template check --model runs/sft
    medtune template check --model runs/sft --data data/train.jsonl --template llama3

For each conversation (the bundled samples, or ``--data``): the training render with its learned
spans highlighted (ANSI colour on a terminal, else ``[[ ]]``), then three checks. The training
tokens before the final reply are exactly the serving prompt (what ``ChatEngine.encode_chat``
encodes), the learned tokens start where that prompt ends, and the template used for training
renders like the tokenizer's own (prompts always; whole conversations unless a built-in writes its
final reply differently on purpose; :mod:`medtune.inference.template_check`, which ``medtune train``
also runs on its first conversations). The first mismatch is one error line naming the template
family and the conversation (``file:line`` for ``--data``), exit 2; otherwise one summary line.
``--template own`` checks the checkpoint's template exactly as saved (no ``auto`` swap).
"""

from __future__ import annotations

import sys
from pathlib import Path

from medtune.cli.groups import command_group
from medtune.errors import MedtuneError, where

GREEN, RESET = "\x1b[32m", "\x1b[0m"


def add_template(sub) -> None:
    """Register ``medtune template check``."""
    tsub = command_group(sub, "template", "chat template checks (training vs serving render)", "check")
    c = tsub.add_parser("check", help="render sample conversations, highlight the learned spans, verify them",
                        epilog="example: medtune template check --model runs/sft --data train.jsonl")
    c.add_argument("--model", required=True, help="model (or tokenizer) dir")
    c.add_argument("--data", help="data file whose conversations to check (default: bundled samples)")
    c.add_argument("--template", default="auto",
                   help="built-in name, auto (default: as training picks it) or own (the saved one, as is)")
    c.add_argument("--reasoning", default="learn", help="learn | mask | drop (data.reasoning)")
    c.set_defaults(handler="medtune.cli.template:cmd_template_check")


def cmd_template_check(args) -> int:
    from medtune.data.tokenize.spans import template_family

    own, tok = _tokenizers(args.model, args.template)
    conversations = _conversations(args.data)
    color = sys.stdout.isatty()
    for conv in conversations:
        text = _check(own, tok, conv, args.reasoning)
        print(f"== {conv.origin}")
        print(text if not color else text.replace("[[", GREEN).replace("]]", RESET))
    family = template_family(tok.chat_template)
    print(f"{len(conversations)} conversations verified, template {family}")
    return 0


def _tokenizers(model: str, template: str):
    """``(the tokenizer as saved, the tokenizer training uses)``."""
    from transformers import AutoTokenizer

    from medtune.models.load import check_model_path, load_tokenizer

    check_model_path(model)
    own = AutoTokenizer.from_pretrained(model)
    return own, (own if template == "own" else load_tokenizer(model, template))


def _conversations(data: str | None) -> list:
    """The conversations to check, each with its origin (``file:line``)."""
    from medtune.data.readers.stream import ReadOptions, iter_records
    from medtune.data.tokenize.spans import Conversation

    if data:
        paths = [Path(data)]
    else:
        from importlib.resources import files

        folder = files("medtune").joinpath("assets", "sample")
        paths = sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jsonl"))
    out = []
    for path in paths:
        for line, rec in iter_records(path, ReadOptions(on_error="bad"), with_lines=True):
            if isinstance(rec.get("messages"), list):
                shown = path.name if not data else str(path)
                out.append(Conversation(rec["messages"], where(shown, line)))
    if not out:
        raise MedtuneError(f"{data}: no conversations (records with messages) to check")
    return out


def _check(own, tok, conv, reasoning: str) -> str:
    """Return the training render of ``conv`` with learned spans in ``[[ ]]``; raise on a mismatch."""
    from medtune.inference.template_check import check_conversation

    ids, labels = check_conversation(tok, conv, reasoning, own=own)
    return _highlighted(tok, ids, labels)


def _highlighted(tok, ids, labels) -> str:
    """Decode ``ids`` with each run of learned tokens wrapped in ``[[ ]]``."""
    from medtune.data.tokenize.examples import IGNORE

    out, run, learned = [], [], False
    for token, label in [*zip(ids, labels), (None, None)]:
        is_learned = label is not None and label != IGNORE
        if token is None or is_learned != learned:
            text = tok.decode(run, clean_up_tokenization_spaces=False) if run else ""
            out.append(f"[[{text}]]" if learned and text else text)
            run, learned = [], is_learned
        if token is not None:
            run.append(token)
    return "".join(out)
