"""The training wing's errors: each names the option, file or run at fault in one line."""

from __future__ import annotations


class TrainingError(Exception):
    """A training job that cannot run as asked (bad options, data that does not fit the model)."""


class RunDirectoryExistsError(TrainingError):
    """The requested run directory already holds files and `force` was not given."""


class ResumeError(TrainingError):
    """`--resume` asked of a run that cannot be resumed (missing, finished, or started differently)."""


class InitFromError(TrainingError):
    """`--init-from` names a run whose weights cannot start this model (another architecture or shape)."""
