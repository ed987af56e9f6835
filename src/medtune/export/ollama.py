"""Ollama Modelfiles for exported GGUF files: the chat template in Ollama's Go template syntax.

Example::

    medtune export gguf --model runs/sft-merged -o runs/sft.gguf --modelfile
    ollama create medtune-sft -f runs/sft.Modelfile && ollama run medtune-sft

Ollama does not run the Jinja ``tokenizer.chat_template`` stored in the GGUF: it matches it against
its own library of templates and otherwise falls back to a bare ``{{ .Prompt }}``, which silently
drops the chat format. So a Modelfile is written only for the built-in templates whose Go form is
below (chatml, qwen, llama3, llama3.0, llama2, alpaca, vicuna, huatuo); a custom or other template is refused.

The Go templates use Ollama's ``.Messages`` form (system messages included in order) and render what
the Jinja template renders with ``add_generation_prompt`` when the last message is not the
assistant's; a trailing assistant message is left open so Ollama continues it, as Ollama's own
templates do. Differences: Go templates cannot trim, so llama2/llama3 contents are not stripped, llama3's date line is the published default, and
alpaca's optional ``input`` field does not exist in Ollama's API.
"""

from __future__ import annotations

import os
from pathlib import Path

from medtune.errors import MedtuneError

# Go template pieces. $i / $m: index and message of `range $i, $m := .Messages`.
LAST = "(eq (len (slice $.Messages $i)) 1)"
OPEN = f"(and {LAST} (eq $m.Role \"assistant\"))"  # a trailing assistant message: continued
PROMPT = f"(and {LAST} (ne $m.Role \"assistant\"))"  # after the last user message: generation prompt
SYSTEM_FIRST = '(eq (index $.Messages 0).Role "system")'
RANGE = "{{ range $i, $m := .Messages }}"
IF_USER, IF_ASSISTANT = '{{ if eq $m.Role "user" }}', '{{ if eq $m.Role "assistant" }}'

ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
HUATUO_SYSTEM = "下面是一个问题，运用医学知识来正确回答提问."
QWEN_SYSTEM = "You are a helpful assistant."


def _system_or(default: str) -> str:
    """The first message's content when it is a system message, else ``default``."""
    return f"{{{{ if {SYSTEM_FIRST} }}}}{{{{ (index $.Messages 0).Content }}}}{{{{ else }}}}{default}{{{{ end }}}}"


def _chatml() -> str:
    return (RANGE + "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}"
            f"{{{{ if not {OPEN} }}}}<|im_end|>\n{{{{ end }}}}"
            f"{{{{ if {PROMPT} }}}}<|im_start|>assistant\n{{{{ end }}}}{{{{ end }}}}")


def _qwen() -> str:
    return (f"{{{{ if not {SYSTEM_FIRST} }}}}<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n{{{{ end }}}}"
            + _chatml())


LLAMA3_GEN = "<|start_header_id|>assistant<|end_header_id|>\n\n"
LLAMA31_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def _llama3_turn() -> str:
    return ("<|start_header_id|>{{ $m.Role }}<|end_header_id|>\n\n{{ $m.Content }}"
            f"{{{{ if not {OPEN} }}}}<|eot_id|>{{{{ end }}}}")


def _llama30(bos: str) -> str:
    return bos + RANGE + _llama3_turn() + f"{{{{ if {PROMPT} }}}}{LLAMA3_GEN}{{{{ end }}}}{{{{ end }}}}"


def _llama31(bos: str) -> str:
    """Llama 3.1+: the system header is always written; a first system message fills it."""
    header = (f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA31_SYSTEM}"
              f"{{{{ if {SYSTEM_FIRST} }}}}{{{{ (index $.Messages 0).Content }}}}{{{{ end }}}}<|eot_id|>")
    return (bos + header + RANGE + '{{ if not (and (eq $i 0) (eq $m.Role "system")) }}' + _llama3_turn()
            + f"{{{{ end }}}}{{{{ if {PROMPT} }}}}{LLAMA3_GEN}{{{{ end }}}}{{{{ end }}}}")


def _llama2(bos: str, eos: str, adds_bos: bool) -> str:
    first_user = f"(or (eq $i 0) (and (eq $i 1) {SYSTEM_FIRST}))"
    turn_bos = f"{{{{ if not {first_user} }}}}{bos}{{{{ end }}}}" if adds_bos else bos
    system = ("{{ if and (eq $i 1) " + SYSTEM_FIRST + " }}<<SYS>>\n{{ (index $.Messages 0).Content }}"
              "\n<</SYS>>\n\n{{ end }}")
    return (RANGE + IF_USER + turn_bos + "[INST] " + system + "{{ $m.Content }} [/INST]{{ end }}"
            + IF_ASSISTANT + f" {{{{ $m.Content }}}}{{{{ if not {LAST} }}}} {eos}{{{{ end }}}}{{{{ end }}}}"
            "{{ end }}")


