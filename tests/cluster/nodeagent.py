"""TEST INFRASTRUCTURE — not part of the product. A minimal kubelet for ONE node, whose pods are local processes.

kwok fakes pods (nothing runs), which is right for scheduling tests but cannot close the early-stopping loop:
that needs a real trainer exporting real metrics. This agent registers one Node that kwok does not manage (no
`kwok.x-k8s.io/node` annotation), labelled and tainted so that only pods meant for it land there (pods need
`scheduling()`'s nodeSelector and toleration), and then does the kubelet's job for the pods bound to it:

- keeps the Node Ready: status conditions with fresh heartbeats and a Lease in kube-node-lease, renewed;
- runs each pod's container (the one named `pytorch`, or the only one) as a local process group: command + args
  with the pod's env, in a per-pod working directory, stdout+stderr to `container.log` there; the image is
  ignored (this machine's virtualenv is the "image": its bin/ leads PATH, so `torchrun` is found);
- gives the pod its own loopback IP from a per-agent /24 in 127.0.0.0/8 and reports Running (podIP, hostIP,
  containerStatuses), then Succeeded or Failed with the exit code (128+N for a signal, as a kubelet does);
- on pod deletion sends SIGTERM to the group, SIGKILL after the grace period (capped), then deletes the pod
  object (what the kubelet does once the containers are gone); a pod that vanishes outright is killed at once;
- on SIGTERM to the agent: kills every pod group, force-deletes its pods, removes its Lease and Node.

What the kubelet and cluster DNS would provide, done by rewriting each pod's environment:
- MASTER_ADDR / PET_MASTER_ADDR name a Service (the training-operator's per-replica headless Service, named
  like the pod). Nothing resolves those here, so they become the IP of the pod of that name when this agent
  runs it (the master pod's own IP for the master), else 127.0.0.1.
- FINETUNE_METRICS_ADDR = the pod IP (the trainer binds /metrics there), NODE_AGENT_POD_IP + LD_PRELOAD of the
  bind shim (bindshim.py): wildcard listeners, such as torchrun's rendezvous store, bind the pod IP instead —
  the part of a pod network namespace that matters here.
- HF_HUB_OFFLINE=1 and a minimal PATH/HOME/LANG in place of the image's environment.
- Test-only injection (no product code involved): annotations `test.finetune.dev/env-NAME: value` on the pod
  or on its namespace add NAME=value. Names starting with FINETUNE_ are reserved in a FineTuneJob's
  `resources.env`, and the operator renders no pod annotations, so a test annotates the namespace.
- Every process of a pod carries NODE_AGENT_NODE/NODE_AGENT_POD/NODE_AGENT_POD_UID, so `pod_processes` can
  find (and tests can prove the absence of) a pod's processes from /proc alone.

Not implemented (not needed by these tests): restarts (pods must use restartPolicy Never, as the
training-operator's pods do), init containers, probes, volumes (mounts are ignored), resource enforcement.

Run as `python -m tests.cluster.nodeagent --kubeconfig ... --node ... --workdir ... --ip-prefix 127.a.b.`
(the `node_agent` fixture in conftest.py does this).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, when run as a script

from tests.cluster import bindshim
from tests.cluster.bindshim import POD_IP_ENV
from tests.cluster.processes import Process, spawn, stop_all

GPU_RESOURCE = "nvidia.com/gpu"
NODE_LABEL = "finetune.dev/test-node"
NODE_LABEL_VALUE = "agent"
TAINT = {"key": NODE_LABEL, "value": NODE_LABEL_VALUE, "effect": "NoSchedule"}
ENV_ANNOTATION_PREFIX = "test.finetune.dev/env-"
MARK_NODE, MARK_POD, MARK_UID = "NODE_AGENT_NODE", "NODE_AGENT_POD", "NODE_AGENT_POD_UID"
HOST_IP = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent  # the interpreter running the agent is the tests' virtualenv
SERVICE_ADDR_VARS = ("MASTER_ADDR", "PET_MASTER_ADDR")
CONTAINER_NAME = "pytorch"

LOOP_S = 0.5
HEARTBEAT_S = 10.0
LEASE_S = 40
MAX_GRACE_S = 15.0
SHUTDOWN_GRACE_S = 5.0  # below processes.STOP_GRACE_S, so the agent finishes its cleanup before any SIGKILL
PR_SET_PDEATHSIG = 1
REQUEST_TIMEOUT = 10
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"

log = logging.getLogger("nodeagent")


def scheduling() -> dict[str, Any]:
    """What a pod (or a FineTuneJob's `resources`) needs to be scheduled onto the agent's node."""
    toleration = {"key": NODE_LABEL, "operator": "Equal", "value": NODE_LABEL_VALUE, "effect": "NoSchedule"}
    return {"nodeSelector": {NODE_LABEL: NODE_LABEL_VALUE}, "tolerations": [toleration]}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(name: str, gpus: int) -> dict[str, Any]:
    """The Node, without the kwok annotation (kwok must leave it alone), labelled and tainted for the tests."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        NODE_LABEL: NODE_LABEL_VALUE,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [TAINT]},
    }


