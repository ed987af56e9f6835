"""``medtune infer`` and ``medtune serve api``: batch generation and the OpenAI-compatible server.

Example::

    medtune infer --model runs/sft --input questions.jsonl --output answers.jsonl
    medtune serve api --model runs/sft --adapter tcm=runs/tcm-lora --api-key "$KEY"
"""

from __future__ import annotations

import os
from pathlib import Path

from medtune.errors import MedtuneError

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts only this machine reaches


def _engine(args, adapters=None):
    from medtune.cli.model_args import model_kwargs
    from medtune.inference.backends import load_engine

    return load_engine(args.model, adapters, backend=args.backend, name=getattr(args, "name", None),
                       tensor_parallel_size=args.tensor_parallel_size, **model_kwargs(args))


def cmd_infer(args) -> int:
    from medtune.files import guard_outputs
    from medtune.inference.batch import meta_file, read_rows, run_infer
    from medtune.inference.settings import GenerationSettings

    if not Path(args.input).is_file():
        what = "is a directory" if Path(args.input).is_dir() else "not found"
        raise MedtuneError(f"--input '{args.input}' {what}")
    guard_outputs({"--output": args.output, "meta": meta_file(args.output)},
                  {"--input": args.input, "--model": args.model, "--adapter": args.adapter})
    params = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                seed=args.seed if args.temperature > 0 else None,
                                enable_thinking=args.enable_thinking, thinking_budget=args.thinking_budget)
    if args.strict:
        read_rows(args.input, args.system, strict=True)  # a bad row fails before the model loads
    from medtune.cli.rag import reply_service

    service = reply_service(args)
    engine = _engine(args)
    summary = run_infer(engine, args.input, args.output, params, batch_size=args.batch_size,
                        system=args.system, model_label=args.model, adapter=args.adapter,
                        overwrite=args.overwrite, strict=args.strict, progress=not args.quiet,
                        service=service)
    skipped = sum(summary.skipped.values())
    reasons = "; ".join(f"{k}: {v}" for k, v in summary.skipped.items())
    print(f"infer: {summary.generated} generated, {summary.done_before} already in {args.output}, "
          f"{skipped} skipped{' (' + reasons + ')' if skipped else ''} | {summary.rows_per_s:.2f} rows/s, "
          f"{summary.tokens_per_s:.1f} new tokens/s in {summary.seconds:.1f}s | settings: "
          f"{meta_file(args.output)}")
    if not summary.rows:
        hint = ("; rows ending with an assistant turn already hold an answer (drop it, or regenerate "
                "and score them with medtune eval gen)" if any("end with a user turn" in k for k in summary.skipped)
                else "")
        raise MedtuneError(f"{args.input}: no row to answer ({reasons or 'empty file'}){hint}")
    return 0


def parse_adapters(specs) -> dict:
    """Return ``{name: dir}`` from ``NAME=DIR`` strings."""
    adapters = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise MedtuneError(f"--adapter '{spec}': expected NAME=DIR")
        if name in adapters:
            raise MedtuneError(f"--adapter name '{name}' given twice")
        if not Path(folder).is_dir():
            raise MedtuneError(f"--adapter {name}: '{folder}' is not a directory")
        adapters[name] = folder
    return adapters


def cmd_serve_api(args) -> int:
    from medtune.cli.faults import require_extras

    require_extras("fastapi", "uvicorn")
    from medtune.serving.api import ServerLimits, serve

    api_key = api_key_of(args, os.environ)
    if args.request_timeout <= 0:
        raise MedtuneError(f"--request-timeout must be > 0 seconds (got {args.request_timeout})")
    limits = ServerLimits(max_batch=args.max_batch, max_queue=args.max_queue,
                          max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens_limit,
                          max_body_bytes=args.max_body_kb * 1024, request_timeout=args.request_timeout)
    from medtune.cli.rag import reply_service

    service = reply_service(args)  # a bad --rag index fails before the model loads
    engine = _engine(args, parse_adapters(args.adapters))
    serve(engine, args.host, args.port, api_key=api_key, limits=limits, quiet=args.quiet, service=service)
    return 0


def api_key_of(args, environ) -> str | None:
    """Return the bearer key ``--api-key`` or ``$MEDTUNE_API_KEY`` gives (None: no authentication).

    Refused, before anything loads: an empty or blank key (an unset shell variable would otherwise
    serve with no authentication), and no key on a non-loopback ``--host`` unless ``--no-auth``.
    With no key on loopback, one warning line says so.
    """
    given, source = (args.api_key, "--api-key") if args.api_key is not None else \
        (environ.get("MEDTUNE_API_KEY"), "$MEDTUNE_API_KEY")
    if given is not None and not given.strip():
        raise MedtuneError(f"{source} is empty (an unset shell variable?): pass a real key, or no key at all")
    if given is not None and args.no_auth:
        raise MedtuneError(f"--no-auth and a key ({source}) contradict each other: pass one")
    if given is None and args.host not in LOOPBACK and not args.no_auth:
        raise MedtuneError(f"--host {args.host} without --api-key: anyone who can reach it could use the model; "
                           "pass --api-key KEY (or $MEDTUNE_API_KEY), or --no-auth to serve it open")
    if given is None:
        print(f"warning: the API on {args.host} is unauthenticated (no --api-key)", flush=True)
    return given
