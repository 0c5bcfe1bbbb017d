"""The children a FineTuneJob becomes, one pure render per backend (PyTorchJob today), and the naming rule."""
