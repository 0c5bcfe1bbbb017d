"""TEST INFRASTRUCTURE: a ReadWriteMany claim for multi-node jobs (which must keep their output on shared storage).

A hostPath PersistentVolume pre-bound to a claim of the name tests/manifests.SHARED_OUTPUT uses, so the
scheduler's volume binding lets the job's pods onto kwok nodes (nothing is mounted: kwok runs no containers).
"""

from __future__ import annotations

import uuid

from kubernetes import client

from tests.cluster.waiting import wait_for
from tests.manifests import SHARED_OUTPUT


def shared_output_claim(api: client.ApiClient, namespace: str, timeout: float = 60) -> str:
    """Create the claim (and its volume) in `namespace`; return once it is Bound."""
    core = client.CoreV1Api(api)
    claim = str(SHARED_OUTPUT["claimName"])
    volume = f"{namespace}-{claim}-{uuid.uuid4().hex[:6]}"[:63]
    core.create_persistent_volume(
        {
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/{volume}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound",
        timeout,
        f"claim {namespace}/{claim} Bound",
    )
    return claim
