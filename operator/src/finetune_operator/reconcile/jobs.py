"""The FineTuneJob's watch events: which ones need the child reconciled, and retries for those that failed.

Why not Kopf's on.create/on.update/on.resume: they need Kopf's bookkeeping annotations (last-handled-configuration
and handler progress) PATCHed onto every job after every handled change: one more write per new job, against an
API server that at 2,000 jobs is the bottleneck, to record what the operator already knows. The child carries the
spec it was made from (its applied-spec annotation, compared on every sync) and the job's status carries the
generation the operator last handled (observedGeneration), so the decision is made from those:

- a spec the operator has not handled yet (generation != observedGeneration: a new job or an edit) is synced;
- at the initial listing (operator start, or Kopf's relist after a watch expired), every unfinished job is synced
  (its child may have been deleted while the operator was away);
- our own status writes (the bulk of the events) change neither and cost nothing.

Kopf retries a failed change handler; an event handler it does not, so failures (a TemporaryError, the API server
unavailable) are retried here: at most one pending retry per job, with a fresh read of the job, backing off.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import kopf

from finetune_operator.kube import ApiException, parent_of
from finetune_operator.metrics.operator import instrumented
from finetune_operator.reconcile.child import is_finished, sync_child
from finetune_operator.reconcile.common import Context, Manifest, status_of

logger = logging.getLogger("finetune_operator.reconcile.jobs")
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
LISTING = None
"""The event type Kopf gives the objects of a (re)list."""


def needs_sync(event_type: str | None, job: Manifest) -> bool:
    """Whether a FineTuneJob watch event calls for a child sync (pure)."""
    metadata = job.get("metadata") or {}
    if event_type == "DELETED" or metadata.get("deletionTimestamp"):
        return False
    if status_of(job).get("observedGeneration") != metadata.get("generation"):
        return True
    return event_type is LISTING and not is_finished(job)


@dataclass
class Retries:
    """Delayed retries of failed reconciles, one pending per job; they run in a worker thread of Kopf's loop."""

    loop: asyncio.AbstractEventLoop
    run: Callable[[str, str], None]
    _pending: dict[tuple[str, str], asyncio.TimerHandle] = field(default_factory=dict)
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def schedule(self, namespace: str, name: str, delay: float | None = None) -> float:
        """Retry the job after `delay` (or an exponential backoff); replaces a pending retry. Thread-safe."""
        key = (namespace, name)
        with self._lock:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        wait = delay if delay is not None else min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (failures - 1))
        self.loop.call_soon_threadsafe(self._arm, key, wait)
        return wait

    def succeeded(self, namespace: str, name: str) -> None:
        with self._lock:
            self._failures.pop((namespace, name), None)

    def _arm(self, key: tuple[str, str], wait: float) -> None:
        previous = self._pending.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._pending[key] = self.loop.call_later(wait, self._fire, key)

    def _fire(self, key: tuple[str, str]) -> None:
        self._pending.pop(key, None)
        self.loop.run_in_executor(None, self.run, *key)


def reconcile(ctx: Context, retries: Retries, job: Manifest, work: Callable[[Context, Manifest], None]) -> None:
    """Run one reconcile of `job`; what a retry can fix is retried, what it cannot is logged (the status says it)."""
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    try:
        work(ctx, job)
    except kopf.TemporaryError as error:
        retries.schedule(namespace, name, error.delay)
        return
    except kopf.PermanentError as error:
        logger.error("%s/%s cannot be reconciled: %s", namespace, name, error)
        return
    except ApiException as error:
        wait = retries.schedule(namespace, name)
        logger.warning(
            "%s/%s: API server answered %s %s; retry in %.0fs", namespace, name, error.status, error.reason, wait
        )
        return
    retries.succeeded(namespace, name)


def on_job_event(ctx: Context, retries: Retries, event_type: str | None, job: Manifest) -> None:
    """A FineTuneJob watch event: counted by phase always, synced when it needs it."""
    ctx.metrics.observe_job(event_type, job)
    if needs_sync(event_type, job):
        sync(ctx, retries, job)


@instrumented("sync")
def sync(ctx: Context, retries: Retries, job: Manifest) -> None:
    reconcile(ctx, retries, job, sync_child)


@instrumented("child-deleted")
def on_child_deleted(ctx: Context, retries: Retries, child: Manifest) -> None:
    """A child deleted under a live, unfinished job is recreated (under its recorded name); an ended job stays
    ended (sync_child leaves finished jobs alone), and a child of an earlier job of the same name changes nothing."""
    parent = parent_of(child)
    if parent is not None:
        resync(ctx, retries, *parent)


@instrumented("retry")
def retry(ctx: Context, retries: Retries, namespace: str, name: str) -> None:
    """A scheduled retry of a job that asked for one."""
    resync(ctx, retries, namespace, name)


def resync(ctx: Context, retries: Retries, namespace: str, name: str, uid: str | None = None) -> None:
    """Sync the job read afresh; nothing when it is gone, being deleted, or (with `uid`) another job now."""
    try:
        job = ctx.kube.get_job(namespace, name)
    except ApiException:
        retries.schedule(namespace, name)
        return
    if job is None or job["metadata"].get("deletionTimestamp"):
        return
    if uid is None or job["metadata"].get("uid") == uid:
        reconcile(ctx, retries, job, sync_child)
