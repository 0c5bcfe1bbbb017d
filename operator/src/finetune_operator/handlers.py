"""Kopf registration, nothing else: every handler is a one-line call into a reconcile function.

No deletion handler is registered, so Kopf adds no finalizer: deleting a FineTuneJob can never wedge, and its
PyTorchJob goes by garbage collection (ownerReferences).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

import kopf

from finetune_contract import names
from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.kube import HANDLER_THREADS
from finetune_operator.reconcile.child import sync_child
from finetune_operator.reconcile.common import Context
from finetune_operator.reconcile.early_stop import Evaluator, JobIndex
from finetune_operator.reconcile.mirror import mirror_child

ANNOTATION_PREFIX = "finetune.dev"


def context(memo: kopf.Memo) -> Context:
    ctx: Context = memo["context"]
    return ctx


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Kopf's bookkeeping in our own annotations, never in status (the CRD's structural schema would prune it)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Kopf's own per-handler chatter is not worth an Event each
    settings.watching.server_timeout = 300
    settings.execution.max_workers = HANDLER_THREADS


def _sync(memo: kopf.Memo, body: kopf.Body, handler: str) -> None:
    ctx = context(memo)
    ctx.metrics.instrumented(handler)(sync_child)(ctx, dict(body))


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    _sync(memo, body, "create")


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    _sync(memo, body, "resume")


@kopf.on.update(GROUP, VERSION, PLURAL)
def on_update(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    _sync(memo, body, "update")


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_job_event(memo: kopf.Memo, event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
    """Every watch event of a FineTuneJob (the initial listing included) feeds early stopping's job index."""
    if not namespace:
        return
    job: dict[str, Any] = dict(event["object"])
    job_index(memo).observe(event["type"], job)
    # Every job the watch delivers is counted, whatever the reconcile does with it: after a restart, jobs that
    # ended (or were refused) long ago get no status write, yet belong in finetune_operator_jobs{phase}.
    if event["type"] == "DELETED":
        context(memo).metrics.record_phase(namespace, name, None)
    else:
        phase = (job.get("status") or {}).get("phase")
        if phase:
            context(memo).metrics.record_phase(namespace, name, str(phase))


def job_index(memo: kopf.Memo) -> JobIndex:
    """Created on first use: Kopf may deliver the initial listing before or after the startup handlers ran."""
    index: JobIndex | None = memo.get("job_index")
    if index is None:
        index = memo.setdefault("job_index", JobIndex())
    return index


@kopf.on.event(
    names.PYTORCHJOB_GROUP,
    names.PYTORCHJOB_VERSION,
    names.PYTORCHJOB_PLURAL,
    labels={names.MANAGED_BY_LABEL: names.MANAGED_BY},
)
def on_child_event(memo: kopf.Memo, event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    ctx = context(memo)
    if event["type"] == "DELETED":
        ctx.metrics.instrumented("child-deleted")(_resync_parent)(ctx, dict(body))
    else:
        ctx.metrics.instrumented("mirror")(mirror_child)(ctx, dict(body), job_index(memo).get)


def _resync_parent(ctx: Context, child: dict[str, Any]) -> None:
    """A child deleted under a live, unfinished job is recreated; an ended job stays ended."""
    from finetune_operator.kube import parent_of

    parent = parent_of(child)
    if parent is None:
        return
    job = ctx.kube.get_job(parent[0], parent[1])
    if job is not None and job["metadata"].get("uid") == parent[2] and not job["metadata"].get("deletionTimestamp"):
        sync_child(ctx, job)


@kopf.on.startup()
def start_early_stopping(memo: kopf.Memo, **_: Any) -> None:
    """One evaluator thread, run inside Kopf's context so it can post Events through Kopf's queue."""
    evaluator = Evaluator(context(memo), index=job_index(memo))
    memo["evaluator"] = evaluator
    kopf_context = contextvars.copy_context()
    threading.Thread(target=kopf_context.run, args=(evaluator.run,), name="early-stopping", daemon=True).start()


@kopf.on.cleanup()
def stop_early_stopping(memo: kopf.Memo, **_: Any) -> None:
    evaluator: Evaluator | None = memo.get("evaluator")
    if evaluator is not None:
        evaluator.stop_flag.set()


@kopf.on.probe(id="watched")
def probe(memo: kopf.Memo, **_: Any) -> str:
    return "namespaces: " + (",".join(context(memo).config.namespaces) or "all")
