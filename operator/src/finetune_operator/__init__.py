"""finetune_operator: reconciles FineTuneJobs into Kubeflow PyTorchJobs and stops bad runs early.

The source lives under operator/src/ on purpose: a top-level package named `operator` would shadow the
standard library module of that name.
"""

__version__ = "0.1.0"
