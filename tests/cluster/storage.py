"""TEST INFRASTRUCTURE: PersistentVolumeClaims that pods can be scheduled with on kwok nodes.

The scheduler refuses pods whose claim does not exist ("persistentvolumeclaim ... not found"), and an unbound claim
would wait for a provisioner we do not run: so each claim gets a hostPath PersistentVolume pre-bound to it (never
mounted: kwok runs no containers). Multi-node jobs need one at their output directory (tests/manifests.py
SHARED_OUTPUT).
"""

from __future__ import annotations

import uuid

from kubernetes import client

from tests.cluster.waiting import wait_for
from tests.manifests import SHARED_OUTPUT


def bound_claims(api: client.ApiClient, namespace: str, claims: list[str], timeout: float = 60) -> list[str]:
    """Create each claim and its volume in `namespace`; return the volumes' names once every claim is Bound."""
    core = client.CoreV1Api(api)
    volumes = []
    for claim in claims:
        volume = f"{namespace}-{claim}-{uuid.uuid4().hex[:6]}"[:63]
        core.create_persistent_volume(
            {
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/nonexistent/{volume}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        volumes.append(volume)
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
        lambda: all(core.read_namespaced_persistent_volume_claim(c, namespace).status.phase == "Bound" for c in claims),
        timeout,
        f"PVCs {claims} Bound",
    )
    return volumes


def shared_output_claim(api: client.ApiClient, namespace: str) -> str:
    """The ReadWriteMany claim a multi-node job's output lives on, in `namespace`, Bound."""
    claim = str(SHARED_OUTPUT["claimName"])
    bound_claims(api, namespace, [claim])
    return claim
