"""The sweep loop: start each FineTuneSweep's trials as slots free, prune the losers on their early dynamics,
and keep the sweep's trial table, best trial and rho in its status.

One loop for all sweeps, like early stopping (no Kopf timer per object, so no finalizer), reading the sweeps and
the trial FineTuneJobs from the operator's Kopf indexes. Everything it decides is derived afresh each cycle from
the cluster — the plan (a pure function of the sweep's spec), the trial FineTuneJobs that exist (deterministic
names: a restarted operator finds them and never creates an index twice) and the trials' curves — so killing the
operator at any point loses nothing. One thing comes from the sweep's own status: the result of a trial whose
FineTuneJob was deleted after it ended (remembered_rows) — a user cleaning up finished trials must not have them
trained again. A pruning decision is written onto the trial itself first (phase
EarlyStopped, condition reason PrunedBySweep, the evidence), after which the early-stopping loop deletes its
PyTorchJob as it does for any early stop (checkpoint kept); the sweep's table then shows the trial as Pruned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from finetune_contract.records import StepRecord
from finetune_operator.api import JobPhase
from finetune_operator.api.sweep import (
    FineTuneSweep,
    FineTuneSweepSpec,
    PlannedTrial,
    SweepPhase,
    TrialPhase,
    plan,
    trial_manifest,
)
from finetune_operator.decisions import sweep as decide
from finetune_operator.decisions.pruning import Verdict
from finetune_operator.kube import ApiException, is_status
from finetune_operator.metrics.source import (
    MetricsUnavailableError,
    PrometheusSource,
    choose_source,
)
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status

logger = logging.getLogger("finetune_operator.reconcile.sweep")
TICK_SECONDS = 2.0
PRUNED_REASON = "PrunedBySweep"
_FINISHED_JOB_PHASES = {JobPhase.Succeeded, JobPhase.Failed, JobPhase.EarlyStopped}
JobLookup = Callable[[str, str], Manifest | None]


# --- pure: what a trial and the sweep look like from the cluster --------------------------------------------------


def trial_phase(job: Manifest | None) -> TrialPhase:
    """The trial table's phase from its FineTuneJob (a prune is an early stop with the sweep's reason)."""
    if job is None:
        return TrialPhase.Pending
    phase = status_of(job).get("phase")
    if phase == JobPhase.EarlyStopped and pruned_by_sweep(job):
        return TrialPhase.Pruned
    if phase in {p.value for p in TrialPhase}:
        return TrialPhase(phase)
    return TrialPhase.Pending


def pruned_by_sweep(job: Manifest) -> bool:
    return any(
        c.get("type") == "EarlyStopped" and c.get("reason") == PRUNED_REASON
        for c in status_of(job).get("conditions") or []
    )


def device_seconds(job: Manifest | None, now: float) -> float:
    """Seconds the trial's pods held their devices: start to completion (or now) x pods x GPUs per pod; a CPU
    trial (gpusPerNode 0) counts one device per pod, so CPU sweeps report their cost too."""
    if job is None:
        return 0.0
    current = status_of(job)
    started = _timestamp(current.get("startTime"))
    if started is None:
        return 0.0
    ended = _timestamp(current.get("completionTime")) or now
    if current.get("phase") == JobPhase.Suspended:  # no pods: the clock stopped when it was suspended
        since = next(
            (c.get("lastTransitionTime") for c in current.get("conditions") or [] if c.get("type") == "Suspended"),
            None,
        )
        ended = _timestamp(since) or started
    resources = (job.get("spec") or {}).get("resources") or {}
    devices = int(resources.get("nodes", 1)) * max(1, int(resources.get("gpusPerNode", 1)))
    return max(0.0, ended - started) * devices


def _timestamp(text: Any) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def budget_spent(spec: FineTuneSweepSpec, views: Sequence[TrialView]) -> bool:
    return spec.gpu_hours_budget is not None and sum(view.seconds for view in views) >= spec.gpu_hours_budget * 3600


def to_start(
    planned: Sequence[PlannedTrial],
    jobs: Mapping[str, Manifest | None],
    spec: FineTuneSweepSpec,
    used_seconds: float,
    remembered: Collection[str] = (),
) -> list[PlannedTrial]:
    """The trials to create now: the lowest missing indices, as many as free slots allow (none when suspended or
    over the GPU-hours budget), never a `remembered` one (its result is known). Deterministic, so two operators (or
    one restarted) pick the same ones."""
    if spec.suspend:
        return []
    if spec.gpu_hours_budget is not None and used_seconds >= spec.gpu_hours_budget * 3600:
        return []
    active = sum(1 for job in jobs.values() if job is not None and trial_phase(job) not in _ENDED)
    free = spec.max_parallel_trials - active
    missing = [trial for trial in planned if jobs.get(trial.name) is None and trial.name not in remembered]
    return missing[: max(0, free)]


_ENDED = {TrialPhase.Pruned, TrialPhase.Succeeded, TrialPhase.Failed, TrialPhase.EarlyStopped}
REMEMBERED_PHASES = frozenset({TrialPhase.Succeeded, TrialPhase.Pruned, TrialPhase.EarlyStopped})
"""Trials whose result stands once their FineTuneJob is deleted. A Failed trial is not among them: deleting it is
how a user runs it again (after fixing what failed)."""


def remembered_rows(
    planned: Sequence[PlannedTrial], jobs: Mapping[str, Manifest | None], previous: Mapping[str, Any]
) -> dict[str, Manifest]:
    """The status rows of trials that ended (Succeeded, Pruned, EarlyStopped) and whose FineTuneJob is gone since,
    by name: they stay in the table with their result and GPU-seconds (the budget counts them) and are never created
    again. A row counts only for the same trial — same name and parameters — so an edited space re-plans freely."""
    rows = {row.get("name"): row for row in previous.get("trials") or []}
    out: dict[str, Manifest] = {}
    for trial in planned:
        row = rows.get(trial.name)
        if jobs.get(trial.name) is not None or row is None or row.get("phase") not in REMEMBERED_PHASES:
            continue
        if row.get("parameters") == trial.parameters and bool(row.get("calibration")) == trial.calibration:
            out[trial.name] = dict(row)
    return out


@dataclass(frozen=True)
class TrialView:
    """What the loop knows of one planned trial this cycle."""

    planned: PlannedTrial
    job: Manifest | None
    scores: dict[int, float | None]
    objective: float | None
    seconds: float
    saved_seconds: float
    remembered: Mapping[str, Any] | None = None
    """Its row from the status when its FineTuneJob was deleted after it ended (remembered_rows)."""

    def created(self) -> bool:
        """Its FineTuneJob exists, or existed and ended."""
        return self.job is not None or self.remembered is not None

    def phase(self) -> TrialPhase:
        if self.job is None and self.remembered is not None:
            return TrialPhase(self.remembered["phase"])
        return trial_phase(self.job)


def trial_row(view: TrialView, phase: TrialPhase, previous: Mapping[str, Any]) -> Manifest:
    """One row of the trial table (wire form)."""
    row: Manifest = {
        "index": view.planned.index,
        "name": view.planned.name,
        "parameters": view.planned.parameters,
        "calibration": view.planned.calibration,
        "phase": str(phase),
        "gpuSeconds": round(view.seconds, 1),
        "gpuSecondsSaved": round(view.saved_seconds, 1) if view.saved_seconds > 0 else None,
    }
    scores = [{"step": step, "score": _text(score)} for step, score in sorted(view.scores.items())]
    if scores:
        row["scores"] = [{k: v for k, v in score.items() if v is not None} for score in scores]
        row["rung"] = (
            max(step for step, score in view.scores.items() if score is not None)
            if any(score is not None for score in view.scores.values())
            else None
        )
    elif previous.get("scores"):
        row["scores"], row["rung"] = previous["scores"], previous.get("rung")
    objective = view.objective if view.objective is not None else previous.get("objective")
    if objective is not None and math.isfinite(objective):
        row["objective"] = objective
    if view.job is not None:
        conditions = status_of(view.job).get("conditions") or []
        why = next((c for c in conditions if c.get("type") in ("EarlyStopped", "Failed", "Succeeded")), None)
        if why is not None and why.get("status") == "True":
            row["reason"] = str(why.get("reason") or "")
            row["message"] = str(why.get("message") or "")[:4096]
    elif view.remembered is not None:
        row["reason"] = view.remembered.get("reason")
        row["message"] = view.remembered.get("message")
    return {key: value for key, value in row.items() if value is not None}


def remembered_view(trial: PlannedTrial, row: Mapping[str, Any]) -> TrialView:
    """A deleted finished trial exactly as its status row left it — scores, objective, GPU-seconds used and saved
    were final when it ended (its curve, if Prometheus still has it, only keeps it a peer at the rungs)."""
    seconds = _number(row.get("gpuSeconds")) or 0.0
    saved = _number(row.get("gpuSecondsSaved")) or 0.0
    return TrialView(trial, None, {}, _number(row.get("objective")), seconds, saved, remembered=row)


def _text(value: float | None) -> str | None:
    return None if value is None else repr(float(value))


def _finite_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _number(text: Any) -> float | None:
    try:
        return float(text) if text is not None else None
    except (TypeError, ValueError):
        return None


def sweep_status(
    sweep: FineTuneSweep,
    views: Sequence[TrialView],
    previous: Mapping[str, Any],
    now: str,
    budget_spent: bool = False,
) -> Manifest:
    """The whole status from this cycle's views (pure; the loop writes it when it differs). `budget_spent`: the
    GPU-hours budget is used up, so trials not created yet never will be."""
    before = {row.get("name"): row for row in previous.get("trials") or []}
    rows, phases = [], []
    for view in views:
        phase = view.phase()
        phases.append(phase)
        rows.append(trial_row(view, phase, before.get(view.planned.name, {})))
    spec = sweep.spec
    objectives = {row["name"]: row.get("objective") for row in rows if row["phase"] == TrialPhase.Succeeded}
    winner = decide.best(objectives, spec.objective.direction)
    used = sum(view.seconds for view in views)
    saved = sum(view.saved_seconds for view, phase in zip(views, phases, strict=True) if phase == TrialPhase.Pruned)
    first = spec.pruning.first_rung_step
    first_scores = {row["name"]: _first_score(row, first) for row in rows}
    rho = decide.correlation(
        first_scores,
        objectives,
        decide.score_direction(spec.pruning.score),
        spec.objective.direction,
        first,
    )
    out: Manifest = {
        "phase": str(_sweep_phase(spec, phases, budget_spent, [view.created() for view in views])),
        "observedGeneration": sweep.metadata.generation,
        "trialsTotal": len(views),
        "running": sum(1 for phase in phases if phase == TrialPhase.Running),
        "pruned": sum(1 for phase in phases if phase == TrialPhase.Pruned),
        "succeeded": sum(1 for phase in phases if phase == TrialPhase.Succeeded),
        "trials": rows,
        "gpuSeconds": round(used, 1),
        "gpuSecondsSaved": round(saved, 1),
        "savedPercent": f"{100 * saved / (used + saved):.0f}%" if used + saved > 0 else None,
        "scoreObjectiveCorrelation": rho.to_wire(),
    }
    if winner is not None:
        out["bestTrial"], out["bestObjective"] = winner
        out["bestCheckpoint"] = _final_path(next(v for v in views if v.planned.name == winner[0]))
    verdict = decide.predictive(rho)
    updates = []
    if verdict is not None:
        message = (
            f"Spearman rho {rho.rho:.2f} over {rho.n} finished trials between the rung-{first} score and the objective"
        )
        reason = "ScoreNotPredictive" if not verdict else "ScorePredictive"
        updates.append(status.condition("ScoreNotPredictive", not verdict, reason, message, now))
    if budget_spent:
        spent = f"{used / 3600:.2f} GPU-hours used of gpuHoursBudget {spec.gpu_hours_budget}: no new trial starts"
        updates.append(status.condition("BudgetExhausted", True, "GpuHoursBudgetUsed", spent, now))
    if any(c.get("type") == "InvalidSpec" and c.get("status") == "True" for c in previous.get("conditions") or []):
        updates.append(status.condition("InvalidSpec", False, "SpecValid", "", now))  # fixed: the spec plans now
    out["conditions"] = status.merge_conditions(previous.get("conditions") or [], updates)
    return {key: value for key, value in out.items() if value is not None}


def _first_score(row: Mapping[str, Any], first: int) -> float | None:
    for score in row.get("scores") or []:
        if score.get("step") == first:
            return _number(score.get("score"))
    return None


def _final_path(view: TrialView) -> str | None:
    """Where the trainer wrote the best trial's model (its output dir's final/), as the trial's spec says."""
    from finetune_contract.checkpoints import FINAL_DIR

    return f"{view.planned.spec.training.checkpoint.output_dir}/{FINAL_DIR}"


