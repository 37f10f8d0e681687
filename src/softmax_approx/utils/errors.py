"""Errors that carry a one-line, user-facing message (what is wrong, where, how to fix it).

The training entry point catches these and exits with code 2 after printing the message, so a
bad config or a bad data file never shows a traceback to a user who only needs the one line.
"""


class UserError(ValueError):
    """Base class: the message is a single line naming the key or file and the fix."""


class ConfigError(UserError):
    """An invalid configuration value (names the config key and the allowed values)."""


class DataError(UserError):
    """Missing or malformed data (names the file, the line where there is one, and the fix)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf (names the step and batch index); not a user error."""


def one_line(e: BaseException) -> str:
    """``Type: first line of the message``, for results.json and one-line error reports."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
