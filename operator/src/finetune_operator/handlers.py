"""Kopf registration, nothing else: every handler is a one-line call into a reconcile function.

Children of both kinds (PyTorchJob, TrainJob) are watched; a kind whose CRD is not installed is not served.
No deletion handler is registered, so Kopf adds no finalizer: deleting a FineTuneJob can never wedge, and its
PyTorchJob goes by garbage collection (ownerReferences). No change handler (on.create/update/resume) either: those
make Kopf PATCH its bookkeeping annotations onto every job; which events need a reconcile is decided from the
job's own observedGeneration instead (reconcile/jobs.py). The FineTuneJobs early stopping, the mirror and the sweep
loop read come from one Kopf index (`finetunejobs`), fed by the operator's own watch: no second cache, no LIST per
cycle; the FineTuneSweeps likewise (`finetunesweeps`). Both loops are tasks started here and cancelled at cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import kopf

from finetune_contract import names
from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.api.sweep import SWEEP_PLURAL
from finetune_operator.kube import HANDLER_THREADS
from finetune_operator.reconcile import early_stop, jobs, sweep
from finetune_operator.reconcile.common import Context, Manifest
from finetune_operator.reconcile.mirror import mirror_child


def context(memo: kopf.Memo) -> Context:
    ctx: Context = memo["context"]
    return ctx


def cached(index: kopf.Index[tuple[str, str], Manifest]) -> Callable[[str, str], Manifest | None]:
    """A FineTuneJob as last seen on the watch, by (namespace, name)."""

    def get(namespace: str, name: str) -> Manifest | None:
        return next(iter(index.get((namespace, name), [])), None)

    return get


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Kopf's settings, and the retries of failed reconciles (they run in Kopf's event loop)."""
    settings.posting.level = logging.WARNING  # Kopf's own per-handler chatter is not worth an Event each
    settings.watching.server_timeout = 300
    settings.execution.max_workers = HANDLER_THREADS
    ctx = context(memo)
    memo["retries"] = jobs.Retries(
        asyncio.get_running_loop(), lambda namespace, name: jobs.retry(ctx, retries(memo), namespace, name)
    )


def retries(memo: kopf.Memo) -> jobs.Retries:
    found: jobs.Retries = memo["retries"]
    return found


@kopf.index(GROUP, VERSION, PLURAL)
def finetunejobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Manifest]:
    return {(namespace or "", name): early_stop.index_entry(dict(body))}


@kopf.index(GROUP, VERSION, SWEEP_PLURAL)
def finetunesweeps(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Manifest]:
    return {(namespace or "", name): early_stop.index_entry(dict(body))}


@kopf.on.event(GROUP, VERSION, PLURAL)
def on_job_event(memo: kopf.Memo, event: kopf.RawEvent, **_: Any) -> None:
    jobs.on_job_event(context(memo), retries(memo), event["type"], dict(event["object"]))


@kopf.on.event(
    names.PYTORCHJOB_GROUP,
    names.PYTORCHJOB_VERSION,
    names.PYTORCHJOB_PLURAL,
    labels={names.MANAGED_BY_LABEL: names.MANAGED_BY},
)
def on_child_event(memo: kopf.Memo, event: kopf.RawEvent, **kwargs: Any) -> None:
    if event["type"] == "DELETED":
        jobs.on_child_deleted(context(memo), retries(memo), dict(event["object"]))
    else:
        mirror_child(context(memo), dict(event["object"]), cached(kwargs["finetunejobs"]), retries(memo).schedule)


@kopf.on.event(
    names.TRAINJOB_GROUP,
    names.TRAINJOB_VERSION,
    names.TRAINJOB_PLURAL,
    labels={names.MANAGED_BY_LABEL: names.MANAGED_BY},
)
def on_trainjob_event(memo: kopf.Memo, event: kopf.RawEvent, **kwargs: Any) -> None:
    """The same for TrainJob children (the trainjob backend); Kopf serves it only where its CRD is installed."""
    on_child_event(memo=memo, event=event, **kwargs)


@kopf.on.startup()
async def start_early_stopping(memo: kopf.Memo, **kwargs: Any) -> None:
    index: kopf.Index[tuple[str, str], Manifest] = kwargs["finetunejobs"]  # Kopf passes indices to startup handlers

    def snapshot() -> list[Manifest]:
        return [job for store in index.values() for job in store]

    memo["early_stopping"] = asyncio.create_task(early_stop.run_early_stopping(context(memo), snapshot))


@kopf.on.startup()
async def start_sweeps(memo: kopf.Memo, **kwargs: Any) -> None:
    sweeps: kopf.Index[tuple[str, str], Manifest] = kwargs["finetunesweeps"]

    def snapshot() -> list[Manifest]:
        return [body for store in sweeps.values() for body in store]

    memo["sweeps"] = asyncio.create_task(sweep.run_sweeps(context(memo), snapshot, cached(kwargs["finetunejobs"])))


@kopf.on.cleanup()
async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    for key in ("early_stopping", "sweeps"):
        task: asyncio.Task[None] | None = memo.get(key)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@kopf.on.probe(id="watched")
def probe(memo: kopf.Memo, **_: Any) -> str:
    return "namespaces: " + (",".join(context(memo).config.namespaces) or "all")
