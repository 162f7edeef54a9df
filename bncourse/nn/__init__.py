"""Reference implementations of Batch Normalization and Dropout in plain PyTorch ops.

Every function and module here follows ``torch.nn`` conventions exactly: ``p`` is the probability
of *dropping* a unit, ``momentum`` weights the *new* batch statistic, the running variance is the
unbiased one, and ``momentum=None`` means a cumulative average.
"""

from bncourse.nn.functional import batch_norm, dropout, gaussian_dropout, uout
from bncourse.nn.modules import BatchNorm1d, BatchNorm2d, Dropout, GaussianDropout, Uout

__all__ = [
    "batch_norm",
    "dropout",
    "gaussian_dropout",
    "uout",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "GaussianDropout",
    "Uout",
]
