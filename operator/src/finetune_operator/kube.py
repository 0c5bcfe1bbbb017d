"""The few Kubernetes API calls the operator makes, as plain dicts in and out (I/O lives only here)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_contract import names
from finetune_operator.api import GROUP, PLURAL, VERSION
from finetune_operator.api.sweep import SWEEP_PLURAL
from finetune_operator.children.backends import PYTORCHJOB, Backend, backend_of_child
from finetune_operator.decisions import node_loss

Manifest = dict[str, Any]
HANDLER_THREADS = 16
"""Kopf's thread pool for our (synchronous) handlers."""
API_CONNECTIONS = HANDLER_THREADS + 4
"""Handler threads, the early-stopping thread, and room to spare."""


def api_client(connections: int = API_CONNECTIONS) -> client.ApiClient:
    """In-cluster credentials when running in a pod, the kubeconfig (KUBECONFIG) otherwise.

    `connections`: kept-alive connections to the API server. The client's default (5 x CPU count) is below the
    number of handler threads on a small node, and each request over it opens and drops a new TLS connection.
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def is_status(error: ApiException, code: int) -> bool:
    return getattr(error, "status", None) == code


class Kube:
    """Typed-enough access to FineTuneJobs, their PyTorchJobs and pods."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def get_child(self, namespace: str, name: str, backend: Backend = PYTORCHJOB) -> Manifest | None:
        try:
            child = cast(Manifest, self.custom.get_namespaced_custom_object(*_at(backend, namespace), name))
        except ApiException as error:
            if is_status(error, 404):
                return None
            raise
        return child

    def create_child(self, namespace: str, manifest: Manifest) -> Manifest:
        """Create the child (its kind from its apiVersion); raises ApiException(409) if one of that name exists."""
        backend = backend_of_child(manifest)
        created = self.custom.create_namespaced_custom_object(*_at(backend, namespace), manifest)
        return cast(Manifest, created)

    def patch_child(self, namespace: str, name: str, patch: Manifest, backend: Backend = PYTORCHJOB) -> None:
        self.custom.patch_namespaced_custom_object(*_at(backend, namespace), name, patch)

    def delete_child(
        self,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        foreground: bool = False,
        backend: Backend = PYTORCHJOB,
    ) -> bool:
        """Delete the child; False if it was already gone (or, with `uid`, is another object now).

        Background: the object goes at once, its pods after. Foreground: it stays (with a deletionTimestamp) until
        its pods are gone, so a new child of the same name never meets the old pods' names."""
        body = client.V1DeleteOptions(
            propagation_policy="Foreground" if foreground else "Background",
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self.custom.delete_namespaced_custom_object(*_at(backend, namespace), name, body=body)
        except ApiException as error:
            if is_status(error, 404) or (uid and is_status(error, 409)):
                return False
            raise
        return True

    def child_workload(self, namespace: str, child_uid: str) -> tuple[bool, Manifest | None]:
        """(Kueue installed?, the Kueue Workload admitting the child with this uid, if any)."""
        try:
            listed = self.custom.list_namespaced_custom_object(
                names.KUEUE_GROUP,
                names.KUEUE_VERSION,
                namespace,
                names.WORKLOAD_PLURAL,
                label_selector=f"{names.KUEUE_JOB_UID_LABEL}={child_uid}",
            )
        except ApiException as error:
            if is_status(error, 404):
                return False, None  # no such resource: Kueue is not installed
            raise
        found = cast(Manifest, listed)
        items = [item for item in found.get("items") or [] if not item["metadata"].get("deletionTimestamp")]
        return True, (cast(Manifest, items[0]) if items else None)

    def set_workload_active(self, namespace: str, name: str, active: bool) -> None:
        """Kueue's own switch for a job a user stops or resumes: spec.active of its Workload."""
        self.custom.patch_namespaced_custom_object(
            names.KUEUE_GROUP, names.KUEUE_VERSION, namespace, names.WORKLOAD_PLURAL, name, {"spec": {"active": active}}
        )

    def installed_crds(self, candidates: tuple[str, ...]) -> list[str]:
        """Which of the named CustomResourceDefinitions are installed (a GET each: a LIST would carry every
        CRD's whole schema), for `--backend auto`."""
        extensions = client.ApiextensionsV1Api(self.api)
        found = []
        for name in candidates:
            try:
                extensions.read_custom_resource_definition(name)
            except ApiException as error:
                if is_status(error, 404):
                    continue
                raise
            found.append(name)
        return found

    def get_job(self, namespace: str, name: str) -> Manifest | None:
        try:
            job = cast(Manifest, self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except ApiException as error:
            if is_status(error, 404):
                return None
            raise
        return job

    def create_job(self, namespace: str, manifest: Manifest) -> Manifest:
        """Create a FineTuneJob (a sweep's trial); raises ApiException(409) if one of that name exists."""
        return cast(Manifest, self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest))

    def patch_job(self, namespace: str, name: str, patch: Manifest) -> None:
        """Merge-patch a FineTuneJob's spec (a sweep suspending or resuming its trials)."""
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def patch_sweep_status(self, namespace: str, name: str, status: Manifest) -> None:
        """Merge-patch a FineTuneSweep's status subresource (one writer: the sweep loop)."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, SWEEP_PLURAL, name, {"status": status}
        )

    def patch_job_status(self, namespace: str, name: str, status: Manifest, resource_version: str | None) -> None:
        """Merge-patch the status subresource; with a resourceVersion the write fails (409) if the object moved."""
        body: Manifest = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body)

    def list_jobs(self, namespaces: tuple[str, ...]) -> list[Manifest]:
        """FineTuneJobs in the watched namespaces (all when empty)."""
        if not namespaces:
            listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            return list(cast(Manifest, listing).get("items", []))
        items: list[Manifest] = []
        for namespace in namespaces:
            listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            items += cast(Manifest, listing).get("items", [])
        return items

    def create_event(self, job: Manifest, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on a FineTuneJob, as `kubectl describe` shows them."""
        metadata = job["metadata"]
        stamp = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{metadata['name']}.{uuid.uuid4().hex[:16]}"),
            involved_object=client.V1ObjectReference(
                api_version=job.get("apiVersion"),
                kind=job.get("kind"),
                name=metadata["name"],
                namespace=metadata["namespace"],
                uid=metadata.get("uid"),
                resource_version=metadata.get("resourceVersion"),
            ),
            type=kind,
            reason=reason,
            message=message[:1024],
            first_timestamp=stamp,
            last_timestamp=stamp,
            count=1,
            source=client.V1EventSource(component=names.MANAGED_BY),
            reporting_component=names.MANAGED_BY,
        )
        self.core.create_namespaced_event(metadata["namespace"], event)

    def list_child_events(
        self, namespaces: tuple[str, ...], reason: str, kind: str = names.PYTORCHJOB_KIND
    ) -> list[Manifest]:
        """Events with this reason on objects of `kind`, in the watched namespaces (all when empty): one LIST each."""
        selector = f"involvedObject.kind={kind},reason={reason}"
        if not namespaces:
            listed = [self.core.list_event_for_all_namespaces(field_selector=selector)]
        else:
            listed = [self.core.list_namespaced_event(namespace, field_selector=selector) for namespace in namespaces]
        return [
            self.api.sanitize_for_serialization(event)  # type: ignore[no-untyped-call]
            for listing in listed
            for event in listing.items
        ]

    def child_pods(self, namespace: str, child_name: str, backend: Backend = PYTORCHJOB) -> list[Manifest]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{backend.pod_label}={child_name}")
        return [self.api.sanitize_for_serialization(pod) for pod in pods.items]  # type: ignore[no-untyped-call]

    def node_table(self) -> Manifest:
        """All Nodes as the server's table (name and kubectl's status text per row), from the watch cache."""
        response: Any = self.core.list_node(  # _preload_content=False: the raw response, not a V1NodeList
            resource_version="0", _preload_content=False, _headers={"Accept": node_loss.TABLE_ACCEPT}
        )
        return cast(Manifest, json.loads(response.data))

    def get_node(self, name: str) -> Manifest | None:
        try:
            node = self.core.read_node(name)
        except ApiException as error:
            if is_status(error, 404):
                return None
            raise
        return cast(Manifest, self.api.sanitize_for_serialization(node))  # type: ignore[no-untyped-call]

    def pods_on_node(self, namespaces: tuple[str, ...], node: str) -> list[Manifest]:
        """The pods bound to `node` (every namespace, or the watched ones): a node holds at most a few hundred."""
        fields = f"spec.nodeName={node}"
        if namespaces:
            listed = [self.core.list_namespaced_pod(namespace, field_selector=fields) for namespace in namespaces]
        else:
            listed = [self.core.list_pod_for_all_namespaces(field_selector=fields)]
        return [
            self.api.sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
            for listing in listed
            for pod in listing.items
        ]


def _at(backend: Backend, namespace: str) -> tuple[str, str, str, str]:
    """(group, version, namespace, plural): the leading arguments of CustomObjectsApi's namespaced calls."""
    return backend.group, backend.version, namespace, backend.plural


def owner_reference(job: Manifest) -> Manifest:
    """The controller reference of a FineTuneJob, so garbage collection deletes the child with it."""
    metadata = job["metadata"]
    return {
        "apiVersion": job["apiVersion"],
        "kind": job["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(child: Manifest, job: Manifest) -> bool:
    uid = job["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in child.get("metadata", {}).get("ownerReferences") or [])


def parent_of(child: Manifest) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of the FineTuneJob that controls a PyTorchJob, if any."""
    for ref in child.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return child["metadata"]["namespace"], ref["name"], ref["uid"]
    return None


__all__ = ["ApiException", "Kube", "api_client", "owned_by", "owner_reference", "parent_of"]
