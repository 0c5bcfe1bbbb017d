"""What `finetune local` tells a person: the run's state from the trainer's records, a progress line, a summary.

Pure (no I/O, no clock, no process): `finetune_operator.local.run` feeds it the trainer's `metrics.jsonl` records
and the trainer's exit, and prints what comes back. Kept apart so the wording and the outcome rules are tested
without starting a trainer.
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from finetune_contract.records import KIND, KIND_EVENT, StepRecord, is_step
from finetune_operator.api import EarlyStoppingSpec, Verdict

RATE_WINDOW = 5
"""Steps the progress line's tokens/s averages over: one step alone jumps with every scheduler hiccup."""


class Outcome(StrEnum):
    """How a local run ended; the first two are the product working (a bad run stopped early is a success)."""

    Succeeded = "Succeeded"
    EarlyStopped = "EarlyStopped"
    Failed = "Failed"
    Interrupted = "Interrupted"


EXIT_CODES = {Outcome.Succeeded: 0, Outcome.EarlyStopped: 0, Outcome.Failed: 1, Outcome.Interrupted: 130}
"""130 = 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""


@dataclass
class RunState:
    """Everything seen so far: steps by number (a re-logged step replaces the old one), events in order.

    `session` holds the steps this invocation watched being trained (rates and ETA come from those only);
    `steps` may also hold earlier attempts' steps when the trainer resumed from a checkpoint, so that the policy's
    initial loss and the plot cover the whole run.
    """

    steps: dict[int, StepRecord] = field(default_factory=dict)
    session: list[StepRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: Mapping[str, Any]) -> StepRecord | None:
        """Take one record; returns the step when it was a step record (the caller then judges the run)."""
        if record.get(KIND) == KIND_EVENT:
            self.events.append(dict(record))
        if not is_step(record):
            return None
        step = StepRecord.from_json(record)
        self.steps[step.step] = step
        self.session.append(step)
        return step

    def seed(self, history: Iterable[Mapping[str, Any]], up_to: int) -> None:
        """Earlier attempts' steps up to the resume point (the latest line per step wins, like the policy's)."""
        for record in history:
            if is_step(record) and int(record["step"]) <= up_to:
                step = StepRecord.from_json(record)
                held = self.steps.get(step.step)
                if held is None or (held.time or 0.0) <= (step.time or 0.0):
                    self.steps[step.step] = step

    def ordered(self) -> list[StepRecord]:
        return [self.steps[number] for number in sorted(self.steps)]

    def latest(self) -> StepRecord | None:
        return self.steps[max(self.steps)] if self.steps else None

    def event(self, name: str) -> dict[str, Any] | None:
        """The last event of that name, if the trainer logged one."""
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    def tokens_per_second(self, last: int | None = None) -> float | None:
        """Loss-counted tokens per second of training-step time (setup and checkpoints excluded)."""
        steps = self.session[-last:] if last else self.session
        seconds = sum(s.step_duration_seconds for s in steps)
        return sum(s.tokens for s in steps) / seconds if seconds > 0 else None

    def eta_seconds(self) -> float | None:
        """Remaining steps times the mean wall interval between this session's steps (logging included)."""
        latest = self.latest()
        if latest is None or len(self.session) < 2:
            return None
        first, last = self.session[0], self.session[-1]
        per_step = ((last.time or 0.0) - (first.time or 0.0)) / max(last.step - first.step, 1)
        return max(latest.total_steps - latest.step, 0) * per_step


def initial_loss(steps: Iterable[StepRecord], spec: EarlyStoppingSpec) -> float | None:
    """The divergence rule's reference, as the policy computes it: median of the first windowSteps finite losses."""
    ordered = sorted(steps, key=lambda s: s.step)
    finite = [s.loss for s in ordered if s.loss is not None and math.isfinite(s.loss)][: spec.window_steps]
    return statistics.median(finite) if len(finite) == spec.window_steps else None


