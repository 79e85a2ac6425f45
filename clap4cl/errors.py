"""Errors that mean "the user asked for something wrong", as opposed to bugs.

The CLI turns a :class:`UserError` into one line on stderr and exit status 2.
"""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


class ConfigError(UserError):
    """A configuration key, type or value is invalid."""


class DataNotFoundError(UserError):
    """A dataset root is missing or empty."""


class TrainingDivergedError(UserError):
    """Training or evaluation went numerically wrong (a NaN or infinite loss, logit or input
    feature, or a loss that rose instead of falling); the message names where, the cause
    and what to try."""


class BadImageError(UserError):
    """An image file that cannot be decoded (truncated, corrupt, not an image, too large).

    Attributes:
        path: the file.
        reason: why it cannot be read, in words.
    """

    def __init__(self, path, reason=None):
        # with one argument (how DataLoader workers re-raise it) that is the whole message
        super().__init__(str(path) if reason is None else
                         f"image {str(path)!r} cannot be read: {reason}")
        self.path = str(path)
        self.reason = reason
