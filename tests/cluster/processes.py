"""Child processes that can always be found and ended again.

Each component runs in its own session (so its own process group: it and anything it forks end
together with one killpg). In test runs each child also gets PR_SET_PDEATHSIG=SIGKILL, so a pytest that
is itself killed cannot leave a control plane behind. A detached dev cluster records pid and binary in
state.json instead; `stop_pids` checks /proc before signalling, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0


@dataclass
class Process:
    """One component: its pid (== its process group id), binary and log file."""

    name: str
    pid: int
    exe: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        """Running (not a zombie). Never reaps: an unreaped leader keeps its group id reserved."""
        return _is_our_process(self.pid, self.exe)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "exe": self.exe, "log": str(self.log)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Process:
        return cls(str(data["name"]), int(str(data["pid"])), str(data["exe"]), Path(str(data["log"])))


def _die_with_parent() -> None:
    """preexec hook: the kernel SIGKILLs the child when the spawning thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None, die_with_parent: bool = True
) -> Process:
    """Start `argv` in a new session with stdout+stderr appended to `log`."""
    full_env = {**os.environ, **(env or {})}
    preexec: Callable[[], None] | None = _die_with_parent if die_with_parent else None
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=log.parent,
            start_new_session=True,
            preexec_fn=preexec,
        )
    return Process(name, popen.pid, str(argv[0]), log, popen)


def _is_our_process(pid: int, exe: str) -> bool:
    """True when `pid` is alive and still runs `exe` (not a recycled pid, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, UnicodeDecodeError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and cmdline == exe


def _signal_group(proc: Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _wait_gone(procs: Iterable[Process], timeout: float) -> list[Process]:
    """Wait until every process has exited; return the ones still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    left = list(procs)
    while left and time.monotonic() < deadline:
        left = [proc for proc in left if proc.alive()]
        if left:
            time.sleep(0.1)
    return left


def stop_all(procs: Sequence[Process]) -> None:
    """SIGTERM each process group in reverse start order, SIGKILL whatever outlives the grace."""
    for proc in reversed(procs):
        if proc.alive():
            _signal_group(proc, signal.SIGTERM)
            _wait_gone([proc], STOP_GRACE_S)
    for proc in _wait_gone(procs, 0):
        _signal_group(proc, signal.SIGKILL)
    _wait_gone(procs, STOP_GRACE_S)
    for proc in procs:
        if proc.popen is not None:
            # The leader is at most a zombie here, so its group id is still ours: end anything it
            # forked into the group, then reap it.
            _signal_group(proc, signal.SIGKILL)
            proc.popen.wait(timeout=STOP_GRACE_S)
