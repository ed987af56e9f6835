"""The ``medtune`` command: parse, validate, call the library, print. Imports nothing heavy.

Examples::

    medtune demo --out runs/demo
    medtune model tiny --arch llama -o runs/tiny
    medtune train examples/sft_lora.yaml train.epochs=1
    medtune pipeline examples/pipeline.yaml
    medtune chat --model runs/demo/sft
"""

from __future__ import annotations

import argparse
import sys

from medtune.cli.groups import command_group
from medtune.cli.rag import add_eval_rag_args, add_rag, add_rag_args
from medtune.errors import MedtuneError

EPILOG = """examples:
  medtune demo --out runs/demo                     whole PT -> SFT -> GRPO pipeline on a tiny model, CPU
  medtune model tiny --arch llama -o runs/tiny     tiny random model + locally trained tokenizer
  medtune train sft.yaml train.epochs=1            one stage; key=value overrides the YAML
  medtune pipeline pipe.yaml                       stages in order, each from the previous output
  medtune plan sft.yaml --gpu H100                 memory per component and time, before training
  medtune data convert huatuo.json -o sft.jsonl    any layout -> unified JSONL (also clean, generate,
                                                   mix, split, stats)
  medtune tokenizer extend --base M --corpus c.txt --add 2000 -o M2   grow the vocabulary
  medtune template check --model runs/sft         training render vs serving prompt, learned spans
  medtune export merge --adapter runs/sft -o runs/sft-merged           LoRA -> full weights
  medtune export gguf --model runs/sft-merged -o sft.gguf --modelfile  llama.cpp / Ollama file
  medtune chat --model runs/demo/sft               interactive; 'clear' resets, 'stop'/'exit' quits
  medtune infer --model runs/sft --input q.jsonl --output a.jsonl      batch generation, resumable
  medtune serve api --model runs/sft --api-key KEY  OpenAI-compatible API on 127.0.0.1:8000
  medtune serve web --model runs/sft                Gradio chat page on 127.0.0.1:7860
  medtune rag index kb/ -o runs/kb-index            BM25 passages for --rag INDEX on chat/infer/serve
  medtune eval choice --model runs/sft --data apollo/test/zh.json --output runs/eval/apollo
  medtune eval report runs/demo runs/eval --output runs/report          markdown + HTML comparison
  medtune eval policy --policy clinic.yaml         safety policy: confusion table, recall, false positives
"""


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the embedded medical-facts demo (PT -> mixed SFT -> GRPO) on CPU",
                       epilog="example: medtune demo --out runs/demo")
    p.add_argument("--out", default="runs/demo", help="output dir (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo run in --out")
    p.add_argument("--seed", type=int, default=None,
                   help="model-init and training seed (default: the bundled config's, 0); the questions stay the same")
    p.set_defaults(handler="medtune.cli.commands:cmd_demo")


CONFIG_DOC = "docs/config.md in the source tree (or print it: python -m medtune.config.reference)"
EXAMPLES_DIR = "examples/ (sft_lora.yaml, pt.yaml, dpo.yaml, pipeline.yaml, ...)"


def _add_train(sub):
    from medtune.config.stages import STAGE_TABLE

    stages = "\n".join(f"  {name:<7}{spec.summary}" for name, spec in STAGE_TABLE.items())
    p = sub.add_parser("train", help="train one stage from a YAML config",
                       epilog=f"stages:\n{stages}\n\n"
                              "example: medtune train sft.yaml train.learning_rate=1e-4 output=runs/x\n"
                              f"every config key, its default and the stages it applies to: {CONFIG_DOC}\n"
                              f"runnable configs: {EXAMPLES_DIR}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help=f"stage config YAML (stage: {'|'.join(STAGE_TABLE)})")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in the output dir")
    p.set_defaults(handler="medtune.cli.commands:cmd_train")


