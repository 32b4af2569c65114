"""The figures: one PNG per experiment, drawn as the paper draws them.

matplotlib is used through ``matplotlib.figure.Figure`` (its Agg canvas),
never through pyplot, so no backend is chosen for the caller and no window
opens.
"""

from __future__ import annotations

import math
import os
import textwrap

from .data import require

__all__ = ["plot"]


def _costs(run):
    return [c if math.isfinite(c) else float("nan") for c in run.costs]


def _title(out, width=120):
    return "\n".join([out.exp.title] + textwrap.wrap(out.data, width))


def _axes(ax):
    ax.set_yscale("log")
    ax.set_xlabel("epochs (iterations over the entire dataset)")
    ax.set_ylabel("training cost")
    ax.grid(True, which="both", alpha=0.3)


def _bias_figure(Figure, out):
    by_beta2 = {}
    for s in out.searches:
        by_beta2.setdefault(s.candidate.kwargs["betas"][1], []).append(s)
    fig = Figure(figsize=(5 * len(by_beta2), 11))
    axes = fig.subplots(3, len(by_beta2), squeeze=False)
    early, last = out.exp.early, out.exp.epochs
    for col, (beta2, searches) in enumerate(sorted(by_beta2.items())):
        styles = [{"color": "tab:red" if s.candidate.kwargs["bias_correction"] else
                   "tab:green"} for s in searches]
        ax = axes[0][col]
        corrected = next(s for s in searches if s.candidate.kwargs["bias_correction"])
        plain = next(s for s in searches if not s.candidate.kwargs["bias_correction"])
        lr = corrected.best.lr
        # Both at the rate chosen with correction, and the uncorrected one at its own best.
        ax.plot(_costs(corrected.runs[lr]), color="tab:red", label=f"bias-corrected, lr {lr:g}")
        ax.plot(_costs(plain.runs[lr]), color="tab:green", label=f"no correction, lr {lr:g}")
        if plain.best.lr != lr:
            ax.plot(_costs(plain.best), color="tab:green", linestyle="--",
                    label=f"no correction, lr {plain.best.lr:g} (its best)")
        _axes(ax)
        ax.set_title(f"beta1=0.9, beta2={beta2}")
        ax.legend(fontsize=8)
        for row, epoch in ((1, early), (2, last)):
            ax = axes[row][col]
            for s, style in zip(searches, styles):
                lrs = sorted(s.runs)
                ax.plot([math.log10(lr) for lr in lrs],
                        [_costs(s.runs[lr])[epoch] for lr in lrs], marker="o",
                        label=s.candidate.label.split(", ")[1], **style)
            ax.set_xlabel("log10(learning rate)")
            ax.set_ylabel(f"training cost after {epoch} epochs")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(_title(out), fontsize=10)
    return fig


def plot(out, directory):
    """Write ``<directory>/<experiment key>.png`` and return its path."""
    require("matplotlib", "the figures (or pass --no-plots)")
    from matplotlib.figure import Figure

    if out.exp.key == "biascorr":
        fig = _bias_figure(Figure, out)
    else:
        fig = Figure(figsize=(7, 5))
        ax = fig.subplots()
        for s in out.searches:
            ax.plot(_costs(s.best), label=f"{s.candidate.label} (lr {s.best.lr:g})")
        _axes(ax)
        ax.legend(fontsize=8)
        ax.set_title(_title(out, 75), fontsize=9)
    fig.tight_layout()
    path = os.path.join(directory, f"{out.exp.key}.png")
    # No timestamp or version in the file's metadata, so a rerun writes the same bytes.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path
