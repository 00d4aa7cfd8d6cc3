"""What a person sees on the terminal: log lines routed by level, and progress bars.

Library modules log through ``logging.getLogger(__name__)``. Under ``train.py`` Hydra's job
logging (``conf/config.yaml``) sends INFO to stdout, warnings and errors to stderr, and everything
to the run's ``train.log``; other entry points call ``setup()`` for the same console routing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gan import record


def train_command() -> str:
    """The training command as this process was started, for the commands it prints: the
    installed ``gan-train``, ``python -m gan``, else a checkout's ``python train.py``."""
    started = Path(sys.argv[0] if sys.argv else "")
    if started.name == "gan-train":
        return "gan-train"
    if started.name == "__main__.py" and started.parent.name == "gan":
        return "python -m gan"
    return "python train.py"


# A train.log line, as conf/config.yaml's hydra.job_logging formatter ``stamped`` writes it.
STAMPED = "[%(asctime)s][%(levelname)s] %(message)s"


@contextmanager
def train_log(out_dir: Path, logger: logging.Logger) -> Iterator[None]:
    """Meanwhile, ``logger``'s lines also go to ``out_dir``'s train.log (a resumed run's own, or
    a population member's), stamped as Hydra's file handler stamps them."""
    handler = logging.FileHandler(Path(out_dir) / record.LOG_FILE)
    handler.setFormatter(logging.Formatter(STAMPED))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


class BelowWarning(logging.Filter):
    """Passes INFO and DEBUG only: stdout carries progress and results, stderr the problems."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class ConsoleHandler(logging.StreamHandler):
    """A console handler whose lines go above a progress bar drawn on the same terminal, not
    after its text (``write_above_bars``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_above_bars(self.format(record) + self.terminator, self.stream)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a console error is no crash
            self.handleError(record)


def write_above_bars(text: str, stream) -> None:
    """Writes ``text`` (whole lines) to ``stream``, clearing this process's tqdm bars first and
    redrawing them after."""
    from tqdm import tqdm

    tqdm.write(text, file=stream, end="")
    stream.flush()


def setup(level: int = logging.INFO) -> None:
    """Console routing for entry points without Hydra: INFO to stdout, WARNING+ to stderr."""
    root = logging.getLogger()
    if any(getattr(h, "_gan_console", False) for h in root.handlers):
        return
    out = ConsoleHandler(sys.stdout)
    out.addFilter(BelowWarning())
    err = ConsoleHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._gan_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def progress_bar(total: int, done: int = 0, *, desc: str, enabled: bool = True, unit: str = "step"):
    """A tqdm bar on the terminal (never in train.log); ``enabled=False`` draws nothing."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=0.5,
    )
