"""Every name the operator, the trainer, the dashboards and local mode must spell the same way.

A literal of any of these anywhere else is a bug (tests/contract/test_contract_names.py fails on one): a renamed
metric or env var must break the build, not silently blind early stopping.
"""

from __future__ import annotations

from typing import Final

# -- environment of the trainer process (set by the operator's render and by `finetune local`) ------------------
ENV_RECIPE: Final = "FINETUNE_RECIPE"
"""The recipe as JSON (the trainer parses it with the same models the operator validated it with)."""
ENV_JOB_NAME: Final = "FINETUNE_JOB_NAME"
ENV_JOB_NAMESPACE: Final = "FINETUNE_JOB_NAMESPACE"
"""The FineTuneJob a run belongs to: the identity labels of its metrics."""
ENV_METRICS_PORT: Final = "FINETUNE_METRICS_PORT"
ENV_METRICS_ADDR: Final = "FINETUNE_METRICS_ADDR"
"""Where rank 0 serves /metrics (the address: 0.0.0.0 in a pod, loopback for `finetune local`)."""
ENV_OUTPUT_DIR: Final = "FINETUNE_OUTPUT_DIR"
"""Overrides the recipe's checkpoint.outputDir (`finetune local --output`)."""
ENV_DEVICE: Final = "FINETUNE_DEVICE"
"""`cpu` forces the CPU where CUDA is present (a local user's override; tests)."""
ENV_FAULT_NAN_AT_STEP: Final = "FINETUNE_FAULT_NAN_AT_STEP"
"""TEST-ONLY fault injection: NaN weights from this step on (NaN cannot be produced for real on CPU)."""
RESERVED_ENV_PREFIX: Final = "FINETUNE_"
"""A FineTuneJob may not set env vars with this prefix: they belong to this contract."""
TRAINER_MODULE: Final = "finetune_trainer"
"""What `torchrun --module` / `python -m` runs in the trainer container."""

# -- metrics served by rank 0 (Prometheus naming: counters get _total on the wire) --------------------------------
METRIC_LOSS: Final = "finetune_train_loss"
METRIC_GRAD_NORM: Final = "finetune_grad_norm"
"""The global L2 norm of the gradients BEFORE clipping (what clip_grad_norm_ returns)."""
METRIC_LEARNING_RATE: Final = "finetune_learning_rate"
METRIC_STEP: Final = "finetune_optimizer_step"
METRIC_TOTAL_STEPS: Final = "finetune_total_steps"
METRIC_STEP_DURATION: Final = "finetune_step_duration_seconds"
METRIC_EVAL_LOSS: Final = "finetune_eval_loss"
METRIC_EPOCH: Final = "finetune_epoch"
METRIC_TRAINING_PHASE: Final = "finetune_phase"
"""1 for the training phase (of phased training) being trained, labelled with its name."""
METRIC_SAMPLES: Final = "finetune_samples"
METRIC_TOKENS: Final = "finetune_tokens"
METRIC_NONFINITE_STEPS: Final = "finetune_nonfinite_steps"
COUNTER_SUFFIX: Final = "_total"
"""prometheus_client appends it to counters' names; readers of the series must too."""
LABEL_JOB: Final = "finetunejob"
LABEL_NAMESPACE: Final = "namespace"
IDENTITY_LABELS: Final = (LABEL_JOB, LABEL_NAMESPACE)
LABEL_TRAINING_PHASE: Final = "phase"

# -- the child object and the labels that find it -------------------------------------------------------------
PYTORCHJOB_GROUP: Final = "kubeflow.org"
PYTORCHJOB_VERSION: Final = "v1"
PYTORCHJOB_API_VERSION: Final = f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}"
PYTORCHJOB_KIND: Final = "PyTorchJob"
PYTORCHJOB_PLURAL: Final = "pytorchjobs"
TRAINER_CONTAINER: Final = "pytorch"
"""The trainer container: the training-operator injects its env (MASTER_ADDR, WORLD_SIZE …) only into this one."""
TRAINJOB_GROUP: Final = "trainer.kubeflow.org"
TRAINJOB_VERSION: Final = "v1alpha1"
TRAINJOB_API_VERSION: Final = f"{TRAINJOB_GROUP}/{TRAINJOB_VERSION}"
TRAINJOB_KIND: Final = "TrainJob"
TRAINJOB_PLURAL: Final = "trainjobs"
RUNTIME_KIND: Final = "ClusterTrainingRuntime"
RUNTIME_PLURAL: Final = "clustertrainingruntimes"
TRAINJOB_CONTAINER: Final = "node"
"""Kubeflow Trainer v2's trainer container (and replicated job): its torch plugin injects PET_* only there."""
JOBSET_NAME_LABEL: Final = "jobset.sigs.k8s.io/jobset-name"
"""On every pod JobSet makes: the JobSet's name, which is the TrainJob's."""
TRAINING_OPERATOR_JOB_LABEL: Final = "training.kubeflow.org/job-name"
TRAINING_OPERATOR_REPLICA_LABEL: Final = "training.kubeflow.org/replica-type"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "finetune-operator"
JOB_LABEL: Final = "finetune.dev/job-name"
"""On the child and its pods: the FineTuneJob's name (label-safe form)."""
QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_VERSION: Final = "v1beta2"
WORKLOAD_PLURAL: Final = "workloads"
KUEUE_JOB_UID_LABEL: Final = f"{KUEUE_GROUP}/job-uid"
"""On a Kueue Workload: the uid of the job it admits (our child)."""
SWEEP_LABEL: Final = "finetune.dev/sweep-name"
"""On a sweep's trial FineTuneJobs: the FineTuneSweep's name (label-safe form)."""
TRIAL_INDEX_LABEL: Final = "finetune.dev/trial-index"
"""On a trial: its index in the sweep's expansion (the identity a restart must not duplicate)."""
TRIAL_PARAMETERS_ANNOTATION: Final = "finetune.dev/trial-parameters"
"""On a trial: the JSON of the values the sweep set (path to value)."""

# -- token labels --------------------------------------------------------------------------------------------------
IGNORE_INDEX: Final = -100
"""Label id of tokens that carry no loss (prompts, padding): what PyTorch's cross-entropy ignores by default."""
