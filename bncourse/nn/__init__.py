"""Reference implementations of Batch Normalization and Dropout in plain PyTorch ops.

Every function and module here follows ``torch.nn`` conventions exactly: ``p`` is the probability
of *dropping* a unit, ``momentum`` weights the *new* batch statistic, the running variance is the
unbiased one, and ``momentum=None`` means a cumulative average. The modules are subclasses of
their ``torch.nn`` twins (see :mod:`bncourse.nn.modules` for the two documented differences).
"""

from bncourse.nn.checks import InputError, NotATensorError, UnsupportedDtypeError
from bncourse.nn.folding import fold_batchnorm, fold_sequential
from bncourse.nn.functional import (
    alpha_dropout,
    batch_norm,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    gaussian_dropout,
    uout,
)
from bncourse.nn.fusion import FUSER_METHODS
from bncourse.nn.ghost import GhostBatchNorm1d
from bncourse.nn.modules import (
    AlphaDropout,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    GaussianDropout,
    Uout,
)
from bncourse.nn.normalization import GroupNorm, LayerNorm, group_norm, layer_norm
from bncourse.nn.sync import ShardStatistics, combine_statistics, shard_statistics

__all__ = [
    "alpha_dropout",
    "batch_norm",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "gaussian_dropout",
    "uout",
    "AlphaDropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GhostBatchNorm1d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "GaussianDropout",
    "Uout",
    "FUSER_METHODS",
    "fold_batchnorm",
    "fold_sequential",
    "group_norm",
    "layer_norm",
    "GroupNorm",
    "LayerNorm",
    "ShardStatistics",
    "shard_statistics",
    "combine_statistics",
    "InputError",
    "NotATensorError",
    "UnsupportedDtypeError",
]
