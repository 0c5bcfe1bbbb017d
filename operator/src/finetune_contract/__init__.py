"""What the operator and the trainer must agree on, typed once: both import it, neither repeats it.

Torch-free and Kubernetes-client-free, so the operator image (no torch) and the trainer image (no kopf) both
carry it. `names` (env vars, metric names and labels, the child's group/version/kind, managed-by labels),
`records` (the per-step record and its JSONL form), `checkpoints` (the checkpoint directory layout and its
discovery) and `schema` (the base of every API model: camelCase wire names, CEL + Python cross-field rules).
A test fails when a contract name is typed as a literal anywhere else.
"""
