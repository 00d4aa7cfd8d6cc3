"""The one exception type for bad input, and the one way an entry point reports it."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("gan")

EXIT_USER_ERROR = 2
F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input from the user (config, data, environment).

    The command line prints the message and exits non-zero, without a traceback; the message
    itself must say what was wrong and how to fix it.
    """


class RunFailed(UserError):
    """A UserError once a run had started training (a full disk, a failed compile): its
    summary.json already says ``failed``, which a sweep keeps (it is no ``invalid`` job)."""


def report_user_error(err: UserError) -> None:
    """One paragraph on stderr (and in the run's train.log, where Hydra's logging is set up)."""
    if logging.getLogger().handlers:
        log.error("error: %s", err)
    else:  # logging not set up (a library caller): stderr all the same
        print(f"error: {err}", file=sys.stderr, flush=True)


def exits_on_user_error(main: F) -> F:
    """Wraps an entry point: a UserError becomes its message and exit status 2, never a traceback.

    A ``main`` that returns an int (``python -m gan.report``) returns 2; others raise SystemExit(2).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            report_user_error(err)
            if main.__annotations__.get("return") in (int, "int"):
                return EXIT_USER_ERROR
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