def _alpaca(eos: str) -> str:
    return (_system_or(ALPACA_SYSTEM) + "\n\n" + RANGE
            + IF_USER + "### Instruction:\n{{ $m.Content }}\n\n{{ end }}"
            + IF_ASSISTANT + f"### Response:{{{{ $m.Content }}}}{{{{ if not {LAST} }}}}{eos}\n\n{{{{ end }}}}"
            "{{ end }}" + f"{{{{ if {PROMPT} }}}}### Response:{{{{ end }}}}{{{{ end }}}}")


def _vicuna(eos: str) -> str:
    return (_system_or(VICUNA_SYSTEM) + " " + RANGE
            + IF_USER + "USER: {{ $m.Content }} {{ end }}"
            + IF_ASSISTANT + f"ASSISTANT: {{{{ $m.Content }}}}{{{{ if not {LAST} }}}}{eos}{{{{ end }}}}{{{{ end }}}}"
            + f"{{{{ if {PROMPT} }}}}ASSISTANT:{{{{ end }}}}{{{{ end }}}}")


def _huatuo(eos: str) -> str:
    return (_system_or(HUATUO_SYSTEM) + "\n" + RANGE
            + IF_USER + "### 问题:\n{{ $m.Content }}\n{{ end }}"
            + IF_ASSISTANT + f"### 回答:\n{{{{ $m.Content }}}}{{{{ if not {LAST} }}}}{eos}\n{{{{ end }}}}{{{{ end }}}}"
            + f"{{{{ if {PROMPT} }}}}### 回答:\n{{{{ end }}}}{{{{ end }}}}")


GO_TEMPLATES = ("chatml", "qwen", "llama3", "llama3.0", "llama2", "alpaca", "vicuna", "huatuo")


def go_template(name: str, bos: str = "", eos: str = "", adds_bos: bool = False) -> str:
    """Return the Ollama Go template of built-in chat template ``name`` (refuse names without one).

    ``bos`` / ``eos`` are the tokenizer's marker texts. When the tokenizer adds bos by itself (the
    GGUF's ``add_bos_token``), llama.cpp prepends it, so the template leaves the first one out.
    """
    first_bos = "" if adds_bos else bos
    builders = {"chatml": _chatml, "qwen": _qwen, "llama3": lambda: _llama31(first_bos),
                "llama3.0": lambda: _llama30(first_bos),
                "llama2": lambda: _llama2(bos, eos, adds_bos), "alpaca": lambda: _alpaca(eos),
                "vicuna": lambda: _vicuna(eos), "huatuo": lambda: _huatuo(eos)}
    if name not in builders:
        raise MedtuneError(f"chat template '{name}' has no Ollama (Go) form here; Ollama would fall back to a "
                           f"bare prompt. Built-in templates with one: {', '.join(GO_TEMPLATES)} "
                           "(set the template when training, or write the Modelfile TEMPLATE by hand)")
    return builders[name]()


def modelfile_text(gguf_path, tokenizer, out_path) -> str:
    """Return the Modelfile for ``gguf_path`` as it will sit at ``out_path`` (FROM is relative)."""
    from medtune.data.tokenize.templates import stop_strings, template_name
    from medtune.export.gguf import tokenizer_adds_bos

    name = template_name(tokenizer.chat_template)
    template = go_template(name, tokenizer.bos_token or "", tokenizer.eos_token or "",
                           tokenizer_adds_bos(tokenizer))
    if '"""' in template:
        raise MedtuneError("the chat template's markers contain '\"\"\"', which a Modelfile TEMPLATE cannot hold")
    stops = list(dict.fromkeys(stop_strings(name) + [t for t in [tokenizer.eos_token] if t]))
    source = os.path.relpath(Path(gguf_path).resolve(), Path(out_path).resolve().parent)
    lines = [f"# Ollama Modelfile written by medtune (chat template: {name})",
             f"FROM {source if source.startswith(('.', '/')) else './' + source}",
             f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_modelfile(gguf_path, tokenizer, out_path, overwrite: bool = False) -> Path:
    """Write the Ollama Modelfile of ``gguf_path`` (chat template, stop markers) to ``out_path``."""
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise MedtuneError(f"'{out}' exists; choose another name or pass --overwrite")
    out.write_text(modelfile_text(gguf_path, tokenizer, out), encoding="utf-8")
    return out
