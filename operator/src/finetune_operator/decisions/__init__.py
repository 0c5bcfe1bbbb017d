"""Pure decisions on step-indexed training metrics: the early-stop policy (and, next, the sweep's pruning rule).
No I/O and no clock: time is passed in."""