def _add_pipeline(sub):
    p = sub.add_parser("pipeline", help="run a multi-stage pipeline YAML",
                       epilog="example: medtune pipeline pipe.yaml stages.sft.train.epochs=1\n"
                              f"config keys: {CONFIG_DOC}; examples: {EXAMPLES_DIR}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="pipeline YAML (base: model block, stages: list)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (stages.<name>.key=value)")
    p.add_argument("--overwrite", action="store_true", help="replace different runs in stage outputs")
    p.set_defaults(handler="medtune.cli.commands:cmd_pipeline")


def _add_plan(sub):
    p = sub.add_parser("plan", help="training memory (per component) and time of a stage config, before any weights load",
                       epilog="example: medtune plan sft.yaml --gpu H100   (or --memory 24; --json for a script)")
    p.add_argument("config", help="stage config YAML (the one medtune train takes)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.batch_size=4")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpu", help="a GPU name (H100, H200, A100-80GB, L40S, RTX4090, ...): its memory and speed")
    where.add_argument("--memory", type=float, help="memory available, in GB (2^30 bytes)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="plan for this device (default: cuda unless the "
                   "config says model.device: cpu)")
    p.add_argument("--tokens-per-second", type=float, help="your measured throughput, for the time per epoch")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler="medtune.cli.plan:cmd_plan")


def _add_model(sub):
    msub = command_group(sub, "model", "model utilities", "tiny")
    t = msub.add_parser("tiny", help="build a tiny random model + locally trained tokenizer",
                        epilog="example: medtune model tiny --arch qwen2 --hidden 128 -o runs/tiny")
    t.add_argument("-o", "--out", required=True, help="output dir")
    t.add_argument("--arch", default="llama", help="llama or qwen2 (default llama)")
    t.add_argument("--text", action="append", help="text file(s) to train the tokenizer on (default: bundled)")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--vocab-size", type=int, default=2048)
    t.add_argument("--segment", choices=("none", "jieba"), default="none",
                   help="jieba: the tokenizer learns its merges from jieba's words (Chinese), so no token "
                        "spans two words; none: from whole lines (default)")
    t.add_argument("--template", default="chatml", help="chat template saved with the tokenizer")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(handler="medtune.cli.commands:cmd_model_tiny")


def _add_chat(sub):
    from medtune.cli.model_args import add_model_args, add_service_args
    from medtune.inference.settings import add_generation_args

    p = sub.add_parser("chat", help="interactive chat with a model dir (full or adapter)",
                       epilog="example: medtune chat --model runs/demo/sft   ('clear' resets, 'stop' quits)")
    add_model_args(p)
    p.add_argument("--system", help="system prompt")
    add_generation_args(p, ("max_new_tokens", "temperature", "enable_thinking", "thinking_budget"))
    add_service_args(p, policy_default="default")
    add_rag_args(p)
    p.set_defaults(handler="medtune.cli.commands:cmd_chat")


def _add_infer(sub):
    from medtune.cli.model_args import add_backend_args, add_model_args, add_service_args
    from medtune.inference.settings import add_generation_args

    p = sub.add_parser(
        "infer", help="batch generation over a JSONL file (resumable)",
        epilog="example: medtune infer --model runs/sft --input questions.jsonl --output answers.jsonl\n"
               "rows carry 'messages' or 'prompt' / 'instruction' (+'input'), and an optional 'id'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--input", required=True, help="JSONL of messages / prompt / instruction(+input) rows")
    p.add_argument("--output", required=True, help="JSONL written row by row; a re-run continues it")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    add_generation_args(p, ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed", "enable_thinking",
                            "thinking_budget"),
                        defaults={"seed": 42})  # a sampled run is reproducible unless asked otherwise
    p.add_argument("--system", help="system prompt added to rows that have none")
    add_backend_args(p)
    p.add_argument("--overwrite", action="store_true", help="start over instead of continuing --output")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input row (exit 2)")
    add_service_args(p, policy_default="none")  # batch output is data: a triage prefix would be learned
    add_rag_args(p)
    p.set_defaults(handler="medtune.cli.serve:cmd_infer")


