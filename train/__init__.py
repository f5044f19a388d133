"""Training stage: labelled road photos in, a self-describing checkpoint and its test metrics out.

This package imports torch only inside the functions that need it, so `train.config`,
`train.metrics` and the data index stay importable on machines without torch.
"""

__version__ = "0.1.0"
