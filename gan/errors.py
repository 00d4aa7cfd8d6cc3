"""The one exception type for bad input."""


class UserError(Exception):
    """Bad input from the user (config, data, environment).

    The command line prints the message and exits non-zero, without a traceback; the message
    itself must say what was wrong and how to fix it.
    """
