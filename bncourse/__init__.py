"""bncourse: Batch Normalization and Dropout at training and test time.

Reference implementations (:mod:`bncourse.nn`), closed-form theory, lab experiments and the
autograder checks of the course.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bncourse")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
