"""The one error type users see: a one-line message, exit code 2, no traceback."""


class HarnessError(Exception):
    """Bad input from the user (config, names, data paths). The CLI prints it on one line."""