def node_status(name: str, gpus: int) -> dict[str, Any]:
    capacity = {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "16", GPU_RESOURCE: str(gpus)}
    stamp = now()

    def condition(kind: str, status: str, reason: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "node agent (tests)",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }

    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": name,
            "systemUUID": name,
            "bootID": name,
            "kernelVersion": os.uname().release,
            "osImage": "tests/cluster/nodeagent.py",
            "containerRuntimeVersion": "nodeagent://1",
            "kubeletVersion": "v1.36.3",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def _pdeathsig_term() -> None:
    """preexec hook: SIGTERM the pod's leader when the agent dies (torchrun then stops its workers too)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def pod_processes(node: str, pod: str | None = None) -> list[int]:
    """Live (non-zombie) processes started for pods of `node` (one pod: `namespace/name`), found via /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = _environ(int(entry.name))
        if env.get(MARK_NODE) == node and (pod is None or env.get(MARK_POD) == pod) and not _is_zombie(int(entry.name)):
            found.append(int(entry.name))
    return found


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
    workdir: Path
    started_at: str
    exit_code: int | None = None
    term_sent: float | None = None
    kill_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def gone(self) -> bool:
        """Leader reaped and no process left in its group."""
        self.popen.poll()
        return self.popen.returncode is not None and not group_alive(self.popen.pid)

    def exit_status(self) -> int | None:
        code = self.popen.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code