def decide(returncode: int | None, stopped_by: str | None, state: RunState) -> Outcome:
    """The outcome from who asked the trainer to stop and how it ended.

    A stop this command asked for decides first (the trainer's exit code after SIGTERM says nothing about the
    run: torchrun, for one, reports the signal as a failure); then the trainer's own word: exit 0 with an
    `interrupted` event means someone else sent it SIGTERM and it checkpointed.
    """
    if stopped_by == "policy":
        return Outcome.EarlyStopped
    if stopped_by == "user":
        return Outcome.Interrupted
    if returncode == 0:
        return Outcome.Interrupted if state.event("interrupted") and not state.event("done") else Outcome.Succeeded
    return Outcome.Failed


def progress_line(state: RunState, verdict: Verdict | None) -> str:
    """step/total, loss, grad norm, LR, tokens/s, ETA and the policy's current word, in one line."""
    latest = state.latest()
    if latest is None:
        return "waiting for the first step (loading data and model)"
    rate = state.tokens_per_second(RATE_WINDOW)
    return (
        f"step {latest.step}/{latest.total_steps}  loss {latest.loss:.4f}  grad norm {latest.grad_norm:.4g}  "
        f"lr {latest.learning_rate:.3g}  tok/s {_number(rate)}  eta {_duration(state.eta_seconds())}  "
        f"policy {verdict_word(verdict)}"
    )


def verdict_word(verdict: Verdict | None) -> str:
    return "-" if verdict is None else f"{verdict.decision} ({verdict.reason})"


def evidence_text(verdict: Verdict) -> str:
    """The evidence as one line: rule, metric, window, statistic, value and threshold."""
    evidence = verdict.evidence
    if evidence is None:
        return verdict.message
    window = f"steps {evidence.from_step}-{evidence.to_step}" if evidence.from_step is not None else ""
    parts = [
        f"rule {evidence.rule}" if evidence.rule else "",
        f"{evidence.statistic or 'value'} {evidence.metric} {_short(evidence.value)}" if evidence.metric else "",
        window,
        f"threshold {_short(evidence.threshold)}" if evidence.threshold is not None else "",
    ]
    return ", ".join(part for part in parts if part)


@dataclass(frozen=True)
class Summary:
    """What the run left behind, for `summary_text`."""

    name: str
    outcome: Outcome
    returncode: int | None
    wall_seconds: float
    checkpoint: str | None
    metrics_file: str
    plot: str | None
    log_file: str
    stop_verdict: Verdict | None = None


def summary_text(summary: Summary, state: RunState) -> str:
    """The closing block: outcome (with evidence or exit code), steps, final loss, rates, paths."""
    latest = state.latest()
    head = {
        Outcome.Succeeded: "Succeeded",
        Outcome.EarlyStopped: "EarlyStopped (the policy stopped the run; the trainer checkpointed and exited)",
        Outcome.Failed: f"Failed ({exit_text(summary.returncode)}; see the log)",
        Outcome.Interrupted: "Interrupted (Ctrl-C or SIGTERM; re-run the same command to resume)",
    }[summary.outcome]
    rows = [("outcome", head)]
    if summary.stop_verdict is not None:
        rows += [("reason", f"{summary.stop_verdict.reason}: {summary.stop_verdict.message}")]
        rows += [("evidence", evidence_text(summary.stop_verdict))]
    rows += [
        ("steps", f"{latest.step}/{latest.total_steps}" if latest else "0 (stopped before the first step)"),
        ("final loss", f"{latest.loss:.4f}" if latest else "-"),
        ("tokens/s", _number(state.tokens_per_second())),
        ("wall time", _duration(summary.wall_seconds)),
        ("checkpoint", summary.checkpoint or "none"),
        ("metrics", summary.metrics_file),
        ("plot", summary.plot or "none (no steps, or matplotlib is missing)"),
        ("trainer log", summary.log_file),
    ]
    width = max(len(key) for key, _ in rows)
    return f"finetune local: {summary.name}\n" + "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def exit_text(returncode: int | None) -> str:
    """`trainer exit code N`, or the signal that killed it (Popen reports those as -N)."""
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"trainer killed by {signal.Signals(-returncode).name}"
    return f"trainer exit code {returncode}"


def _short(text: str | None) -> str:
    """An evidence number (exact repr, or NaN/+Inf) at 4 significant digits; the reason line keeps it exact."""
    try:
        value = float(text or "")
    except ValueError:
        return str(text)
    return f"{value:.4g}" if math.isfinite(value) else str(text)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"
