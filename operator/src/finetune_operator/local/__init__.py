"""`finetune local`: train on this machine with the same recipe, policy and records as on a cluster (run,
launch, report, plot)."""