def _sweep_phase(
    spec: FineTuneSweepSpec, phases: Sequence[TrialPhase], budget_spent: bool, created: Sequence[bool]
) -> SweepPhase:
    """Trials never created count as ended once the budget forbids creating them."""
    if spec.suspend:
        return SweepPhase.Suspended
    if budget_spent:
        phases = [phase for phase, exists in zip(phases, created, strict=True) if exists]
    if phases and all(phase in _ENDED for phase in phases):
        return SweepPhase.Succeeded if TrialPhase.Succeeded in phases else SweepPhase.Failed
    if any(phase != TrialPhase.Pending for phase in phases):
        return SweepPhase.Running
    return SweepPhase.Pending


def prune_message(verdict: Verdict, metric: str) -> str:
    """The evidence in words: rung, score, cut-off, peers (what `kubectl describe` shows)."""
    cutoff = "none" if verdict.cutoff is None else f"{verdict.cutoff:.6g}"
    score = "none" if verdict.score is None else f"{verdict.score:.6g}"
    return (
        f"pruned by its sweep at rung step {verdict.rung}: {metric} score {score} is worse than the cut-off "
        f"{cutoff} of the best trials among the {verdict.peers} that reached the rung ({verdict.reason})"
    )


def prune_status(
    verdict: Verdict, metric: str, now: str, current: Mapping[str, Any], last: StepRecord | None = None
) -> Manifest:
    """The trial FineTuneJob's status for a prune: an early stop with the sweep's reason and the evidence, and
    the last step the sweep saw (the job's own early stopping, which writes it otherwise, may be off)."""
    message = prune_message(verdict, metric)
    evidence = {
        "metric": metric,
        "toStep": verdict.rung,
        "statistic": "rung score",
        "value": repr(verdict.score),
        "threshold": None if verdict.cutoff is None else repr(verdict.cutoff),
        "rule": "sweepPruning",
    }
    stop = {
        "decision": "stop",
        "reason": PRUNED_REASON,
        "message": message,
        "evidence": {k: v for k, v in evidence.items() if v is not None},
        "evaluatedAt": now,
    }
    condition = status.condition("EarlyStopped", True, PRUNED_REASON, message, now)
    seen: Manifest = {}
    if last is not None and current.get("step") is None:
        seen = {"step": last.step, "totalSteps": last.total_steps or None, "loss": _finite_number(last.loss)}
        seen["progress"] = status.progress(last.step, last.total_steps or None)
    return {
        **{key: value for key, value in seen.items() if value is not None},
        "phase": str(JobPhase.EarlyStopped),
        "completionTime": now,
        "earlyStopping": stop,
        "conditions": status.merge_conditions(current.get("conditions") or [], [condition]),
    }


