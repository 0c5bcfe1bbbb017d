"""TEST INFRASTRUCTURE — not part of the product. A minimal kubelet for ONE node, whose pods are local processes.

kwok fakes pods (nothing runs), which is right for scheduling tests but cannot close the early-stopping loop:
that needs a real trainer exporting real metrics. This agent registers one Node that kwok does not manage (no
`kwok.x-k8s.io/node` annotation), labelled and tainted so that only pods meant for it land there (they carry
`nodeagent_objects.scheduling()`: nodeSelector + toleration), and does the kubelet's job for the pods bound to it:

- keeps the Node Ready: status conditions with fresh heartbeats, and a Lease in kube-node-lease, renewed;
- runs each pod's container (the one named `pytorch`, or the only one) as a local process group: command + args
  with the pod's env, in a per-pod working directory, stdout+stderr to `container.log` there. The image is
  ignored: this machine's virtualenv is the "image" (its bin/ leads PATH, so `torchrun` is found);
- gives the pod its own loopback IP from a per-agent /24 of 127.0.0.0/8 and reports Running (podIP, hostIP,
  containerStatuses), then Succeeded or Failed with the exit code (128+N for signal N, as a kubelet does);
- on pod deletion: SIGTERM to the group, SIGKILL after the grace period (capped at 15 s), then deletes the pod
  object, as the kubelet does once the containers are gone; a pod whose object vanishes is killed at once;
- on SIGTERM to the agent: stops every pod group, force-deletes its pods, removes its Lease and Node.

What the kubelet and cluster DNS would provide, done by rewriting each pod's environment:
- MASTER_ADDR / PET_MASTER_ADDR name a Service (the training-operator's per-replica headless Service, named like
  the pod). Nothing resolves those here, so they become the IP of the pod of that name when this agent runs it
  (the Master's own IP for the Master), else 127.0.0.1. JobSet's pods (a TrainJob's) are named by their DNS name
  under the JobSet's headless Service instead, `<hostname>.<subdomain>`: resolved the same way.
- FINETUNE_METRICS_ADDR = the pod IP (the trainer binds /metrics there). NODE_AGENT_POD_IP + LD_PRELOAD of the
  bind shim (bindshim.py): wildcard listeners, like torchrun's rendezvous store on MASTER_PORT, bind the pod IP
  instead — the part of a pod's network namespace that matters here (loopback only, no port clashes).
- HF_HUB_OFFLINE=1 and a minimal PATH/HOME/LANG in place of the image's environment; OMP_NUM_THREADS=1.
- Test-only injection, no product code involved: annotations `test.finetune.dev/env-NAME: value` on the pod or
  on its namespace add NAME=value (names starting with FINETUNE_ are reserved in a FineTuneJob's
  `resources.env`, and the operator renders no pod annotations, so tests annotate the namespace).
- Every process of a pod carries NODE_AGENT_NODE / NODE_AGENT_POD / NODE_AGENT_POD_UID, so nodeagent_handle
  finds (and tests prove the absence of) a pod's processes from /proc alone.

Not implemented, not needed here: container restarts (the operator's pods use restartPolicy Never), init and
sidecar containers, probes, volumes (mounts are ignored), resource limits.

Started by the `node_agent` fixture (conftest.py, via nodeagent_handle.start_node_agent) as
`python tests/cluster/nodeagent.py --kubeconfig K --node N --workdir D --ip-prefix 127.a.b. [--bind-shim S]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: this file runs as a script

from tests.cluster import nodeagent_objects as objects
from tests.cluster.bindshim import POD_IP_ENV
from tests.cluster.nodeagent_handle import MARK_NODE, MARK_POD, MARK_UID

VENV_BIN = Path(sys.executable).parent  # the interpreter running the agent is the tests' virtualenv
SERVICE_ADDR_VARS = ("MASTER_ADDR", "PET_MASTER_ADDR")
CONTAINER_NAME = "pytorch"
LOOP_S = 0.5
HEARTBEAT_S = 10.0
MAX_GRACE_S = 15.0
SHUTDOWN_GRACE_S = 5.0  # under processes.STOP_GRACE_S: the agent finishes its cleanup before any SIGKILL
PR_SET_PDEATHSIG = 1
TIMEOUT = 10  # seconds, every API request
SMP = "application/strategic-merge-patch+json"  # pod status: conditions merge by type
MERGE = "application/merge-patch+json"

log = logging.getLogger("nodeagent")


def _pdeathsig_term() -> None:
    """preexec hook: SIGTERM a pod's leader if the agent dies (torchrun then stops its workers, too)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PodProcess:
    """A pod's container, running (or run) as a local process group."""

    namespace: str
    name: str
    uid: str
    ip: str
    container: str
    image: str
    popen: subprocess.Popen[bytes]
    started_at: str
    exit_code: int | None = None
    kill_at: float | None = None  # set once SIGTERM was sent for a deletion
    dns_name: str = ""  # <hostname>.<subdomain> when the pod sets both (JobSet does: <job>-<index>.<jobset>)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def gone(self) -> bool:
        """The leader reaped and no process left in its group."""
        return self.popen.poll() is not None and not _group_alive(self.popen.pid)

    def exit_status(self) -> int | None:
        code = self.popen.poll()
        return None if code is None else (128 - code if code < 0 else code)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=TIMEOUT)


