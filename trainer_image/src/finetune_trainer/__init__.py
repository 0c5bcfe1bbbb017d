"""finetune_trainer: the supervised fine-tuning program that runs in every PyTorchJob pod."""

__version__ = "0.1.0"