# --- I/O: the loop ------------------------------------------------------------------------------------------------


async def run_sweeps(
    ctx: Context,
    sweeps: Callable[[], list[Manifest]],
    jobs: JobLookup,
    tick_seconds: float = TICK_SECONDS,
) -> None:
    """The loop, as a task in Kopf's event loop; each cycle's I/O runs in a worker thread."""
    controller = SweepController(ctx)
    loop = asyncio.get_running_loop()
    while True:
        current = sweeps()
        try:
            await loop.run_in_executor(None, controller.tick, current, jobs)
        except Exception:  # one bad cycle must not end every sweep
            logger.exception("sweep cycle failed")
        await asyncio.sleep(tick_seconds)


CurveReader = Callable[[Context, PlannedTrial, Manifest], "decide.Curve | None"]


def prometheus_curve(ctx: Context, trial: PlannedTrial, job: Manifest) -> decide.Curve | None:
    """A trial's curve (steps and evals) from Prometheus; None when there is none to read (yet)."""
    source = choose_source(trial.spec.metrics.prometheus_url, ctx.config.prometheus_url)
    if not source.prometheus_url:
        return None  # without Prometheus the sweep runs its trials but cannot prune
    prometheus = PrometheusSource(source.prometheus_url)
    namespace = job["metadata"]["namespace"]
    try:
        metrics = prometheus.fetch(namespace, trial.name)
        evals = prometheus.eval_points(namespace, trial.name)
    except MetricsUnavailableError as error:
        logger.info("no metrics for trial %s/%s yet: %s", namespace, trial.name, error)
        return None
    total = metrics.total_steps or 0  # the planned length travels with the points: a prune's savings need it
    points = [dataclasses.replace(point, total_steps=total) for point in metrics.points]
    return decide.Curve(trial.name, points, evals, trial.calibration)


