"""``medtune export``: adapters merged into full weights, GGUF files for llama.cpp / Ollama, quantized dirs.

Example::

    medtune export merge --adapter runs/sft-lora -o runs/sft-merged
    medtune export gguf --model runs/sft-lora -o runs/sft.gguf --dtype q8_0 --modelfile
    medtune export quantize --model runs/sft-merged --bits 4 -o runs/sft-nf4    # CUDA GPU only
"""

from __future__ import annotations

from pathlib import Path

from medtune.files import guard_outputs


def cmd_export_merge(args) -> int:
    from medtune.export.merge import merge_to_dir
    from medtune.models.load import adapter_base, is_adapter_dir

    base = args.base or (adapter_base(args.adapter) if is_adapter_dir(args.adapter) else None)
    guard_outputs({"-o": args.out}, {"--adapter": args.adapter, "--base": base})
    out = merge_to_dir(args.adapter, args.out, base=args.base, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged {args.adapter} -> {out} (plain transformers model, chat template kept)")
    return 0


def cmd_export_gguf(args) -> int:
    from medtune.export.gguf import claim_file, export_gguf, gguf_arch

    modelfile = Path(args.out).with_suffix(".Modelfile")
    gguf_arch(args.model)  # refuse a missing dir or another architecture before anything else
    guard_outputs({"-o": args.out, "--modelfile": modelfile if args.modelfile else None},
                  {"--model": args.model})
    claim_file(args.out, args.overwrite)
    if args.modelfile:
        _check_modelfile(args.model, modelfile, args.overwrite)  # before minutes of export, not after
    summary = export_gguf(args.model, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(summary.line())
    if args.modelfile:
        from medtune.export.ollama import write_modelfile
        from medtune.models.load import load_tokenizer

        write_modelfile(summary.path, load_tokenizer(args.model), modelfile, overwrite=True)
        print(f"wrote {modelfile} (ollama create NAME -f {modelfile})")
    return 0


def _check_modelfile(model: str, modelfile: Path, overwrite: bool) -> None:
    from medtune.data.tokenize.templates import template_name
    from medtune.errors import MedtuneError
    from medtune.export.ollama import go_template
    from medtune.models.load import load_tokenizer

    if modelfile.exists() and not overwrite:
        raise MedtuneError(f"'{modelfile}' exists; choose another name or pass --overwrite")
    go_template(template_name(load_tokenizer(model).chat_template))


def cmd_export_quantize(args) -> int:
    from medtune.export.quantize import quantize_to_dir

    guard_outputs({"-o": args.out}, {"--model": args.model})

    out = quantize_to_dir(args.model, args.out, args.bits, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({args.bits}-bit bitsandbytes, {size / 2**20:.1f} MiB, tokenizer and chat template kept)")
    return 0
