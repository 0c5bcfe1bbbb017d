"""`torchrun`, with the trainer's exit code kept: what every PyTorchJob pod runs.

torchrun exits 1 whatever its workers did, so the pod's exit code said neither "bad recipe" (2) nor "non-finite
loss" (3) nor — the one that matters most — that a worker was killed by a signal (the host's OOM killer picks the
biggest process: a trainer, not torchrun). The operator decides from the pod's exit code whether a restart can
help (finetune_operator/decisions/recovery.py), so this launcher runs torchrun's own `run` and, when workers
failed, exits as the most telling worker did: a signal as 128 + its number (137 for SIGKILL, as a shell reports
it), else the trainer's own code 2 or 3, else the first failure's code; and when the pod itself is stopped
(SIGTERM to it), 128 + the signal, never 0: the run is not finished. The arguments are torchrun's.

    python -m finetune_trainer.launch --module finetune_trainer
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

SIGNAL_BASE = 128
TRAINER_VERDICTS = (2, 3)
"""Exit codes the trainer itself chooses (bad input, non-finite loss): they explain a failure, 1 does not."""


def pod_exit_code(worker_codes: Iterable[int]) -> int:
    """The exit code that best explains the workers' failure (pure). Negative codes are signals (torch's
    convention for a worker killed by one); they come first, because the other workers' errors follow from them."""
    codes = list(worker_codes)
    if not codes:
        return 1
    signals = [-code for code in codes if code < 0]
    if signals:
        return SIGNAL_BASE + signals[0]
    for verdict in TRAINER_VERDICTS:
        if verdict in codes:
            return verdict
    return next((code for code in codes if code != 0), 1)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))  # type: ignore[no-untyped-call]  # torch leaves both untyped
    except ChildFailedError as error:
        failures = sorted(error.failures.items())  # by global rank: the same choice on every node
        return pod_exit_code(failure.exitcode for _, failure in failures)
    except SignalException as error:
        # The pod itself was told to stop (deleted, drained, preempted: SIGTERM to PID 1); torchrun passed it on
        # and the trainers checkpointed. Never a success (the run is not finished; a Master exiting 0 is the
        # training-operator's "Succeeded"): 143 says "stopped from outside", which the operator restarts.
        print(f"finetune-launch: stopped by {error.sigval.name}", file=sys.stderr, flush=True)
        return SIGNAL_BASE + int(error.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
