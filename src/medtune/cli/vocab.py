"""``medtune tokenizer extend``: grow a model's vocabulary with frequent domain terms.

Example::

    medtune tokenizer extend --base runs/tiny --corpus tcm.txt --add 2000 -o runs/tiny-ext
    medtune train examples/pt.yaml model.path=runs/tiny-ext   # then teach the new rows (pt stage)
"""

from __future__ import annotations


def summary_line(report: dict) -> str:
    """Return e.g. ``added 1,234 tokens; domain corpus: 52,310 -> 31,002 tokens (0.59x)``."""
    n = report["corpus_tokens"]
    return (f"added {len(report['added']):,} tokens; domain corpus: {n['before']:,} -> {n['after']:,} tokens "
            f"({n['ratio']:.2f}x)")


def cmd_tokenizer_extend(args) -> int:
    from medtune.files import guard_outputs
    from medtune.models.vocab import REPORT, extend_vocabulary

    guard_outputs({"-o": args.out}, {"--base": args.base, "--corpus": args.corpus})

    report = extend_vocabulary(args.base, args.corpus, args.add, args.out, min_freq=args.min_freq,
                               max_chars=args.max_chars, overwrite=args.overwrite, progress=not args.quiet)
    print(summary_line(report))
    print(f"model + tokenizer -> {args.out}, report -> {args.out}/{REPORT}")
    return 0