@dataclass
class NodeAgent:
    api: client.ApiClient
    node: str
    workdir: Path
    ip_prefix: str
    gpus: int = 1
    bind_shim: Path | None = None
    pods: dict[str, PodProcess] = field(default_factory=dict)  # by uid
    next_host: int = 2
    last_heartbeat: float = 0.0

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    # -- node ---------------------------------------------------------------------------------------------------
    def register(self) -> None:
        try:
            self.core.create_node(node_manifest(self.node, self.gpus), _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_node(self.node, node_manifest(self.node, self.gpus), _content_type=MERGE)
        self.heartbeat(force=True)
        log.info("registered node %s (%d %s), pod IPs %sN", self.node, self.gpus, GPU_RESOURCE, self.ip_prefix)

    def heartbeat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_heartbeat < HEARTBEAT_S:
            return
        self.core.patch_node_status(
            self.node, {"status": node_status(self.node, self.gpus)}, _content_type=MERGE, _request_timeout=10
        )
        self._renew_lease()
        self.last_heartbeat = time.monotonic()

    def _renew_lease(self) -> None:
        coordination = client.CoordinationV1Api(self.api)
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_S, "renewTime": micro_now()}
        try:
            coordination.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": spec}, _content_type=MERGE)
        except ApiException as error:
            if error.status != 404:
                raise
            node = self.core.read_node(self.node)
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node.metadata.uid}
            body = {"metadata": {"name": self.node, "ownerReferences": [owner]}, "spec": spec}
            coordination.create_namespaced_lease("kube-node-lease", body)

    def unregister(self) -> None:
        with contextlib.suppress(ApiException):
            client.CoordinationV1Api(self.api).delete_namespaced_lease(self.node, "kube-node-lease")
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.node)

    # -- pods ---------------------------------------------------------------------------------------------------
    def bound_pods(self) -> list[client.V1Pod]:
        selector = f"spec.nodeName={self.node}"
        return list(
            self.core.list_pod_for_all_namespaces(field_selector=selector, _request_timeout=REQUEST_TIMEOUT).items
        )

    def sync(self) -> None:
        """One pass of the kubelet's loop: start new pods, report exits, stop deleted ones."""
        seen = set()
        for pod in self.bound_pods():
            uid = pod.metadata.uid
            seen.add(uid)
            running = self.pods.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(pod, running)
            elif running is None:
                if pod.status.phase not in ("Succeeded", "Failed"):
                    self._start(pod)
            elif running.exit_code is None and running.exit_status() is not None:
                self._report_exit(running)
        for uid in [uid for uid in self.pods if uid not in seen]:
            self._forget(self.pods[uid])

    def _start(self, pod: client.V1Pod) -> None:
        meta, spec = pod.metadata, pod.spec
        containers = {c.name: c for c in spec.containers}
        chosen = containers.get(CONTAINER_NAME) or (spec.containers[0] if len(spec.containers) == 1 else None)
        if chosen is None or not chosen.command:
            why = "one container (or one named pytorch) with a command" if chosen is None else "a command"
            self._fail_unstartable(pod, f"node agent needs {why}: the image's entrypoint is unknown here")
            return
        ip = f"{self.ip_prefix}{self.next_host}"
        self.next_host += 1
        workdir = self.workdir / f"{meta.namespace}_{meta.name}_{meta.uid[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        env = self._environment(pod, chosen, ip, workdir)
        argv = [*chosen.command, *(chosen.args or [])]
        cwd = chosen.working_dir if chosen.working_dir and Path(chosen.working_dir).is_dir() else workdir
        with (workdir / "container.log").open("ab") as out:
            try:
                popen = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_pdeathsig_term,
                )
            except OSError as error:
                self._fail_unstartable(pod, f"cannot start {argv[0]}: {error}")
                return
        running = PodProcess(meta.namespace, meta.name, meta.uid, ip, chosen.name, chosen.image, popen, workdir, now())
        self.pods[meta.uid] = running
        log.info("started %s as pid %d on %s: %s", running.key, popen.pid, ip, " ".join(argv)[:200])
        self._patch_status(running, self._running_status(running))

    def _environment(self, pod: client.V1Pod, container: Any, ip: str, workdir: Path) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "HOSTNAME": pod.metadata.name,
            "OMP_NUM_THREADS": "1",  # a small shared node: no thread oversubscription (what a CPU limit would do)
        }
        for var in container.env or []:
            value = var.value if var.value_from is None else self._field_ref(pod, var.value_from, ip)
            if value is not None:
                env[var.name] = value
        for name in SERVICE_ADDR_VARS:
            if name in env:
                env[name] = self._resolve(pod.metadata.namespace, env[name], pod.metadata.name, ip)
        env.update(
            {
                "FINETUNE_METRICS_ADDR": ip,
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                POD_IP_ENV: ip,
                MARK_NODE: self.node,
                MARK_POD: f"{pod.metadata.namespace}/{pod.metadata.name}",
                MARK_UID: pod.metadata.uid,
            }
        )
        if self.bind_shim is not None:
            env["LD_PRELOAD"] = str(self.bind_shim)
        env.update(self._injected(pod))
        return env

    def _field_ref(self, pod: client.V1Pod, source: Any, ip: str) -> str | None:
        path = source.field_ref.field_path if source.field_ref is not None else None
        values = {
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": self.node,
            "status.podIP": ip,
            "status.hostIP": HOST_IP,
        }
        return values.get(path or "")

    def _resolve(self, namespace: str, service: str, own_name: str, own_ip: str) -> str:
        """The "DNS": a replica's Service name is its pod's name; its IP when this agent runs that pod."""
        if service == own_name:
            return own_ip
        for running in self.pods.values():
            if running.namespace == namespace and running.name == service and running.exit_code is None:
                return running.ip
        return HOST_IP

    def _injected(self, pod: client.V1Pod) -> dict[str, str]:
        """Test-only env from `test.finetune.dev/env-NAME` annotations: the namespace's, then the pod's."""
        try:
            namespace = self.core.read_namespace(pod.metadata.namespace, _request_timeout=REQUEST_TIMEOUT)
            sources = [namespace.metadata.annotations or {}, pod.metadata.annotations or {}]
        except ApiException:
            sources = [pod.metadata.annotations or {}]
        env: dict[str, str] = {}
        for notes in sources:
            for key, value in notes.items():
                if key.startswith(ENV_ANNOTATION_PREFIX):
                    env[key.removeprefix(ENV_ANNOTATION_PREFIX)] = value
        return env

    def _running_status(self, running: PodProcess) -> dict[str, Any]:
        stamp = running.started_at
        return {
            "phase": "Running",
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": running.ip,
            "podIPs": [{"ip": running.ip}],
            "startTime": stamp,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": stamp}
                for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": running.container,
                    "image": running.image,
                    "imageID": "",
                    "containerID": f"nodeagent://{running.popen.pid}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": stamp}},
                }
            ],
        }

    def _report_exit(self, running: PodProcess) -> None:
        code = running.exit_status()
        assert code is not None
        running.exit_code = code
        running.signal(signal.SIGKILL)  # anything the leader left behind in its group
        stamp = now()
        reason = "Completed" if code == 0 else "Error"
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                {"type": kind, "status": "False", "reason": "PodCompleted" if code == 0 else "PodFailed"}
                for kind in ("ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": running.container,
                    "image": running.image,
                    "imageID": "",
                    "containerID": f"nodeagent://{running.popen.pid}",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "startedAt": running.started_at,
                            "finishedAt": stamp,
                            "containerID": f"nodeagent://{running.popen.pid}",
                        }
                    },
                }
            ],
        }
        log.info("%s exited %d", running.key, code)
        self._patch_status(running, status)

    def _fail_unstartable(self, pod: client.V1Pod, message: str) -> None:
        log.warning("%s/%s cannot run: %s", pod.metadata.namespace, pod.metadata.name, message)
        status = {"phase": "Failed", "reason": "NodeAgentUnsupported", "message": message, "hostIP": HOST_IP}
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": status}, _content_type=SMP
            )

    def _patch_status(self, running: PodProcess, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                running.name, running.namespace, {"status": status}, _content_type=SMP, _request_timeout=10
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile: the next sync handles it
                raise

    def _terminate(self, pod: client.V1Pod, running: PodProcess | None) -> None:
        """Graceful deletion: SIGTERM, SIGKILL after the grace period, then remove the pod object."""
        if running is not None and not running.gone():
            if running.term_sent is None:
                grace = pod.metadata.deletion_grace_period_seconds
                grace_s = min(float(grace if grace is not None else 30), MAX_GRACE_S)
                running.term_sent = time.monotonic()
                running.kill_at = running.term_sent + grace_s
                log.info("%s deleted: SIGTERM (grace %.0fs)", running.key, grace_s)
                running.signal(signal.SIGTERM)
            elif running.kill_at is not None and time.monotonic() >= running.kill_at:
                log.info("%s: grace period over, SIGKILL", running.key)
                running.signal(signal.SIGKILL)
            return
        self._delete_object(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        if running is not None:
            self.pods.pop(running.uid, None)

    def _delete_object(self, namespace: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, namespace, body=body, _request_timeout=REQUEST_TIMEOUT)
        log.info("%s/%s removed", namespace, name)

    def _forget(self, running: PodProcess) -> None:
        """The pod object is gone (force-deleted): end its processes now, as a kubelet's cleanup would."""
        if not running.gone():
            log.info("%s vanished: killing its processes", running.key)
            kill_group(running)
        self.pods.pop(running.uid, None)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every pod's processes, remove the pods bound here, the Lease and the Node."""
        for running in list(self.pods.values()):
            running.signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while time.monotonic() < deadline and not all(running.gone() for running in self.pods.values()):
            time.sleep(0.1)
        for running in self.pods.values():
            kill_group(running)
        with contextlib.suppress(ApiException):
            for pod in self.bound_pods():
                self._delete_object(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        self.unregister()
        log.info("node agent stopped")


def kill_group(running: PodProcess) -> None:
    running.signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        running.popen.wait(timeout=10)


def run(agent: NodeAgent, stopping: list[bool]) -> None:
    agent.register()
    while not stopping:
        try:
            agent.sync()
            agent.heartbeat()
        except (ApiException, OSError) as error:  # the API server restarting, a timeout: try again next pass
            log.warning("sync failed: %s", error)
        time.sleep(LOOP_S)
    agent.shutdown()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--ip-prefix", required=True, help="e.g. 127.31.7. (pods get .2, .3, ...)")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--bind-shim", type=Path, help="LD_PRELOAD library from bindshim.build()")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(api, args.node, args.workdir, args.ip_prefix, args.gpus, args.bind_shim)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    run(agent, stopping)
    return 0


# -- the test side: start the agent as a subprocess, find its pods' processes, stop it -----------------------------
@dataclass
class NodeAgentHandle:
    """The running agent, as the `node_agent` fixture hands it to tests."""

    node: str
    process: Process
    workdir: Path
    ip_prefix: str

    def pod_processes(self, pod: str | None = None) -> list[int]:
        """Live processes of this node's pods (one pod: `namespace/name`)."""
        return pod_processes(self.node, pod)

    def container_log(self, namespace: str, name: str, lines: int = 40) -> str:
        """Tail of a pod's container output (newest run of that pod name)."""
        logs = sorted(self.workdir.glob(f"{namespace}_{name}_*/container.log"), key=lambda path: path.stat().st_mtime)
        if not logs:
            return "(no container log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> list[int]:
        """SIGTERM the agent (it stops its pods and unregisters); return pod processes left (killed then)."""
        stop_all([self.process])
        left = self.pod_processes()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


def start_node_agent(kubeconfig: Path, workdir: Path, node: str, gpus: int = 1) -> NodeAgentHandle:
    """Build the bind shim, start the agent on a random /24 of 127.0.0.0/8, return once it runs."""
    shim = bindshim.build(workdir / "shim")
    # A random /24 per agent: two test sessions on one machine never hand out the same pod IP.
    rng = random.SystemRandom()
    ip_prefix = f"127.{rng.randint(16, 254)}.{rng.randint(0, 255)}."
    pods_dir = workdir / "pods"
    pods_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        f"--kubeconfig={kubeconfig}",
        f"--node={node}",
        f"--workdir={pods_dir}",
        f"--ip-prefix={ip_prefix}",
        f"--gpus={gpus}",
        f"--bind-shim={shim}",
    ]
    process = spawn("node-agent", argv, workdir / "node-agent.log")
    return NodeAgentHandle(node, process, pods_dir, ip_prefix)


if __name__ == "__main__":
    sys.exit(main())