@dataclass
class NodeAgent:
    api: client.ApiClient
    node: str
    workdir: Path
    ip_prefix: str
    gpus: int = 1
    bind_shim: Path | None = None
    pods: dict[str, PodProcess] = field(default_factory=dict)  # by pod uid
    next_host: int = 2
    last_heartbeat: float = 0.0

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    # -- the node ------------------------------------------------------------------------------------------------
    def register(self) -> None:
        manifest = objects.node_manifest(self.node)
        try:
            self.core.create_node(manifest, _request_timeout=TIMEOUT)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_node(self.node, manifest, _content_type=MERGE, _request_timeout=TIMEOUT)
        self.heartbeat(force=True)
        log.info("registered node %s (%d %s), pod IPs %sN", self.node, self.gpus, objects.GPU_RESOURCE, self.ip_prefix)

    def heartbeat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_heartbeat < HEARTBEAT_S:
            return
        status = {"status": objects.node_status(self.node, self.gpus)}
        self.core.patch_node_status(self.node, status, _content_type=MERGE, _request_timeout=TIMEOUT)
        self._renew_lease()
        self.last_heartbeat = time.monotonic()

    def _renew_lease(self) -> None:
        leases = client.CoordinationV1Api(self.api)
        spec = objects.lease_spec(self.node)
        try:
            leases.patch_namespaced_lease(
                self.node, objects.LEASE_NAMESPACE, {"spec": spec}, _content_type=MERGE, _request_timeout=TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:
                raise
            uid = self.core.read_node(self.node, _request_timeout=TIMEOUT).metadata.uid
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid}
            body = {"metadata": {"name": self.node, "ownerReferences": [owner]}, "spec": spec}
            leases.create_namespaced_lease(objects.LEASE_NAMESPACE, body, _request_timeout=TIMEOUT)

    def unregister(self) -> None:
        with contextlib.suppress(ApiException):
            client.CoordinationV1Api(self.api).delete_namespaced_lease(self.node, objects.LEASE_NAMESPACE)
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.node, _request_timeout=TIMEOUT)

    # -- its pods ------------------------------------------------------------------------------------------------
    def bound_pods(self) -> list[client.V1Pod]:
        selector = f"spec.nodeName={self.node}"
        return list(self.core.list_pod_for_all_namespaces(field_selector=selector, _request_timeout=TIMEOUT).items)

    def sync(self) -> None:
        """One pass of the kubelet's loop: start new pods, report exits, stop deleted ones."""
        seen = set()
        for pod in self.bound_pods():
            seen.add(pod.metadata.uid)
            running = self.pods.get(pod.metadata.uid)
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(pod, running)
            elif running is None:
                if pod.status.phase not in ("Succeeded", "Failed"):
                    self._start(pod)
            elif running.exit_code is None and running.exit_status() is not None:
                self._report_exit(running)
        for uid in [uid for uid in self.pods if uid not in seen]:
            self._forget(self.pods.pop(uid))

    def _start(self, pod: client.V1Pod) -> None:
        meta, containers = pod.metadata, pod.spec.containers
        by_name = {container.name: container for container in containers}
        chosen = by_name.get(CONTAINER_NAME) or (containers[0] if len(containers) == 1 else None)
        if chosen is None or not chosen.command:
            what = "one container (or one named pytorch)" if chosen is None else "a command"
            message = f"the node agent needs {what}: images are not run"
            self._write_status(meta.namespace, meta.name, objects.unstartable_status(message))
            return
        ip = f"{self.ip_prefix}{self.next_host}"
        self.next_host += 1
        workdir = self.workdir / f"{meta.namespace}_{meta.name}_{meta.uid[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [*chosen.command, *(chosen.args or [])]
        cwd = chosen.working_dir if chosen.working_dir and Path(chosen.working_dir).is_dir() else workdir
        with (workdir / "container.log").open("ab") as out:
            try:
                popen = subprocess.Popen(
                    argv,
                    env=self._environment(pod, chosen, ip, workdir),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: one killpg ends everything it forks
                    preexec_fn=_pdeathsig_term,
                )
            except OSError as error:
                message = f"cannot start {argv[0]}: {error}"
                self._write_status(meta.namespace, meta.name, objects.unstartable_status(message))
                return
        running = PodProcess(meta.namespace, meta.name, meta.uid, ip, chosen.name, chosen.image, popen, objects.now())
        running.dns_name = _dns_name(pod)
        self.pods[meta.uid] = running
        log.info("started %s as pid %d on %s: %s", running.key, popen.pid, ip, " ".join(argv)[:200])
        status = objects.running_status(ip, chosen.name, chosen.image, popen.pid, running.started_at)
        self._write_status(meta.namespace, meta.name, status)

    def _environment(self, pod: client.V1Pod, container: Any, ip: str, workdir: Path) -> dict[str, str]:
        """The image's env (a minimal one), then the pod's, then what kubelet/DNS/network would provide."""
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "HOSTNAME": pod.metadata.name,
            "OMP_NUM_THREADS": "1",  # a small shared machine: no thread oversubscription
        }
        for var in container.env or []:
            value = var.value if var.value_from is None else self._field_ref(pod, var.value_from, ip)
            if value is not None:
                env[var.name] = value
        for name in SERVICE_ADDR_VARS:
            if name in env:
                own = _dns_name(pod) if env[name] == _dns_name(pod) else pod.metadata.name
                env[name] = self._resolve(pod.metadata.namespace, env[name], own, ip)
        env |= {
            "FINETUNE_METRICS_ADDR": ip,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            POD_IP_ENV: ip,
            MARK_NODE: self.node,
            MARK_POD: f"{pod.metadata.namespace}/{pod.metadata.name}",
            MARK_UID: pod.metadata.uid,
        }
        if self.bind_shim is not None:
            env["LD_PRELOAD"] = str(self.bind_shim)
        return env | self._injected(pod)

    def _field_ref(self, pod: client.V1Pod, source: Any, ip: str) -> str | None:
        """The downward API's common fields; anything else (resourceFieldRef, secrets) is left unset."""
        values = {
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": self.node,
            "status.podIP": ip,
            "status.hostIP": objects.HOST_IP,
        }
        if source.field_ref is None:
            return None
        path = source.field_ref.field_path
        indexed = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
        if indexed:  # e.g. JobSet's rank: metadata.annotations['batch.kubernetes.io/job-completion-index']
            found = getattr(pod.metadata, indexed.group(1)) or {}
            return found.get(indexed.group(2))
        return values.get(path)

    def _resolve(self, namespace: str, service: str, own_name: str, own_ip: str) -> str:
        """The "DNS": a replica's Service is named like its pod; its IP when this agent runs that pod."""
        if service == own_name:
            return own_ip
        for running in self.pods.values():
            named = service in (running.name, running.dns_name)
            if running.namespace == namespace and named and running.exit_code is None:
                return running.ip
        return objects.HOST_IP

    def _injected(self, pod: client.V1Pod) -> dict[str, str]:
        """Test-only env from `test.finetune.dev/env-NAME` annotations: the namespace's, then the pod's."""
        sources = [pod.metadata.annotations or {}]
        with contextlib.suppress(ApiException):
            namespace = self.core.read_namespace(pod.metadata.namespace, _request_timeout=TIMEOUT)
            sources.insert(0, namespace.metadata.annotations or {})
        prefix = objects.ENV_ANNOTATION_PREFIX
        injected = {}
        for notes in sources:
            injected |= {key.removeprefix(prefix): value for key, value in notes.items() if key.startswith(prefix)}
        return injected

    def _report_exit(self, running: PodProcess) -> None:
        code = running.exit_status()
        assert code is not None
        running.exit_code = code
        running.signal(signal.SIGKILL)  # anything the leader left behind in its group
        log.info("%s exited %d", running.key, code)
        pid, started = running.popen.pid, running.started_at
        status = objects.terminated_status(running.container, running.image, pid, started, code)
        self._write_status(running.namespace, running.name, status)

    def _write_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                name, namespace, {"status": status}, _content_type=SMP, _request_timeout=TIMEOUT
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: the next pass handles it
                raise

    def _terminate(self, pod: client.V1Pod, running: PodProcess | None) -> None:
        """Graceful deletion: SIGTERM, SIGKILL once the grace period is over, then remove the pod object."""
        if running is not None and not running.gone():
            if running.kill_at is None:
                grace = pod.metadata.deletion_grace_period_seconds
                grace_s = min(float(grace if grace is not None else 30), MAX_GRACE_S)
                running.kill_at = time.monotonic() + grace_s
                log.info("%s deleted: SIGTERM (grace %.0fs)", running.key, grace_s)
                running.signal(signal.SIGTERM)
            elif time.monotonic() >= running.kill_at:
                log.info("%s: grace period over, SIGKILL", running.key)
                running.signal(signal.SIGKILL)
            return
        self._delete_object(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        self.pods.pop(pod.metadata.uid, None)

    def _delete_object(self, namespace: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, namespace, body=body, _request_timeout=TIMEOUT)
        log.info("%s/%s removed", namespace, name)

    def _forget(self, running: PodProcess) -> None:
        """The pod object is gone (force-deleted): end its processes now, as the kubelet's cleanup would."""
        if not running.gone():
            log.info("%s vanished: killing its processes", running.key)
            running.kill()

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every pod's processes, remove the pods bound here, the Lease and the Node."""
        for running in self.pods.values():
            running.signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while time.monotonic() < deadline and not all(running.gone() for running in self.pods.values()):
            time.sleep(0.1)
        for running in self.pods.values():
            running.kill()
        with contextlib.suppress(ApiException):
            for pod in self.bound_pods():
                self._delete_object(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        self.unregister()
        log.info("node agent stopped")

    def run(self, stopping: list[bool]) -> None:
        self.register()
        while not stopping:
            try:
                self.sync()
                self.heartbeat()
            except (ApiException, OSError, urllib3.exceptions.HTTPError) as error:  # the API server slow or
                log.warning("sync failed: %s", error)  # restarting (a kubelet rides out an outage): next pass
            time.sleep(LOOP_S)
        self.shutdown()


def _dns_name(pod: client.V1Pod) -> str:
    """The pod's own DNS name under its headless Service (hostname.subdomain), as cluster DNS would serve it."""
    if pod.spec.hostname and pod.spec.subdomain:
        return f"{pod.spec.hostname}.{pod.spec.subdomain}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TEST INFRASTRUCTURE: a kubelet whose pods are local processes")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--workdir", required=True, type=Path, help="per-pod working directories go here")
    parser.add_argument("--ip-prefix", required=True, help="pod IPs are this + 2, 3, ... (e.g. 127.31.7.)")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--bind-shim", type=Path, help="LD_PRELOAD library from bindshim.build()")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(api, args.node, args.workdir, args.ip_prefix, args.gpus, args.bind_shim)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    agent.run(stopping)
    return 0


if __name__ == "__main__":
    sys.exit(main())