def _add_bind_args(p, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port})")


def _add_serve(sub):
    from medtune.cli.model_args import add_backend_args, add_model_args, add_service_args

    ssub = command_group(sub, "serve", "serve a model: OpenAI-compatible API or web chat", "api,web")
    a = ssub.add_parser(
        "api", help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models)",
        epilog="example: medtune serve api --model runs/sft --adapter tcm=runs/tcm-lora --api-key $KEY")
    add_model_args(a, adapter=False)
    a.add_argument("--adapter", dest="adapters", action="append", default=[], metavar="NAME=DIR",
                   help="LoRA adapter on --model served as model NAME (repeatable)")
    a.add_argument("--name", help="model name of --model itself (default: its directory name)")
    _add_bind_args(a, port=8000)
    a.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $MEDTUNE_API_KEY if set; empty: refused)")
    a.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback --host without a key (refused otherwise: anyone reaching it could use it)")
    add_backend_args(a)
    a.add_argument("--max-batch", type=int, default=16, help="requests generated together (default 16)")
    a.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429 (default 256)")
    a.add_argument("--max-prompt-tokens", type=int, default=4096)
    a.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens accepted")
    a.add_argument("--max-body-kb", type=int, default=1024, help="largest request body (default 1024 KiB)")
    a.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take, queue included; then 504 and its generation stopped (default 600)")
    add_service_args(a, policy_default="default")
    _add_db_arg(a)
    add_rag_args(a)
    a.set_defaults(handler="medtune.cli.serve:cmd_serve_api")
    w = ssub.add_parser("web", help="Gradio chat page (history, streaming, stop, regenerate)",
                        epilog="example: medtune serve web --model runs/sft --port 7860")
    add_model_args(w)
    _add_bind_args(w, port=7860)
    w.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link (needs --auth, or --no-auth to open it to anyone)")
    w.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                   help="require this login (repeatable); mind that it shows in the process list: --auth-file hides it")
    w.add_argument("--auth-file", metavar="FILE", help="logins, one USER:PASSWORD a line ('#' comments)")
    w.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback --host or --share with no login (refused otherwise)")
    add_service_args(w, policy_default="default")
    _add_db_arg(w)
    add_rag_args(w)
    w.set_defaults(handler="medtune.cli.webui:cmd_serve_web")


def _add_db_arg(p) -> None:
    p.add_argument("--db", metavar="PATH|URL",
                   help="store conversations, replies and feedback here: a SQLite file or a postgresql:// URL; "
                        "'none' stores nothing (default: feedback.db in the --model directory)")


def _add_tokenizer(sub):
    tsub = command_group(sub, "tokenizer", "tokenizer utilities (domain vocabulary expansion)", "extend")
    e = tsub.add_parser(
        "extend", help="learn frequent domain tokens missing from a base vocabulary and add them",
        epilog="example: medtune tokenizer extend --base runs/tiny --corpus tcm.txt --add 2000 -o runs/tiny-ext")
    e.add_argument("--base", required=True, help="model dir whose tokenizer (and embeddings) grow")
    e.add_argument("--corpus", required=True, nargs="+", help="domain text files (.txt or any text/messages format)")
    e.add_argument("--add", type=int, required=True, help="how many tokens to add at most")
    e.add_argument("--min-freq", type=int, default=5, help="ignore candidates seen fewer times (default 5)")
    e.add_argument("--max-chars", type=int, default=4, help="longest candidate token in characters (default 4)")
    e.add_argument("-o", "--out", required=True, help="output model dir (tokenizer + resized model)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty output dir")
    e.set_defaults(handler="medtune.cli.vocab:cmd_tokenizer_extend")


