"""Tell a FineTuneJob whose pod is stuck on a node that stopped answering (decisions/node_loss.py says why).

Cost: one LIST of Nodes in table form per interval, from the API server's watch cache, and only while some job
runs; pods are listed only for the nodes that are not Ready (by field selector), so a healthy cluster of thousands
of nodes and jobs costs one small request per interval. Without permission to list Nodes (an operator run outside
the chart) the check turns itself off, once, with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_operator.api import JobPhase
from finetune_operator.children.backends import child_name_of
from finetune_operator.decisions.node_loss import node_detail, stuck_runs, unready_nodes
from finetune_operator.kube import is_status
from finetune_operator.reconcile import status
from finetune_operator.reconcile.common import Context, Manifest, post_event, status_of, update_status

logger = logging.getLogger("finetune_operator.reconcile.node_loss")
CONDITION = "NodeNotReady"
WATCHED_PHASES = (str(JobPhase.Running), str(JobPhase.Pending))


def stuck_condition(
    current: Mapping[str, Any], message: str | None, generation: int | None, now: str
) -> dict[str, Any] | None:
    """The NodeNotReady condition to write (None: nothing changes); `message` None when no pod is stuck. Pure."""
    conditions = current.get("conditions") or []
    was_true = CONDITION in status.true_types(conditions)
    if message is None:
        return status.condition(CONDITION, False, "NodeReady", "", now, generation) if was_true else None
    existing = {c.get("type"): c for c in conditions}.get(CONDITION) or {}
    if was_true and existing.get("message") == message:
        return None
    return status.condition(CONDITION, True, CONDITION, message, now, generation)


def check_lost_nodes(ctx: Context, jobs: Iterable[Manifest]) -> bool:
    """One pass: set or clear NodeNotReady on the jobs with a child. False: Nodes may not be read (turn off)."""
    watched = [job for job in jobs if _watched(job)]
    if not watched:
        return True
    try:
        unready = unready_nodes(ctx.kube.node_table())
    except ApiException as error:
        if is_status(error, 403):
            logger.warning("cannot list Nodes (%s): pods stuck on lost nodes will not be reported", error.reason)
            return False
        raise
    pods = [pod for node in sorted(unready) for pod in ctx.kube.pods_on_node(ctx.config.namespaces, node)]
    stuck = stuck_runs(pods, unready)
    details = {pod.node: node_detail(ctx.kube.get_node(pod.node)) for pod in stuck.values()}
    for job in watched:
        namespace = job["metadata"]["namespace"]
        found = stuck.get((namespace, str(child_name_of(status_of(job)))))
        message = found.message(details[found.node]) if found is not None else None
        update = stuck_condition(status_of(job), message, job["metadata"].get("generation"), ctx.now())
        if update is None:
            continue
        if update["status"] == "True" and CONDITION not in status.true_types(status_of(job).get("conditions") or []):
            post_event(ctx, job, "Warning", CONDITION, update["message"])
        _write(ctx, job, update)
    return True


def _watched(job: Manifest) -> bool:
    current = status_of(job)
    if CONDITION in status.true_types(current.get("conditions") or []):
        return True  # to clear it, whatever the phase now
    return bool(child_name_of(current)) and current.get("phase") in WATCHED_PHASES


def _write(ctx: Context, job: Manifest, update: Manifest) -> None:
    def change(current_job: Manifest) -> Manifest | None:
        conditions = status.merge_conditions(status_of(current_job).get("conditions") or [], [update])
        return {"conditions": conditions}

    update_status(ctx, job["metadata"]["namespace"], job["metadata"]["name"], change, known=job)
