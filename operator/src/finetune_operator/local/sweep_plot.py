"""The sweep's plot: every trial's loss and gradient norm on shared axes, where pruning cut each loser, and the
winner.

Overlaid rather than one panel per trial, because pruning is a comparison: at each rung (the dotted verticals)
a trial is judged against the others that got there, so the picture has to show them together. matplotlib is
imported only here and with the Agg backend, as in local/plot.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune_contract.records import StepRecord


@dataclass(frozen=True)
class TrialLine:
    """One trial's curve and what to mark on it."""

    name: str
    parameters: str
    steps: Sequence[StepRecord]
    pruned_at: int | None
    """The step the sweep pruned it at (None: not pruned)."""
    best: bool
    ending: str = ""
    """How it ended when that is not the end of training (Pruned, EarlyStopped, Failed), for the legend."""


def write_sweep_plot(lines: Sequence[TrialLine], rungs: Sequence[int], path: Path, title: str) -> Path:
    """Render loss and gradient norm (both log: a diverging trial would flatten everyone else on a linear axis)
    to a PNG at `path`, written under a temporary name and renamed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from finetune_operator.local.plot import save_atomically

    figure, (loss_ax, grad_ax) = plt.subplots(2, 1, sharex=True, figsize=(13, 8), constrained_layout=True)
    colors = plt.get_cmap("tab20" if len(lines) > 10 else "tab10")
    try:
        for number, line in enumerate(lines):
            x = [s.step for s in line.steps]
            style = {
                "color": "black" if line.best else colors(number % colors.N),
                "linewidth": 2.6 if line.best else 1.2,
                "alpha": 1.0 if line.best or line.pruned_at is None else 0.65,
                "zorder": 3 if line.best else 2,
            }
            label = f"{'best: ' if line.best else ''}{line.name} ({line.parameters})"
            label += f" {line.ending}" if line.ending else ""
            loss_ax.plot(x, [_positive(s.loss) for s in line.steps], label=label, **style)
            grad_ax.plot(x, [_positive(s.grad_norm) for s in line.steps], **style)
            if line.pruned_at is not None:
                at = next((s for s in line.steps if s.step == line.pruned_at), None)
                if at is not None:
                    marker = {"marker": "X", "s": 70, "color": style["color"], "edgecolors": "black", "zorder": 4}
                    loss_ax.scatter([at.step], [_positive(at.loss)], **marker)
                    grad_ax.scatter([at.step], [_positive(at.grad_norm)], **marker)
        for axis in (loss_ax, grad_ax):
            for number, rung in enumerate(rungs):
                rung_label = "rungs (pruning judged here)" if number == 0 and axis is loss_ax else None
                axis.axvline(rung, color="0.4", linestyle=":", linewidth=1, label=rung_label)
            axis.set_yscale("log")
            axis.grid(True, alpha=0.3)
        loss_ax.scatter([], [], marker="X", color="white", edgecolors="black", label="pruned here")
        loss_ax.set_ylabel("training loss (log)")
        grad_ax.set_ylabel("grad norm (pre-clip, log)")
        grad_ax.set_xlabel("optimizer step")
        loss_ax.set_title(title)
        loss_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")  # outside: curves stay clear
        save_atomically(figure, path)
    finally:
        plt.close(figure)
    return path


def _positive(value: float | None) -> float:
    """A log axis cannot show zero, a negative or a non-finite value: those steps become gaps."""
    return value if value is not None and math.isfinite(value) and value > 0 else math.nan
