"""Report plots as PNG (no display needed): loss curves with their final value, bars per group.

Chinese labels (relation names, subjects) draw with a CJK font: an installed one, else the
bundled subset (:mod:`medtune.evaluation.fonts`).

Example::

    plot_losses({"sft": trainer.state.log_history}, "loss.png")
    plot_grouped_bars(["神经内科", "drug"], {"pt": [0.1, 0.3], "sft": [0.8, 0.9]}, "accuracy", "bars.png",
                      metric="accuracy")
"""

from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cjk(draw):
    """``draw`` run with a CJK font after matplotlib's default (per-glyph fallback)."""
    import functools

    @functools.wraps(draw)
    def run(*args, **kwargs):
        from medtune.evaluation.fonts import cjk_rc

        with _pyplot().rc_context(cjk_rc()):
            return draw(*args, **kwargs)

    return run


@_cjk
def plot_losses(histories: dict, path, title: str = "training loss") -> None:
    """Write a PNG with one train-loss curve (and eval points) per named log history; the last
    logged train loss (and eval loss) is marked and written beside the curve's end."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for ax, (name, history) in zip(axes[0], histories.items()):
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        title_text = f"{name}: {title}"
        if train:
            ax.plot(*zip(*train), label="train")
            step, loss = train[-1]
            ax.plot([step], [loss], "o", color="C0")
            ax.annotate(f"final {loss:.3f}", (step, loss), textcoords="offset points", xytext=(-4, 8),
                        ha="right", fontsize=9, color="C0")
            title_text = f"{name}: final train loss {loss:.3f} (step {step})"
        evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        if evals:
            ax.plot(*zip(*evals), "o-", color="C1", label="eval")
            ax.annotate(f"eval {evals[-1][1]:.3f}", evals[-1], textcoords="offset points", xytext=(-4, -14),
                        ha="right", fontsize=9, color="C1")
        ax.set_title(title_text, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@_cjk
def plot_grouped_bars(groups, values: dict, title: str, path, metric: str = "") -> None:
    """Write a PNG bar chart: one cluster per group, one bar per input (missing values left out);
    a rate metric (accuracy, ...) is drawn in percent on a 0-100 axis, each bar labelled."""
    from medtune.evaluation.headlines import is_rate

    plt = _pyplot()
    present = [y for ys in values.values() for y in ys if y is not None]
    percent = bool(present) and all(is_rate(metric, y) for y in present)
    scale = 100.0 if percent else 1.0
    width = 0.8 / max(1, len(values))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups) * max(1, len(values))), 3.8))
    for i, (name, ys) in enumerate(values.items()):
        xs = [g + i * width for g, y in enumerate(ys) if y is not None]
        bars = ax.bar(xs, [scale * y for y in ys if y is not None], width, label=name)
        ax.bar_label(bars, fmt="%.0f" if percent else "%.3g", fontsize=7, padding=1)
    ax.set_xticks([g + width * (len(values) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    if percent:
        ax.set_ylim(0, 108)
        ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
