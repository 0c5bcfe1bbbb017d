"""TEST INFRASTRUCTURE: the test side of the node agent — start it as a subprocess, find its pods' processes and
their listening sockets from /proc alone, stop it and prove nothing is left."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import bindshim
from tests.cluster.processes import Process, spawn, stop_all

AGENT_SCRIPT = Path(__file__).resolve().with_name("nodeagent.py")
MARK_NODE, MARK_POD, MARK_UID = "NODE_AGENT_NODE", "NODE_AGENT_POD", "NODE_AGENT_POD_UID"


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
    """Live processes of `node`'s pods (one pod: `namespace/name`), by the marker env every one of them carries."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = _environ(int(entry.name))
        if env.get(MARK_NODE) == node and (pod is None or env.get(MARK_POD) == pod) and not _is_zombie(int(entry.name)):
            found.append(int(entry.name))
    return found


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = fd.readlink().name
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    return inodes


def _decode(address: str) -> tuple[str, int]:
    host, port = address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # /proc prints each 32-bit word host-endian
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by `pids`, IPv4 and IPv6."""
    inodes = _socket_inodes(pids)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.add(_decode(fields[1]))
    return found


@dataclass
class NodeAgentHandle:
    """The running agent, as the `node_agent` fixture hands it to tests."""

    node: str
    process: Process
    pods_dir: Path
    ip_prefix: str

    def pod_processes(self, pod: str | None = None) -> list[int]:
        """Live processes of this node's pods (one pod: `namespace/name`)."""
        return pod_processes(self.node, pod)

    def container_log(self, namespace: str, name: str, lines: int = 40) -> str:
        """Tail of a pod's container output (its newest incarnation)."""
        logs = sorted(self.pods_dir.glob(f"{namespace}_{name}_*/container.log"), key=lambda path: path.stat().st_mtime)
        if not logs:
            return "(no container log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])

    def lose(self) -> list[int]:
        """The machine is gone: its pods' processes die with no word to anyone, and its kubelet (the agent) stops
        reporting — no pod status, no heartbeat; the Node and its pods stay as they were on the API server.

        The agent is frozen first (SIGSTOP): it would otherwise see its pods exit and report them Failed, and its
        pods (PR_SET_PDEATHSIG) would be sent SIGTERM, which lets the trainer checkpoint — a graceful stop, not a
        loss. Returns the pod processes killed."""
        os.kill(self.process.pid, signal.SIGSTOP)
        killed = self.pod_processes()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.kill(self.process.pid, signal.SIGKILL)
        stop_all([self.process])  # reaps it
        return killed

    def stop(self) -> list[int]:
        """SIGTERM the agent (it stops its pods and unregisters); return pod processes left (then killed)."""
        stop_all([self.process])
        left = self.pod_processes()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


def start_node_agent(kubeconfig: Path, workdir: Path, node: str, gpus: int = 1) -> NodeAgentHandle:
    """Build the bind shim and start the agent, its pods on a random /24 of 127.0.0.0/8 (so two test sessions on
    one machine never hand out the same pod IP). Raises bindshim.ShimError without a C compiler."""
    shim = bindshim.build(workdir / "shim")
    rng = random.SystemRandom()
    ip_prefix = f"127.{rng.randint(16, 254)}.{rng.randint(0, 255)}."
    pods_dir = workdir / "pods"
    pods_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(AGENT_SCRIPT),
        f"--kubeconfig={kubeconfig}",
        f"--node={node}",
        f"--workdir={pods_dir}",
        f"--ip-prefix={ip_prefix}",
        f"--gpus={gpus}",
        f"--bind-shim={shim}",
    ]
    process = spawn("node-agent", argv, workdir / "node-agent.log")
    return NodeAgentHandle(node, process, pods_dir, ip_prefix)
