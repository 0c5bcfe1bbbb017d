"""How `finetune local` starts and stops the trainer: command line, environment, port check, signals.

The trainer is started the way the operator's pod starts it (the same contract env: output dir, metrics port and
address, identity labels), as one plain process or as torchrun with one process per local GPU. It is stopped only
by SIGTERM, the signal it turns into a checkpoint and exit 0, whoever asks: the policy or the person at the
terminal (Ctrl-C, SIGTERM or SIGHUP to `finetune local`). A second Ctrl-C is the escape hatch: SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from finetune_contract import names
from finetune_operator.api import FineTuneJob
from finetune_operator.api.validation import FieldError

NAMESPACE = "local"
METRICS_ADDR = "127.0.0.1"
SHUTDOWN_TIMEOUT_SECONDS = "600"
"""torchrun SIGKILLs its workers this long after forwarding SIGTERM (its default, 30 s, is shorter than a
checkpoint of a 7B model takes)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Launch:
    """How the trainer is started: the command line and its environment."""

    command: list[str]
    env: dict[str, str]
    processes: int


def local_processes(gpus_per_node: int, cuda_devices: int) -> int:
    """One process per GPU the spec asks for and this machine has; 1 (a plain process) on CPU or one GPU."""
    return max(1, min(gpus_per_node, cuda_devices))


def cuda_device_count(gpus_per_node: int) -> int:
    """Visible CUDA devices; torch is imported only when the spec asks for more than one GPU."""
    if gpus_per_node <= 1:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_for(job: FineTuneJob, recipe_path: Path, output: Path, port: int, processes: int) -> Launch:
    """The trainer's command line and environment: the same contract env the operator puts in the pod."""
    trainer = ["--module", names.TRAINER_MODULE, "--recipe", str(recipe_path)]
    if processes > 1:  # torchrun itself, run by this interpreter so the venv's torch is the one used
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
        command += trainer
    else:
        command = [sys.executable, "-m", names.TRAINER_MODULE, "--recipe", str(recipe_path)]
    env = dict(os.environ)
    # A Secret reference is the kubelet's to resolve: here the variable comes from this shell's environment.
    env.update({var.name: var.value for var in job.spec.resources.env if var.value_from is None})
    env.update(
        {
            names.ENV_OUTPUT_DIR: str(output),
            names.ENV_METRICS_PORT: str(port),
            names.ENV_METRICS_ADDR: METRICS_ADDR,
            names.ENV_JOB_NAME: job.metadata.name,
            names.ENV_JOB_NAMESPACE: NAMESPACE,
        }
    )
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_SECONDS)
    return Launch(command, env, processes)


def port_problem(port: int, where: str, source: str) -> FieldError | None:
    """A clear error now instead of a trainer that dies at startup with EADDRINUSE (0 = no endpoint)."""
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((METRICS_ADDR, port))
        except OSError as error:
            rule = f"port {port} on {METRICS_ADDR} is not free ({error.strerror}); pass --port N, or --port 0 for none"
            return FieldError(where, rule, source=source)
    return None


@dataclass
class Stopper:
    """Who asked the trainer to stop (first one wins) and how: SIGTERM once, SIGKILL on a second Ctrl-C."""

    process: subprocess.Popen[bytes]
    stopped_by: str | None = None
    user_signals: int = 0
    notes: list[str] = field(default_factory=list)

    def request(self, who: str) -> None:
        if who == "user":
            self.user_signals += 1
            if self.user_signals > 1:
                self._send(signal.SIGKILL)
                self.notes.append("second interrupt: trainer killed without a checkpoint")
                return
        if self.stopped_by is None:
            self.stopped_by = who
            self._send(signal.SIGTERM)

    def _send(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


@contextlib.contextmanager
def interrupts(on_signal: list[int]) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP become entries in `on_signal` for the main loop (handlers must not block)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        on_signal.append(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def missing_paths(job: FineTuneJob, source: str) -> list[FieldError]:
    """Local data and model paths that do not exist here: exit 2 at once, not a trainer failure after setup.

    In a pod these paths are inside the container; here they are on this machine, relative to the current
    directory (the examples assume the repository root).
    """
    spec = job.spec
    paths = [("spec.model.path", spec.model.path)]
    paths += [(f"spec.data.datasets[{i}].path", d.path) for i, d in enumerate(spec.data.datasets)]
    for p, phase in enumerate(spec.training.phases):
        paths += [(f"spec.training.phases[{p}].datasets[{i}].path", d.path) for i, d in enumerate(phase.datasets)]
    rule = "no such file or directory on this machine (relative paths start at the current directory)"
    return [
        FieldError(where, rule, repr(str(path)), source) for where, path in paths if path and not Path(path).exists()
    ]
