"""Errors that evaclip raises for bad input.

Every user-facing failure (a missing file, an unknown model name, a checkpoint with the wrong shapes, a
malformed dataset, a bad CLI override) is an :class:`EvaclipError`. Its message is one line that says what
was wrong and how to fix it; the CLI prints it and exits with its ``exit_code`` (2) instead of showing a
traceback.
"""


class EvaclipError(Exception):
    """Base class for errors caused by the user's input, not by a bug in evaclip."""

    exit_code = 2


class ConfigError(EvaclipError, ValueError):
    """A model, training or evaluation config is unknown, malformed or impossible."""


class CheckpointError(EvaclipError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit the model."""


class DatasetError(EvaclipError):
    """A dataset is missing or not in a layout evaclip can read."""


class TrainingError(EvaclipError):
    """A training run cannot start or cannot go on (e.g. non-finite losses, no checkpoint to resume)."""


class Preempted(TrainingError):
    """A run stopped on a signal (preemption, Ctrl-C) after writing a checkpoint at a step boundary.

    Exit code 75 (``EX_TEMPFAIL``: try again later): a job script requeues on it and the run continues with
    ``resume=latest``.
    """

    exit_code = 75