def _add_export(sub):
    esub = command_group(sub, "export", "merge adapters, write GGUF (llama.cpp / Ollama), quantize",
                         "merge,gguf,quantize")
    m = esub.add_parser("merge", help="merge a LoRA/DoRA adapter into its base: a plain HF model dir",
                        epilog="example: medtune export merge --adapter runs/sft-lora -o runs/sft-merged")
    m.add_argument("--adapter", required=True, help="adapter dir (adapter_config.json)")
    m.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    m.add_argument("-o", "--out", required=True, help="output dir for the merged model")
    m.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16 (default auto)")
    m.add_argument("--overwrite", action="store_true", help="replace a non-empty output dir")
    m.set_defaults(handler="medtune.cli.export:cmd_export_merge")
    g = esub.add_parser("gguf", help="write a GGUF file for llama.cpp / Ollama (llama, qwen2 models)",
                        epilog="example: medtune export gguf --model runs/sft -o runs/sft.gguf --dtype q8_0 --modelfile")
    g.add_argument("--model", required=True, help="model dir, or adapter dir (merged into its base first)")
    g.add_argument("-o", "--out", required=True, help="output .gguf file")
    g.add_argument("--dtype", default="f16", choices=("f32", "f16", "q8_0"),
                   help="f16 (default): half the size of f32; q8_0: ~1/4 of f32, small rounding")
    g.add_argument("--modelfile", action="store_true", help="also write OUT's stem + .Modelfile for Ollama")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g.set_defaults(handler="medtune.cli.export:cmd_export_gguf")
    q = esub.add_parser("quantize", help="save a bitsandbytes 8-bit or 4-bit (nf4) model dir (CUDA GPU)",
                        epilog="example: medtune export quantize --model runs/sft-merged --bits 4 -o runs/sft-nf4")
    q.add_argument("--model", required=True, help="full model dir (merge adapters first)")
    q.add_argument("--bits", type=int, required=True, choices=(8, 4), help="8: int8; 4: nf4 + double quant")
    q.add_argument("-o", "--out", required=True, help="output dir")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty output dir")
    q.set_defaults(handler="medtune.cli.export:cmd_export_quantize")