ScoreReader = Callable[[Context, str, PlannedTrial, str], "float | None"]


def prometheus_score(ctx: Context, namespace: str, trial: PlannedTrial, expression: str) -> float | None:
    """The user's PromQL score for a trial now: $job and $namespace replaced by the trial's identity."""
    source = choose_source(trial.spec.metrics.prometheus_url, ctx.config.prometheus_url)
    if not source.prometheus_url:
        return None
    query = expression.replace("$namespace", namespace).replace("$job", trial.name)
    try:
        return PrometheusSource(source.prometheus_url).instant(query)
    except MetricsUnavailableError as error:
        logger.info("promql score of trial %s unavailable: %s", trial.name, error)
        return None


@dataclass
class SweepController:
    """Owns the per-process caches (curves of ended trials, the last invalid spec reported); nothing else.
    `read_curve` is where curves come from (Prometheus in the operator)."""

    ctx: Context
    read_curve: CurveReader = prometheus_curve
    read_score: ScoreReader = prometheus_score
    _external: dict[str, dict[int, float | None]] = field(default_factory=dict)
    _curves: dict[str, decide.Curve] = field(default_factory=dict)
    _reported: dict[str, int | None] = field(default_factory=dict)

    def tick(self, sweeps: list[Manifest], jobs: JobLookup) -> None:
        for body in sweeps:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            meta = body["metadata"]
            try:
                self.reconcile(body, jobs)
            except ApiException as error:
                logger.warning(
                    "sweep %s/%s: API server answered %s %s",
                    meta["namespace"],
                    meta["name"],
                    error.status,
                    error.reason,
                )
            except Exception:  # one sweep's failure must not stop the others; the next cycle tries again
                logger.exception("sweep %s/%s: cycle failed", meta["namespace"], meta["name"])

    def reconcile(self, body: Manifest, jobs: JobLookup) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            sweep = FineTuneSweep.model_validate({key: body[key] for key in ("apiVersion", "kind", "metadata", "spec")})
        except ValidationError as error:
            self._invalid(body, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()))
            return
        planned, problems = plan(name, sweep.spec)
        if problems:
            self._invalid(
                body, "; ".join(f"{p.path}: {p.rule}" + (f" (got {p.value})" if p.value else "") for p in problems)
            )
            return
        now = self.ctx.clock().timestamp()
        found = {trial.name: self._owned(jobs(namespace, trial.name), meta.get("uid")) for trial in planned}
        remembered = remembered_rows(planned, found, status_of(body))
        curves = self._read_curves(sweep, planned, found, remembered)
        external = self._promql_scores(sweep, planned, found, curves)
        verdicts = decide.judge_sweep(list(curves.values()), sweep.spec.pruning, external) if curves else {}
        scores = decide.scores_by_rung(list(curves.values()), sweep.spec.pruning, external) if curves else {}
        for trial in planned:
            job, verdict = found[trial.name], verdicts.get(trial.name)
            if job is not None and verdict is not None and verdict.prune and trial_phase(job) == TrialPhase.Running:
                last = max(curves[trial.name].steps, key=lambda r: r.step, default=None)
                found[trial.name] = self._prune(body, sweep, job, verdict, last) or job
        self._suspend(sweep, found)
        used = sum(device_seconds(job, now) for job in found.values())
        used += sum(float(row.get("gpuSeconds") or 0.0) for row in remembered.values())
        for trial in to_start(planned, found, sweep.spec, used, remembered):
            found[trial.name] = self._create(body, sweep, trial)
        views = [
            self._view(sweep, trial, found[trial.name], curves, scores, now, remembered.get(trial.name))
            for trial in planned
        ]
        self._write(body, sweep, views)

    # reading

    def _owned(self, job: Manifest | None, uid: str | None) -> Manifest | None:
        """A trial FineTuneJob counts only if this sweep owns it (a same-named job of someone else is not ours)."""
        if job is None:
            return None
        refs = (job.get("metadata") or {}).get("ownerReferences") or []
        return job if any(ref.get("uid") == uid for ref in refs) else None

    def _read_curves(
        self,
        sweep: FineTuneSweep,
        planned: Sequence[PlannedTrial],
        found: Mapping[str, Manifest | None],
        remembered: Collection[str] = (),
    ) -> dict[str, decide.Curve]:
        """Curves of every trial that has run: live ones re-read each cycle, ended ones once per process (read after
        they ended). A remembered trial's curve is still in Prometheus (for its retention): it stays a peer at the
        rungs it reached, so deleting finished trials does not change how the others are judged."""
        out: dict[str, decide.Curve] = {}
        for trial in planned:
            job = found[trial.name]
            if job is None and trial.name in remembered:
                job = {"metadata": {"namespace": sweep.metadata.namespace, "name": trial.name, "uid": "deleted"}}
                ended = True
            elif job is None or status_of(job).get("startTime") is None:
                continue
            else:
                ended = trial_phase(job) in _ENDED
            key = f"{job['metadata']['namespace']}/{trial.name}/{job['metadata'].get('uid')}"
            if ended and key in self._curves:
                out[trial.name] = self._curves[key]
                continue
            curve = self.read_curve(self.ctx, trial, job)
            if curve is not None:
                if ended:  # a curve read while the trial ran lacks its end: only a read after it counts as final
                    self._curves[key] = curve
                out[trial.name] = curve
        return out

    def _promql_scores(
        self,
        sweep: FineTuneSweep,
        planned: Sequence[PlannedTrial],
        found: Mapping[str, Manifest | None],
        curves: Mapping[str, decide.Curve],
    ) -> dict[str, dict[int, float | None]]:
        """promql scores: the expression is read for a running trial when it first passes a rung and kept as that
        rung's score (the value at the time it was reached, as a curve's rung statistic is)."""
        expression = sweep.spec.pruning.score.promql
        if expression is None:
            return {}
        rungs = decide.rungs_of(sweep.spec.pruning)
        for trial in planned:
            job, curve = found[trial.name], curves.get(trial.name)
            if job is None or curve is None or trial_phase(job) != TrialPhase.Running:
                continue
            known = self._external.setdefault(f"{sweep.metadata.namespace}/{trial.name}", {})
            reached = [rung for rung in rungs.steps(curve.last_step()) if rung not in known]
            if reached:
                value = self.read_score(self.ctx, sweep.metadata.namespace, trial, expression)
                if value is not None:
                    known[reached[-1]] = value
        return {trial.name: self._external.get(f"{sweep.metadata.namespace}/{trial.name}", {}) for trial in planned}

    def _view(
        self,
        sweep: FineTuneSweep,
        trial: PlannedTrial,
        job: Manifest | None,
        curves: Mapping[str, decide.Curve],
        scores: Mapping[str, dict[int, float | None]],
        now: float,
        remembered: Mapping[str, Any] | None = None,
    ) -> TrialView:
        if job is None and remembered is not None:
            return remembered_view(trial, remembered)
        curve = curves.get(trial.name)
        phase = trial_phase(job)
        objective = None
        if curve is not None and phase == TrialPhase.Succeeded:
            objective = decide.objective(curve, sweep.spec.objective_metric(), sweep.spec.pruning.window_steps)
        seconds = device_seconds(job, now)
        saved = 0.0
        if phase == TrialPhase.Pruned and job is not None:
            current = status_of(job)
            last = max(curve.steps, key=lambda r: r.step) if curve is not None and curve.steps else None
            step = int(current.get("step") or (last.step if last else 0))
            total = int(current.get("totalSteps") or (last.total_steps if last else 0))
            saved = decide.projected_savings(step, total, seconds)
        return TrialView(trial, job, dict(scores.get(trial.name, {})), objective, seconds, saved)

    # writing

    def _prune(
        self, body: Manifest, sweep: FineTuneSweep, job: Manifest, verdict: Verdict, last: StepRecord | None
    ) -> Manifest | None:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        metric = sweep.spec.pruning.score.metric

        def change(current_job: Manifest) -> Manifest | None:
            current = status_of(current_job)
            if current.get("phase") != JobPhase.Running:
                return None  # ended meanwhile: a late verdict does not rewrite history
            return prune_status(verdict, metric, self.ctx.now(), current, last)

        written = update_status(self.ctx, namespace, name, change, known=job)
        if written is None:
            return None
        self.ctx.metrics.record_prune(namespace, sweep.metadata.name, name, verdict.rung)
        post_event(self.ctx, body, "Normal", "TrialPruned", f"trial {name}: {prune_message(verdict, metric)}")
        logger.warning("sweep %s/%s pruned trial %s at step %s", namespace, sweep.metadata.name, name, verdict.rung)
        return self.ctx.kube.get_job(namespace, name)

    def _create(self, body: Manifest, sweep: FineTuneSweep, trial: PlannedTrial) -> Manifest | None:
        manifest = trial_manifest(sweep, trial)
        try:
            created = self.ctx.kube.create_job(sweep.metadata.namespace, manifest)
        except ApiException as error:
            if is_status(error, 409):  # ours from an earlier cycle, or someone else's: only ours counts
                return self._owned(self.ctx.kube.get_job(sweep.metadata.namespace, trial.name), sweep.metadata.uid)
            raise
        post_event(
            self.ctx,
            body,
            "Normal",
            "TrialCreated",
            f"trial {trial.index} {trial.name}: {json.dumps(trial.parameters, sort_keys=True)}",
        )
        return created

    def _suspend(self, sweep: FineTuneSweep, found: Mapping[str, Manifest | None]) -> None:
        """The sweep's suspend, carried to every trial that has not ended."""
        for job in found.values():
            if job is None or trial_phase(job) in _ENDED:
                continue
            if bool((job.get("spec") or {}).get("suspend", False)) != sweep.spec.suspend:
                self.ctx.kube.patch_job(
                    job["metadata"]["namespace"], job["metadata"]["name"], {"spec": {"suspend": sweep.spec.suspend}}
                )

    def _write(self, body: Manifest, sweep: FineTuneSweep, views: Sequence[TrialView]) -> None:
        previous = status_of(body)
        new = sweep_status(sweep, views, previous, self.ctx.now(), budget_spent(sweep.spec, views))
        self.ctx.metrics.record_sweep(sweep.metadata.namespace, sweep.metadata.name, new)  # also after a restart
        if all(previous.get(key) == value for key, value in new.items()):
            return
        self.ctx.kube.patch_sweep_status(sweep.metadata.namespace, sweep.metadata.name, new)
        if new.get("phase") != previous.get("phase"):
            kind = "Warning" if new.get("phase") == SweepPhase.Failed else "Normal"
            best = f": best trial {new['bestTrial']} ({new['bestObjective']:.6g})" if new.get("bestTrial") else ""
            post_event(
                self.ctx, body, kind, str(new["phase"]), f"phase {previous.get('phase') or '-'} -> {new['phase']}{best}"
            )

    def _invalid(self, body: Manifest, message: str) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        current = status_of(body)
        already = any(
            c.get("type") == "InvalidSpec" and c.get("status") == "True" and c.get("message") == message[:32768]
            for c in current.get("conditions") or []
        )
        reported = self._reported.get(key) == meta.get("generation") or (
            already and current.get("observedGeneration") == meta.get("generation")
        )
        if reported and current.get("phase") == SweepPhase.Failed:
            return
        condition = status.condition("InvalidSpec", True, "InvalidSpec", message[:32768], self.ctx.now())
        new = {
            "phase": str(SweepPhase.Failed),
            "observedGeneration": meta.get("generation"),
            "conditions": status.merge_conditions(status_of(body).get("conditions") or [], [condition]),
        }
        self.ctx.kube.patch_sweep_status(meta["namespace"], meta["name"], new)
        post_event(self.ctx, body, "Warning", "InvalidSpec", message)
        self._reported[key] = meta.get("generation")


__all__ = [
    "SweepController",
    "prometheus_curve",
    "remembered_rows",
    "run_sweeps",
    "sweep_status",
    "to_start",
    "trial_phase",
]
