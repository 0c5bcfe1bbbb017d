"""The training plot `finetune local` writes: loss, gradient norm and learning rate against the optimizer step.

The point of the picture is the early-stopping policy: its thresholds are drawn where they apply (maxGradNorm on
the gradient norm, minLoss and divergenceFactor x initial loss on the loss) and the step where it stopped the run
is marked on every panel, so a person sees at a glance why a run ended. matplotlib is imported only here and
with the Agg backend: no display is needed, and `finetune render` never pays for the import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_contract.records import StepRecord
from finetune_operator.api import EarlyStoppingSpec, Verdict
from finetune_operator.local.report import initial_loss

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Marks:
    """Horizontal threshold lines per panel and the early-stop step; None = not drawn."""

    max_grad_norm: float | None = None
    min_loss: float | None = None
    divergence_loss: float | None = None
    divergence_label: str = ""
    stop_step: int | None = None
    stop_reason: str = ""
    check_after_steps: int | None = None
    stop_window: tuple[int, int] | None = None


def marks_for(steps: Sequence[StepRecord], spec: EarlyStoppingSpec, stop: Verdict | None) -> Marks:
    """The thresholds the policy judged this run by (the divergence line needs the initial loss, as the policy)."""
    reference = initial_loss(steps, spec)
    divergence = None if spec.divergence_factor is None or reference is None else spec.divergence_factor * reference
    label = f"divergence {spec.divergence_factor:g} x initial loss {reference:.3g}" if divergence is not None else ""
    evidence = stop.evidence if stop is not None else None
    stop_step = evidence.to_step if evidence is not None else None
    window = None
    if evidence is not None and evidence.from_step is not None and evidence.to_step is not None:
        window = (evidence.from_step, evidence.to_step)
    return Marks(
        max_grad_norm=spec.max_grad_norm,
        min_loss=spec.min_loss,
        divergence_loss=divergence,
        divergence_label=label,
        stop_step=stop_step,
        stop_reason=stop.reason if stop is not None else "",
        check_after_steps=spec.check_after_steps,
        stop_window=window,
    )


def write_plot(steps: Sequence[StepRecord], marks: Marks, path: Path, title: str) -> Path:
    """Render the three panels to a PNG at `path` (written whole under a temporary name, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    x = [s.step for s in steps]
    figure, (loss_ax, grad_ax, lr_ax) = plt.subplots(3, 1, sharex=True, figsize=(8, 7.5), constrained_layout=True)
    try:
        loss_ax.plot(x, [_finite(s.loss) for s in steps], marker=".", color="tab:blue", label="training loss")
        _hline(loss_ax, marks.divergence_loss, marks.divergence_label, "tab:red")
        _hline(loss_ax, marks.min_loss, f"minLoss {marks.min_loss}", "tab:purple")
        loss_ax.set_ylabel("loss")
        grad_ax.plot(x, [_positive(s.grad_norm) for s in steps], marker=".", color="tab:orange", label="grad norm")
        _hline(grad_ax, marks.max_grad_norm, f"maxGradNorm {marks.max_grad_norm}", "tab:red")
        grad_ax.set_yscale("log")
        for set_formatter in (grad_ax.yaxis.set_major_formatter, grad_ax.yaxis.set_minor_formatter):
            set_formatter(ticker.LogFormatter(labelOnlyBase=False))  # 2, 3, 5 rather than 2x10^0
        grad_ax.set_ylabel("grad norm (pre-clip, log)")
        lr_ax.plot(x, [_finite(s.learning_rate) for s in steps], marker=".", color="tab:green", label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_xlabel("optimizer step")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        lr_ax.set_ylim(bottom=0)  # a constant LR is a flat line at its value, not noise magnified around it
        stop_label = f"early stop at step {marks.stop_step}" + (f" ({marks.stop_reason})" * bool(marks.stop_reason))
        waiting_label = f"thresholds not judged before checkAfterSteps {marks.check_after_steps}"
        for axis in (loss_ax, grad_ax, lr_ax):
            if marks.check_after_steps is not None:  # step checkAfterSteps itself is judged
                label = waiting_label if axis is loss_ax else None
                axis.axvspan(0, marks.check_after_steps - 0.5, color="0.92", label=label)
            if marks.stop_window is not None:
                first, last = marks.stop_window
                label = f"window judged: steps {first}-{last}" if axis is loss_ax else None
                axis.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.12, label=label)
            if marks.stop_step is not None:
                axis.axvline(marks.stop_step, color="black", linestyle=":", label=stop_label)
            axis.grid(True, alpha=0.3)
            axis.legend(loc="best", fontsize="small")
        loss_ax.set_title(title)
        save_atomically(figure, path)
    finally:
        plt.close(figure)
    return path


def save_atomically(figure: Figure, path: Path) -> None:
    """Write the PNG next to its place and move it there: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp.png")
    figure.savefig(partial, dpi=110)
    partial.replace(path)


def _hline(axis: Axes, value: float | None, label: str, color: str) -> None:
    if value is not None and math.isfinite(value):
        axis.axhline(value, color=color, linestyle="--", label=label)


def _finite(value: float | None) -> float:
    """NaN/Inf (or unobserved) as a gap in the line (an infinite point would wreck the axis limits)."""
    return value if value is not None and math.isfinite(value) else math.nan


def _positive(value: float | None) -> float:
    """A log axis cannot show zero or a non-finite norm: those steps become gaps."""
    return value if value is not None and math.isfinite(value) and value > 0 else math.nan