def _add_eval(sub):
    from medtune.cli.model_args import add_model_args

    esub = command_group(sub, "eval", "evaluate models: generation metrics, benchmarks, perplexity, judges, reports",
                         "gen,choice,ppl,judge,report,policy,rag")
    g = esub.add_parser("gen", help="ROUGE-1/2/L and BLEU-4 of generated (or given) answers",
                        epilog="example: medtune eval gen --model runs/sft --data test.jsonl --output runs/eval/gen\n"
                               "         medtune eval gen --predictions preds.jsonl --output runs/eval/gen",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _eval_gen_args(g, add_model_args)
    c = esub.add_parser("choice", help="multiple-choice benchmarks in their native formats (CMB, CMExam, MedQA, ...)",
                        epilog="example: medtune eval choice --model runs/sft --data apollo/test/zh.json --shots 3 "
                               "--limit 200 --output runs/eval/choice")
    _eval_choice_args(c, add_model_args)
    q = esub.add_parser("ppl", help="perplexity on held-out text (sliding window)",
                        epilog="example: medtune eval ppl --model runs/pt --data heldout.txt --output runs/eval/ppl")
    _eval_ppl_args(q, add_model_args)
    j = esub.add_parser("judge", help="LLM-as-judge through an OpenAI-compatible endpoint",
                        epilog="example: medtune eval judge --endpoint http://127.0.0.1:8000/v1 --judge-model qwen "
                               "--answers a.jsonl b.jsonl --rubric dreamer --output runs/eval/judge")
    _eval_judge_args(j)
    r = esub.add_parser("report", help="markdown + HTML report comparing runs and eval outputs",
                        epilog="example: medtune eval report runs/demo/sft runs/demo/grpo runs/eval/* --output runs/report")
    _eval_report_args(r)
    p = esub.add_parser("policy", help="a safety policy on labelled requests: confusion table, recall, false positives",
                        epilog="example: medtune eval policy --policy clinic.yaml --data requests.jsonl "
                               "--output runs/eval/policy")
    p.add_argument("--policy", default="default", help="policy YAML or 'default' (the bundled one)")
    p.add_argument("--data", help="JSONL of {text or messages, category[, split, id, lang]} (default: the "
                                  "bundled 248 zh + en requests and 36 conversations)")
    p.add_argument("--output", help="dir for policy_eval.json and policy_eval.md")
    p.add_argument("--show-misses", action="store_true", help="print every request sorted wrongly")
    p.add_argument("--classifier", metavar="DIR", help="also measure a policy classifier trained by stage: rm: "
                   "rules alone, rules + classifier, classifier alone (in place of the policy file's own classifier)")
    p.add_argument("--threshold", type=float, help="with --classifier: the probability at which it flags a "
                   "category (default 0.5)")
    p.add_argument("--train-pairs", metavar="OUT.jsonl", help="write stage: rm preference pairs from the "
                   "single-message requests outside the test split, and evaluate nothing")
    p.set_defaults(handler="medtune.cli.eval_policy:cmd_eval_policy")
    rg = esub.add_parser("rag", help="retrieval hit@k and answer accuracy with vs without retrieval",
                         epilog="example: medtune eval rag --index runs/kb-index --data q.jsonl --model runs/sft "
                                "--output runs/eval/rag")
    add_eval_rag_args(rg, add_model_args)


def _eval_gen_args(p, add_model_args):
    from medtune.cli.eval_args import add_gen_args

    add_gen_args(p, add_model_args)
    p.set_defaults(handler="medtune.cli.eval_gen:cmd_eval_gen")


def _eval_choice_args(p, add_model_args):
    from medtune.cli.eval_args import add_choice_args

    add_choice_args(p, add_model_args)
    p.set_defaults(handler="medtune.cli.eval_choice:cmd_eval_choice")


def _eval_ppl_args(p, add_model_args):
    from medtune.cli.eval_args import add_ppl_args

    add_ppl_args(p, add_model_args)
    p.set_defaults(handler="medtune.cli.eval_gen:cmd_eval_ppl")


def _eval_judge_args(p):
    from medtune.cli.eval_args import add_judge_args

    add_judge_args(p)
    p.set_defaults(handler="medtune.cli.eval_judge:cmd_eval_judge")


def _eval_report_args(p):
    from medtune.cli.eval_args import add_report_args

    add_report_args(p)
    p.set_defaults(handler="medtune.cli.eval_report:cmd_eval_report")


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``medtune`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="medtune", description="Turn open causal LMs into (medical) domain assistants.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and the traceback of an error")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from medtune.cli.data_args import add_data
    from medtune.cli.template import add_template

    for add in (_add_demo, _add_train, _add_pipeline, _add_plan, add_data, _add_model, _add_tokenizer,
                add_template,
                _add_export, _add_chat, _add_infer, _add_serve, _add_eval, add_rag):
        add(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"medtune {version('medtune')}"
    except PackageNotFoundError:
        return "medtune (not installed)"


def _call(handler: str, args) -> int:
    import importlib

    module, func = handler.split(":")
    return getattr(importlib.import_module(module), func)(args) or 0


def main(argv=None) -> int:
    """Run the CLI; return the process exit code (bad input or an expected fault: 2, a medtune
    bug: 1, interrupted: 130). Tracebacks only with ``--verbose``."""
    args = build_parser().parse_args(argv)
    try:
        from medtune.cli.commands import configure_logging

        configure_logging(args.quiet, args.verbose)
        code = _call(args.handler, args)
    except MedtuneError as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the error boundary: one line, exit 2 for expected faults (cli/faults.py)
        from medtune.cli.faults import report

        code = report(exc, args.verbose)
    _end_distributed(code)
    return code


def _end_distributed(code: int) -> None:
    """Under torchrun: leave the process group and exit at once (gloo can abort at interpreter exit)."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is None or not torch_dist.is_available() or not torch_dist.is_initialized():
        return
    import os

    torch_dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
